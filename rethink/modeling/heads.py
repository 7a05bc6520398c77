"""The parts of detectron2's StandardROIHeads that torchvision builds differently: the RoI pooler
(ROIAlignV2 = aligned=True), and the box / mask predictors, which have no weights for the
background class (as detectron2: 80*4 box deltas, 80 mask logits) and hand torchvision's RoIHeads a
zero background column so its losses and post-processing work unchanged."""
from typing import Dict, List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops.poolers import initLevelMapper


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
    """Class scores for K classes + background and class-specific box deltas for the K classes."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.cls_score = nn.Linear(in_features, num_classes + 1)
        self.bbox_pred = nn.Linear(in_features, num_classes * 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x):
        x = x.flatten(start_dim=1)
        deltas = self.bbox_pred(x).float()  # float32 under autocast: decoded and scored in float32
        return self.cls_score(x).float(), F.pad(deltas, (4, 0))  # background (index 0) gets zero deltas


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
