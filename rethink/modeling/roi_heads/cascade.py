"""detectron2's CascadeROIHeads (Cascade R-CNN, Cai & Vasconcelos 2018) on :class:`StandardROIHeads`.

Stages come from ``ROI_BOX_CASCADE_HEAD.IOUS`` and ``BBOX_REG_WEIGHTS``; each has its own 4conv1fc box
head, predictor (class-agnostic regression, as detectron2 requires), box transform and IoU matcher
(no low-quality matches); the RoI pooler is shared. As in detectron2:

- **training**: stage 0 labels and samples the RPN proposals + the ground truth exactly as the
  standard heads do (``ROI_HEADS.IOU_THRESHOLDS``, ``BATCH_SIZE_PER_IMAGE``, ``POSITIVE_FRACTION``);
  stage k > 0 takes stage k-1's predicted boxes on those proposals, detached and clipped to the image,
  drops the empty ones, and relabels them with its own IoU threshold, with no resampling and no
  ground truth appended. The pooled features get a 1/num_stages gradient scale (the stage losses are
  summed, not averaged). Losses ``loss_cls_stage{k}``, ``loss_box_reg_stage{k}`` (the standard heads'
  normalisation per stage); the mask head trains on stage 0's foreground proposals.
- **inference**: nothing dropped between stages (scores must align), the stages' softmax scores
  averaged, the last stage's boxes, then the standard per-class NMS; masks on the final detections.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.detection._utils import BoxCoder, Matcher
from torchvision.ops import boxes as box_ops

from ..heads import build_box_head, build_box_predictor, build_mask_head, build_mask_predictor, build_pooler
from .standard import StandardROIHeads, fast_rcnn_losses, head_kwargs


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; the gradient times `scale` backward."""

    @staticmethod
    def forward(ctx, x, scale: float):
        ctx.scale = scale
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


