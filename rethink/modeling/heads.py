"""The parts of detectron2's RoI heads that torchvision builds differently: the RoI pooler
(ROIAlignV2 = aligned=True), and the box / mask predictors, which have no weights for the
background class (as detectron2: 80*4 box deltas, 80 mask logits) and hand torchvision's RoIHeads a
zero background column so its losses and post-processing work unchanged; and the builders of the
box head (ROI_BOX_HEAD: NUM_CONV convs + NUM_FC fcs with NORM), the mask head and their poolers."""
from typing import Dict, List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops.poolers import initLevelMapper

from .norm import norm_factory

FPN_LEVELS = ["0", "1", "2", "3"]  # P2..P5, the levels the RoI heads pool from


class ROIPooler(MultiScaleRoIAlign):
    """Multi-level RoIAlign over FPN levels P2..P5 (strides 4..32), level chosen by detectron2's
    rule (canonical box 224 on P4). `aligned=True` is detectron2's ROIAlignV2 (half-pixel offset)."""

    def __init__(self, featmap_names: List[str], output_size: int, sampling_ratio: int, aligned: bool,
                 strides=(4, 8, 16, 32)):
        super().__init__(list(featmap_names), output_size, sampling_ratio)
        self.aligned = aligned
        self.scales = [1.0 / s for s in strides]
        k_min, k_max = int(torch.log2(torch.tensor(strides[0]))), int(torch.log2(torch.tensor(strides[-1])))
        self.map_levels = initLevelMapper(k_min, k_max, canonical_scale=224, canonical_level=4)

    def forward(self, x: Dict[str, torch.Tensor], boxes: List[torch.Tensor], image_shapes: List[Tuple[int, int]]):
        feats = [x[k] for k in self.featmap_names]
        rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)], dim=0)
        levels = self.map_levels(boxes)
        out = feats[0].new_zeros((rois.shape[0], feats[0].shape[1]) + self.output_size)
        for level, (feat, scale) in enumerate(zip(feats, self.scales)):
            idx = torch.where(levels == level)[0]
            pooled = roi_align(feat, rois[idx], self.output_size, spatial_scale=scale,
                               sampling_ratio=self.sampling_ratio, aligned=self.aligned)
            out[idx] = pooled.to(out.dtype)
        return out


class BoxPredictor(nn.Module):
    """Class scores for K classes + background and box deltas: class-specific for the K classes
    ([N, (K + 1) * 4] with zeros for the background), or one class-agnostic set ([N, 4],
    ``CLS_AGNOSTIC_BBOX_REG``, detectron2's ``bbox_pred`` of 4 outputs)."""

    def __init__(self, in_features: int, num_classes: int, cls_agnostic: bool = False):
        super().__init__()
        self.cls_agnostic = cls_agnostic
        self.cls_score = nn.Linear(in_features, num_classes + 1)
        self.bbox_pred = nn.Linear(in_features, 4 if cls_agnostic else num_classes * 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x):
        x = x.flatten(start_dim=1)
        deltas = self.bbox_pred(x).float()  # float32 under autocast: decoded and scored in float32
        if not self.cls_agnostic:
            deltas = F.pad(deltas, (4, 0))  # background (index 0) gets zero deltas
        return self.cls_score(x).float(), deltas


class MaskPredictor(MaskRCNNPredictor):
    """2x deconv + 1x1 conv to K mask logits; a zero logit map is prepended for the background."""

    def __init__(self, in_channels: int, dim_reduced: int, num_classes: int):
        super().__init__(in_channels, dim_reduced, num_classes)
        nn.init.kaiming_normal_(self.conv5_mask.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.conv5_mask.bias)
        nn.init.normal_(self.mask_fcn_logits.weight, std=0.001)
        nn.init.zeros_(self.mask_fcn_logits.bias)

    def forward(self, x):
        return F.pad(super().forward(x).float(), (0, 0, 0, 0, 1, 0))


def xavier_fill_linears(module: nn.Module) -> None:
    """detectron2's c2_xavier_fill for fc layers (kaiming_uniform a=1, bias 0)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.kaiming_uniform_(m.weight, a=1)
            nn.init.zeros_(m.bias)


def build_box_head(cfg, in_channels: int) -> FastRCNNConvFCHead:
    """ROI_BOX_HEAD: NUM_CONV convs of CONV_DIM and NUM_FC fcs of FC_DIM, each conv with NORM."""
    box = cfg.MODEL.ROI_BOX_HEAD
    res = box.POOLER_RESOLUTION
    head = FastRCNNConvFCHead((in_channels, res, res), [box.CONV_DIM] * box.NUM_CONV, [box.FC_DIM] * box.NUM_FC,
                              norm_layer=norm_factory(box.NORM))
    xavier_fill_linears(head)
    return head


def build_box_predictor(cfg, in_channels: int, cls_agnostic: bool) -> BoxPredictor:
    box = cfg.MODEL.ROI_BOX_HEAD
    width = box.FC_DIM if box.NUM_FC else in_channels * box.POOLER_RESOLUTION ** 2
    return BoxPredictor(width, cfg.MODEL.ROI_HEADS.NUM_CLASSES, cls_agnostic)


def build_mask_head(cfg, in_channels: int) -> MaskRCNNHeads:
    mask = cfg.MODEL.ROI_MASK_HEAD
    return MaskRCNNHeads(in_channels, [mask.CONV_DIM] * mask.NUM_CONV, 1, norm_layer=norm_factory(mask.NORM))


def build_mask_predictor(cfg, in_channels: int) -> MaskPredictor:
    mask = cfg.MODEL.ROI_MASK_HEAD
    return MaskPredictor(mask.CONV_DIM if mask.NUM_CONV else in_channels, mask.CONV_DIM,
                         cfg.MODEL.ROI_HEADS.NUM_CLASSES)


def build_pooler(head_cfg) -> ROIPooler:
    """The RoI pooler of ROI_BOX_HEAD or ROI_MASK_HEAD."""
    return ROIPooler(FPN_LEVELS, head_cfg.POOLER_RESOLUTION, head_cfg.POOLER_SAMPLING_RATIO,
                     aligned=head_cfg.POOLER_TYPE == "ROIAlignV2")
