"""Mask R-CNN assembled from torchvision's detection components with detectron2's semantics.

`build_model(cfg)` returns a :class:`MaskRCNN` whose
- backbone is ResNet + FPN with the configured norms and FREEZE_AT (backbone.py),
- RPN uses detectron2's loss normalisation and smooth-L1 beta (MODEL.RPN.SMOOTH_L1_BETA),
- RoI heads (MODEL.ROI_HEADS.NAME: standard or cascade, roi_heads/) pool with ROIAlignV2, run the
  4conv1fc box head(s) and the 4-conv mask head with their NORM, predict K classes without background
  weights (heads.py), and compute detectron2's losses, mask targets and inference,
- input transform casts the uint8 image to float on the model's device, normalises and pads to a
  multiple of 32: resizing and flipping happen in the data pipeline (as in detectron2),
- test outputs are rescaled to `output_sizes`, clipped, emptied boxes dropped, and masks pasted with
  detectron2's continuous-box paste (mask_ops.py), as detectron2's ``detector_postprocess``.

Inputs are CHW tensors (uint8 or float) in INPUT.FORMAT channel order on the 0..255 scale. Anchors
sit on the fixed FPN strides 4..64, unrounded, as detectron2's. Losses are named as detectron2's:
loss_cls, loss_box_reg, loss_mask, loss_rpn_cls, loss_rpn_loc.
"""
import logging
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from .backbone import build_resnet_fpn_backbone
from .mask_ops import paste_masks_in_image
from .roi_heads import build_roi_heads

logger = logging.getLogger(__name__)