class CascadeROIHeads(StandardROIHeads):
    """See the module doc. `box_heads` / `box_predictors`: one per stage (class-agnostic predictors);
    `stage_ious` / `stage_reg_weights`: ``ROI_BOX_CASCADE_HEAD.IOUS`` / ``BBOX_REG_WEIGHTS``. Other
    arguments as :class:`StandardROIHeads` (its matcher and box transform are stage 0's)."""

    def __init__(self, box_roi_pool: nn.Module, box_heads: Sequence[nn.Module], box_predictors: Sequence[nn.Module],
                 stage_ious: Sequence[float], stage_reg_weights: Sequence[Sequence[float]], **kwargs):
        if not len(box_heads) == len(box_predictors) == len(stage_ious) == len(stage_reg_weights):
            raise ValueError("CascadeROIHeads: one box head, predictor, IoU and box weights per stage")
        if not all(getattr(p, "cls_agnostic", False) for p in box_predictors):
            raise ValueError("CascadeROIHeads: the stages regress class-agnostic boxes (as in detectron2)")
        super().__init__(box_roi_pool, nn.ModuleList(box_heads), nn.ModuleList(box_predictors),
                         bbox_reg_weights=tuple(stage_reg_weights[0]), **kwargs)
        self.num_stages = len(box_heads)
        self.stage_box_coders = [BoxCoder(tuple(w)) for w in stage_reg_weights]
        self.stage_matchers = [Matcher(iou, iou, allow_low_quality_matches=False) for iou in stage_ious]

    @classmethod
    def from_config(cls, cfg, in_channels: int) -> "CascadeROIHeads":
        c = cfg.MODEL.ROI_BOX_CASCADE_HEAD
        box_heads = [build_box_head(cfg, in_channels) for _ in c.IOUS]
        mask_head = build_mask_head(cfg, in_channels)
        box_predictors = [build_box_predictor(cfg, in_channels, cls_agnostic=True) for _ in c.IOUS]
        mask_predictor = build_mask_predictor(cfg, in_channels)
        return cls(build_pooler(cfg.MODEL.ROI_BOX_HEAD), box_heads, box_predictors, list(c.IOUS),
                   [tuple(w) for w in c.BBOX_REG_WEIGHTS],
                   **head_kwargs(cfg, build_pooler(cfg.MODEL.ROI_MASK_HEAD), mask_head, mask_predictor, in_channels))

    def run_stage(self, k: int, features: Dict[str, torch.Tensor], boxes: List[torch.Tensor],
                  image_shapes: List[Tuple[int, int]]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Stage k's class logits [R, K + 1] and class-agnostic deltas [R, 4] for `boxes`."""
        pooled = self.box_roi_pool(features, boxes, image_shapes)
        if self.training:
            pooled = _ScaleGradient.apply(pooled, 1.0 / self.num_stages)
        return self.box_predictor[k](self.box_head[k](pooled))

    def stage_boxes(self, k: int, deltas: torch.Tensor, boxes: List[torch.Tensor],
                    image_shapes: List[Tuple[int, int]]) -> List[torch.Tensor]:
        """The next stage's input: stage k's predicted boxes, detached and clipped to the image
        (the empty ones dropped in training)."""
        decoded = self.stage_box_coders[k].decode(deltas.detach(), boxes).reshape(-1, 4)
        out = []
        for b, shape in zip(decoded.split([len(x) for x in boxes]), image_shapes):
            b = box_ops.clip_boxes_to_image(b, shape)
            if self.training:
                b = b[(b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])]
            out.append(b)
        return out

    def label_stage(self, k: int, boxes: List[torch.Tensor], targets: List[Dict]):
        """Labels (0 = background) and regression targets of `boxes` at stage k's IoU threshold."""
        labels, regression_targets = [], []
        for b, t in zip(boxes, targets):
            gt_boxes, gt_labels = t["boxes"].to(b.dtype), t["labels"]
            if gt_boxes.numel() == 0:
                lab = torch.zeros(len(b), dtype=torch.int64, device=b.device)
                matched = torch.zeros_like(b)
            else:
                idx = self.stage_matchers[k](box_ops.box_iou(gt_boxes, b))
                lab = gt_labels[idx.clamp(min=0)].to(torch.int64)
                lab[idx < 0] = 0
                matched = gt_boxes[idx.clamp(min=0)]
            labels.append(lab)
            regression_targets.append(self.stage_box_coders[k].encode_single(matched, b))
        return labels, regression_targets

    def box_losses(self, features, proposals, image_shapes, targets, labels, regression_targets):
        losses = {}
        boxes = proposals
        for k in range(self.num_stages):
            logits, deltas = self.run_stage(k, features, boxes, image_shapes)
            stage = fast_rcnn_losses(logits, deltas, labels, regression_targets, self.smooth_l1_beta,
                                     self.box_reg_loss_weight)
            losses.update({f"{name}_stage{k}": v for name, v in stage.items()})
            if k + 1 < self.num_stages:
                boxes = self.stage_boxes(k, deltas, boxes, image_shapes)
                labels, regression_targets = self.label_stage(k + 1, boxes, targets)
        return losses

    def predict_boxes(self, features: Dict[str, torch.Tensor], proposals: List[torch.Tensor],
                      image_shapes: List[Tuple[int, int]],
                      stage_outputs: Optional[list] = None) -> List[Dict[str, torch.Tensor]]:
        """Eval detections: the stages' softmax scores averaged, the last stage's boxes. With a list
        as `stage_outputs`, each stage appends (input boxes, logits, deltas, predicted boxes)."""
        boxes, scores = proposals, []
        for k in range(self.num_stages):
            logits, deltas = self.run_stage(k, features, boxes, image_shapes)
            scores.append(F.softmax(logits, -1))
            if stage_outputs is not None:
                stage_outputs.append((boxes, logits, deltas, self.stage_box_coders[k].decode(deltas, boxes)))
            if k + 1 < self.num_stages:
                boxes = self.stage_boxes(k, deltas, boxes, image_shapes)
        mean_scores = sum(scores) * (1.0 / self.num_stages)
        return self.detections(self.stage_box_coders[-1].decode(deltas, boxes), mean_scores, boxes, image_shapes)
