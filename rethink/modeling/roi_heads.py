"""detectron2's StandardROIHeads (box head + mask head, FPN) on torchvision's RoIHeads.

torchvision's RoIHeads provides the proposal matching (IoU >= IOU_THRESHOLDS[0] is foreground), the
ground truth appended to the proposals and the balanced sampler; this class replaces what detectron2
does differently:

- **box loss**: cross-entropy over the sampled proposals (mean) and, for the foreground ones, the
  class-specific deltas against the targets with smooth-L1 of ``ROI_BOX_HEAD.SMOOTH_L1_BETA``
  (0 = L1, detectron2's default; torchvision hard-codes beta 1/9), summed and divided by the number
  of sampled proposals, times ``ROI_BOX_HEAD.BBOX_REG_LOSS_WEIGHT``;
- **mask targets**: each instance's polygons rasterised inside its positive proposal box at the mask
  head's resolution (RLE instances: ``roi_align aligned=True`` then ``>= 0.5``), binary
  (:meth:`rethink.structures.InstanceMasks.crop_and_resize`); torchvision crops full-image masks
  with ``aligned=False`` and keeps them soft;
- **inference**: detectron2's ``fast_rcnn_inference`` (no extra small-box filter) and the mask
  probabilities of the predicted class, pasted later by :func:`rethink.modeling.mask_ops`.

Classes are 1..K with 0 = background (torchvision's convention; the checkpoint loader moves
detectron2's last background row to the front).
"""
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import boxes as box_ops

from ..structures.masks import crop_and_resize_bitmasks


def box_regression_loss(pred: torch.Tensor, target: torch.Tensor, beta: float) -> torch.Tensor:
    """Summed smooth-L1 with `beta`; beta 0 is L1 (as detectron2)."""
    if beta == 0:
        return F.l1_loss(pred, target, reduction="sum")
    return F.smooth_l1_loss(pred, target, beta=beta, reduction="sum")


def fast_rcnn_losses(class_logits: torch.Tensor, box_deltas: torch.Tensor, labels: List[torch.Tensor],
                     regression_targets: List[torch.Tensor], beta: float, box_weight: float) -> Dict[str, torch.Tensor]:
    """loss_cls and loss_box_reg over the sampled proposals of the batch (detectron2's normalisation)."""
    labels = torch.cat(labels)
    targets = torch.cat(regression_targets)
    loss_cls = F.cross_entropy(class_logits, labels, reduction="mean")
    fg = torch.where(labels > 0)[0]
    deltas = box_deltas.reshape(box_deltas.shape[0], -1, 4)[fg, labels[fg]]
    loss_box = box_regression_loss(deltas, targets[fg], beta) / max(labels.numel(), 1)
    return {"loss_cls": loss_cls, "loss_box_reg": loss_box * box_weight}


def mask_rcnn_loss(mask_logits: torch.Tensor, proposals: List[torch.Tensor], gt_masks: list,
                   labels: List[torch.Tensor], matched_idxs: List[torch.Tensor]) -> torch.Tensor:
    """Mean binary cross-entropy of the foreground proposals' class logits against binary targets
    cut from each proposal's matched instance. `gt_masks` per image: an InstanceMasks, or a dense
    [N, H, W] tensor (detectron2's BitMasks)."""
    size = mask_logits.shape[-1]
    targets = [crop_and_resize_bitmasks(m, p, i, size).to(p.device) if isinstance(m, torch.Tensor)
               else m.crop_and_resize(p, i, size) for m, p, i in zip(gt_masks, proposals, matched_idxs)]
    labels = torch.cat(labels)
    if labels.numel() == 0:
        return mask_logits.sum() * 0
    logits = mask_logits[torch.arange(labels.numel(), device=labels.device), labels]
    return F.binary_cross_entropy_with_logits(logits, torch.cat(targets).to(logits.dtype), reduction="mean")


class StandardROIHeads(RoIHeads):
    """See the module doc. Eval returns per image {"boxes" (network-input XYXY), "scores", "labels"
    (1..K), "mask_probs" [N, M, M] (with masks)}."""

    def __init__(self, *args, smooth_l1_beta: float = 0.0, box_reg_loss_weight: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.smooth_l1_beta = float(smooth_l1_beta)
        self.box_reg_loss_weight = float(box_reg_loss_weight)

    def _mask_logits(self, features, boxes, image_shapes) -> torch.Tensor:
        return self.mask_predictor(self.mask_head(self.mask_roi_pool(features, boxes, image_shapes)))

    def forward(self, features: Dict[str, torch.Tensor], proposals: List[torch.Tensor],
                image_shapes: List[Tuple[int, int]], targets: Optional[List[Dict]] = None):
        if self.training:
            if targets is None:
                raise ValueError("StandardROIHeads: targets are required in training mode")
            proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_deltas = self.box_predictor(box_features)
        if self.training:
            losses = fast_rcnn_losses(class_logits, box_deltas, labels, regression_targets,
                                      self.smooth_l1_beta, self.box_reg_loss_weight)
            if self.has_mask():
                pos = [torch.where(lab > 0)[0] for lab in labels]
                fg_boxes = [p[i] for p, i in zip(proposals, pos)]
                logits = self._mask_logits(features, fg_boxes, image_shapes)
                losses["loss_mask"] = mask_rcnn_loss(logits, fg_boxes, [t["masks"] for t in targets],
                                                     [lab[i] for lab, i in zip(labels, pos)],
                                                     [m[i] for m, i in zip(matched_idxs, pos)])
            return [], losses
        boxes, scores, classes = self.postprocess_detections(class_logits, box_deltas, proposals, image_shapes)
        results = [{"boxes": b, "scores": s, "labels": c} for b, s, c in zip(boxes, scores, classes)]
        if self.has_mask():
            logits = self._mask_logits(features, boxes, image_shapes)
            labels = torch.cat(classes)
            probs = logits[torch.arange(labels.numel(), device=labels.device), labels].sigmoid()
            for r, p in zip(results, probs.split([len(b) for b in boxes])):
                r["mask_probs"] = p
        return results, {}

    def postprocess_detections(self, class_logits, box_deltas, proposals, image_shapes):
        """detectron2's fast_rcnn_inference per image: softmax scores, class-specific boxes clipped
        to the image, scores > SCORE_THRESH_TEST, per-class NMS, the top DETECTIONS_PER_IMAGE."""
        per_image = [len(p) for p in proposals]
        all_boxes = self.box_coder.decode(box_deltas, proposals).split(per_image)
        all_scores = F.softmax(class_logits, -1).split(per_image)
        out_boxes, out_scores, out_labels = [], [], []
        for boxes, scores, shape in zip(all_boxes, all_scores, image_shapes):
            boxes, scores = boxes[:, 1:], scores[:, 1:]  # drop the background column
            finite = torch.isfinite(boxes).all(dim=(1, 2)) & torch.isfinite(scores).all(dim=1)
            if not bool(finite.all()):
                boxes, scores = boxes[finite], scores[finite]
            num_classes = scores.shape[1]
            boxes = box_ops.clip_boxes_to_image(boxes.reshape(-1, 4), shape).reshape(-1, num_classes, 4)
            keep_mask = scores > self.score_thresh
            where = keep_mask.nonzero()
            boxes, scores = boxes[keep_mask], scores[keep_mask]
            keep = box_ops.batched_nms(boxes, scores, where[:, 1], self.nms_thresh)[:self.detections_per_img]
            out_boxes.append(boxes[keep])
            out_scores.append(scores[keep])
            out_labels.append(where[keep, 1] + 1)
        return out_boxes, out_scores, out_labels