class RPN(RegionProposalNetwork):
    """torchvision's RPN with detectron2's loss: both terms summed over the sampled anchors and
    divided by BATCH_SIZE_PER_IMAGE x images; box term smooth-L1 with `beta` (0 = L1)."""

    def __init__(self, *args, smooth_l1_beta: float = 0.0, loss_weight: float = 1.0, box_loss_weight: float = 1.0,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.smooth_l1_beta = smooth_l1_beta
        self.loss_weight = loss_weight
        self.box_loss_weight = box_loss_weight

    def compute_loss(self, objectness, pred_bbox_deltas, labels, regression_targets):
        normalizer = self.fg_bg_sampler.batch_size_per_image * len(labels)
        pos, neg = self.fg_bg_sampler(labels)
        pos = torch.where(torch.cat(pos, dim=0))[0]
        neg = torch.where(torch.cat(neg, dim=0))[0]
        sampled = torch.cat([pos, neg], dim=0)
        labels = torch.cat(labels, dim=0)
        regression_targets = torch.cat(regression_targets, dim=0)
        box_loss = F.smooth_l1_loss(pred_bbox_deltas[pos], regression_targets[pos], beta=self.smooth_l1_beta,
                                    reduction="sum") / normalizer
        obj_loss = F.binary_cross_entropy_with_logits(objectness.flatten()[sampled], labels[sampled],
                                                      reduction="sum") / normalizer
        return obj_loss * self.loss_weight, box_loss * self.loss_weight * self.box_loss_weight


class StandardRPNHead(RPNHead):
    """torchvision's RPN head (one 3x3 conv, then objectness and deltas) with float32 outputs, so that
    under autocast proposals are decoded and scored in float32 (as detectron2's apply_deltas)."""

    def forward(self, x):
        logits, deltas = super().forward(x)
        return [t.float() for t in logits], [t.float() for t in deltas]


class FPNAnchorGenerator(AnchorGenerator):
    """detectron2's DefaultAnchorGenerator (offset 0) on torchvision's: anchors on the fixed FPN strides
    (torchvision infers a stride as padded size // feature size, which for an 800 px side puts P6 on a
    61 px grid instead of 64) and cell anchors not rounded to integers."""

    def __init__(self, sizes, aspect_ratios, strides=(4, 8, 16, 32, 64)):
        super().__init__(sizes, aspect_ratios)
        self.strides = tuple(strides)

    def generate_anchors(self, scales, aspect_ratios, dtype=torch.float32, device=torch.device("cpu")):
        scales = torch.as_tensor(scales, dtype=dtype, device=device)
        h_ratios = torch.sqrt(torch.as_tensor(aspect_ratios, dtype=dtype, device=device))
        ws = (scales[None, :] / h_ratios[:, None]).view(-1)
        hs = (scales[None, :] * h_ratios[:, None]).view(-1)
        return torch.stack([-ws, -hs, ws, hs], dim=1) / 2

    def forward(self, image_list, feature_maps):
        if len(feature_maps) != len(self.strides):
            raise ValueError(f"{len(feature_maps)} feature maps for {len(self.strides)} anchor strides")
        device = feature_maps[0].device
        strides = [[torch.tensor(s, dtype=torch.int64, device=device)] * 2 for s in self.strides]
        self.set_cell_anchors(torch.float32, device)  # float32 under autocast too: fp16 steps are 1 px above 1024
        per_level = self.grid_anchors([f.shape[-2:] for f in feature_maps], strides)
        anchors = torch.cat(per_level)
        return [anchors for _ in image_list.image_sizes]


class NormalizeAndPad(GeneralizedRCNNTransform):
    """Cast to float (on the model's device), normalise with PIXEL_MEAN/STD and batch with zero
    padding to a multiple of 32; no resizing."""

    def resize(self, image, target=None):
        return image, target

    def normalize(self, image):
        return super().normalize(image.to(torch.float32))


def detector_postprocess(result: Dict[str, torch.Tensor], input_hw: Tuple[int, int],
                         output_hw: Tuple[int, int], mask_threshold: float = 0.5) -> Dict[str, torch.Tensor]:
    """One image's detections from network-input to output coordinates (detectron2's
    ``detector_postprocess``): boxes scaled and clipped, empty boxes dropped, mask probabilities
    pasted into bool [N, H, W] masks at ``>= mask_threshold``, keypoints [N, K, 3] scaled as the boxes."""
    out_h, out_w = int(output_hw[0]), int(output_hw[1])
    boxes = result["boxes"].clone()
    boxes[:, 0::2] *= out_w / input_hw[1]
    boxes[:, 1::2] *= out_h / input_hw[0]
    boxes[:, 0::2] = boxes[:, 0::2].clamp(min=0, max=out_w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(min=0, max=out_h)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    out = {"boxes": boxes[keep], "scores": result["scores"][keep], "labels": result["labels"][keep]}
    if "mask_probs" in result:
        out["masks"] = paste_masks_in_image(result["mask_probs"][keep], out["boxes"], (out_h, out_w), mask_threshold)
    if "keypoints" in result:  # (x, y, score), scaled as the boxes, not clipped (as detectron2)
        kps = result["keypoints"][keep].clone()
        kps[..., 0] *= out_w / input_hw[1]
        kps[..., 1] *= out_h / input_hw[0]
        out["keypoints"] = kps
    return out


class MaskRCNN(GeneralizedRCNN):
    """torchvision's GeneralizedRCNN (transform, backbone, rpn, roi_heads) with detectron2's loss names,
    RoI heads and post-processing. Training:
    ``model(images, targets)`` -> loss dict. Test: ``model(images, output_sizes=[(h, w), ...])`` ->
    per image {"boxes" XYXY, "scores", "labels" 1..K, "masks" bool [N, h, w]} in `output_sizes`
    (default: the input sizes)."""

    RPN_LOSS_NAMES = {"loss_objectness": "loss_rpn_cls", "loss_rpn_box_reg": "loss_rpn_loc"}

    def forward(self, images: List[torch.Tensor], targets: Optional[List[Dict]] = None,
                output_sizes: Optional[List[Tuple[int, int]]] = None):
        if self.training and targets is None:
            raise ValueError("MaskRCNN.forward: targets are required in training mode")
        input_sizes = [tuple(img.shape[-2:]) for img in images]
        batch, targets = self.transform(images, targets)
        features = self.backbone(batch.tensors)
        proposals, rpn_losses = self.rpn(batch, features, targets)
        detections, roi_losses = self.roi_heads(features, proposals, batch.image_sizes, targets)
        if self.training:
            return {**roi_losses, **{self.RPN_LOSS_NAMES[k]: v for k, v in rpn_losses.items()}}
        return [detector_postprocess(d, i, o) for d, i, o in zip(detections, input_sizes, output_sizes or input_sizes)]


def _anchor_generator(cfg) -> FPNAnchorGenerator:
    a = cfg.MODEL.ANCHOR_GENERATOR
    sizes = [tuple(s) for s in a.SIZES] * (5 if len(a.SIZES) == 1 else 1)
    ratios = [tuple(r) for r in a.ASPECT_RATIOS] * (5 if len(a.ASPECT_RATIOS) == 1 else 1)
    return FPNAnchorGenerator(tuple(sizes), tuple(ratios))


def build_model(cfg) -> MaskRCNN:
    """Mask R-CNN (Faster R-CNN when MODEL.MASK_ON is False) with the RoI heads of MODEL.ROI_HEADS.NAME
    (standard or cascade), from a resolved config."""
    m = cfg.MODEL
    backbone = build_resnet_fpn_backbone(cfg)
    channels = backbone.out_channels
    roi_heads = build_roi_heads(cfg, channels)  # before the RPN head: the initial weights depend on the order
    anchors = _anchor_generator(cfg)
    r = m.RPN
    rpn = RPN(
        anchors, StandardRPNHead(channels, anchors.num_anchors_per_location()[0], conv_depth=1),
        fg_iou_thresh=r.IOU_THRESHOLDS[1], bg_iou_thresh=r.IOU_THRESHOLDS[0],
        batch_size_per_image=r.BATCH_SIZE_PER_IMAGE, positive_fraction=r.POSITIVE_FRACTION,
        pre_nms_top_n=dict(training=r.PRE_NMS_TOPK_TRAIN, testing=r.PRE_NMS_TOPK_TEST),
        post_nms_top_n=dict(training=r.POST_NMS_TOPK_TRAIN, testing=r.POST_NMS_TOPK_TEST),
        nms_thresh=r.NMS_THRESH,
        smooth_l1_beta=r.SMOOTH_L1_BETA, loss_weight=r.LOSS_WEIGHT, box_loss_weight=r.BBOX_REG_LOSS_WEIGHT,
    )
    rpn.box_coder.weights = tuple(r.BBOX_REG_WEIGHTS)
    transform = NormalizeAndPad(min_size=cfg.INPUT.MIN_SIZE_TEST, max_size=cfg.INPUT.MAX_SIZE_TEST,
                                image_mean=list(m.PIXEL_MEAN), image_std=list(m.PIXEL_STD), size_divisible=32)
    return MaskRCNN(backbone, rpn, roi_heads, transform)
