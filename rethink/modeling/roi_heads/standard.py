"""detectron2's StandardROIHeads (box head + mask head, FPN) on torchvision's RoIHeads.

torchvision's RoIHeads provides the proposal matching (IoU >= IOU_THRESHOLDS[0] is foreground), the
ground truth appended to the proposals and the balanced sampler; this class replaces what detectron2
does differently:

- **box loss**: cross-entropy over the sampled proposals (mean) and, for the foreground ones, the
  class-specific (with ``CLS_AGNOSTIC_BBOX_REG`` the one class-agnostic) deltas against the targets
  with smooth-L1 of ``ROI_BOX_HEAD.SMOOTH_L1_BETA``
  (0 = L1, detectron2's default; torchvision hard-codes beta 1/9), summed and divided by the number
  of sampled proposals, times ``ROI_BOX_HEAD.BBOX_REG_LOSS_WEIGHT``;
- **mask targets**: each instance's polygons rasterised inside its positive proposal box at the mask
  head's resolution (RLE instances: ``roi_align aligned=True`` then ``>= 0.5``), binary
  (:meth:`rethink.structures.InstanceMasks.crop_and_resize`); torchvision crops full-image masks
  with ``aligned=False`` and keeps them soft;
- **inference**: detectron2's ``fast_rcnn_inference`` (no extra small-box filter) and the mask
  probabilities of the predicted class, pasted later by :func:`rethink.modeling.mask_ops`;
- **keypoints** (``MODEL.KEYPOINT_ON``): the ``keypoint_head`` component (keypoint.py) trains on the
  foreground proposals and predicts on the detections, as detectron2's ``_forward_keypoint``.

Classes are 1..K with 0 = background (torchvision's convention; the checkpoint loader moves
detectron2's last background row to the front).
"""
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import boxes as box_ops

from ...structures.masks import crop_and_resize_bitmasks
from ..heads import build_box_head, build_box_predictor, build_mask_head, build_mask_predictor, build_pooler
from .keypoint import build_keypoint_head


def head_kwargs(cfg, mask_pool, mask_head, mask_predictor, in_channels: int) -> dict:
    """The RoI heads' settings other than the box head (shared by the standard and cascade heads); the
    keypoint branch is built here, after the box and mask heads (detectron2's order)."""
    m = cfg.MODEL
    return dict(
        keypoint_head=build_keypoint_head(cfg, in_channels, build_pooler(m.ROI_KEYPOINT_HEAD)),
        fg_iou_thresh=m.ROI_HEADS.IOU_THRESHOLDS[0], bg_iou_thresh=m.ROI_HEADS.IOU_THRESHOLDS[0],
        batch_size_per_image=m.ROI_HEADS.BATCH_SIZE_PER_IMAGE, positive_fraction=m.ROI_HEADS.POSITIVE_FRACTION,
        score_thresh=m.ROI_HEADS.SCORE_THRESH_TEST, nms_thresh=m.ROI_HEADS.NMS_THRESH_TEST,
        detections_per_img=cfg.TEST.DETECTIONS_PER_IMAGE,
        mask_roi_pool=mask_pool if m.MASK_ON else None, mask_head=mask_head if m.MASK_ON else None,
        mask_predictor=mask_predictor if m.MASK_ON else None,
        smooth_l1_beta=m.ROI_BOX_HEAD.SMOOTH_L1_BETA, box_reg_loss_weight=m.ROI_BOX_HEAD.BBOX_REG_LOSS_WEIGHT,
    )


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
    if labels.numel() == 0:  # no sampled box in the batch (as detectron2's cross_entropy wrapper: 0)
        return {"loss_cls": class_logits.sum() * 0, "loss_box_reg": box_deltas.sum() * 0}
    loss_cls = F.cross_entropy(class_logits, labels, reduction="mean")
    fg = torch.where(labels > 0)[0]
    per_class = box_deltas.reshape(box_deltas.shape[0], -1, 4)
    deltas = per_class[fg, 0] if per_class.shape[1] == 1 else per_class[fg, labels[fg]]  # 1: class-agnostic
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
    (1..K), "mask_probs" [N, M, M] (with masks), "keypoints" [N, K, 3] (x, y, score; with keypoints)}:
    :meth:`predict_boxes` then
    :meth:`predict_mask_probs` on its boxes (test-time augmentation calls the two apart)."""

    def __init__(self, *args, smooth_l1_beta: float = 0.0, box_reg_loss_weight: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.smooth_l1_beta = float(smooth_l1_beta)
        self.box_reg_loss_weight = float(box_reg_loss_weight)

    @classmethod
    def from_config(cls, cfg, in_channels: int) -> "StandardROIHeads":
        box_head = build_box_head(cfg, in_channels)  # built in this order: the initial weights depend on it
        mask_head = build_mask_head(cfg, in_channels)
        box_predictor = build_box_predictor(cfg, in_channels, cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG)
        mask_predictor = build_mask_predictor(cfg, in_channels)
        return cls(build_pooler(cfg.MODEL.ROI_BOX_HEAD), box_head, box_predictor,
                   bbox_reg_weights=tuple(cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS),
                   **head_kwargs(cfg, build_pooler(cfg.MODEL.ROI_MASK_HEAD), mask_head, mask_predictor, in_channels))

    def has_keypoint(self) -> bool:
        return self.keypoint_head is not None

    def _mask_logits(self, features, boxes, image_shapes) -> torch.Tensor:
        return self.mask_predictor(self.mask_head(self.mask_roi_pool(features, boxes, image_shapes)))

    def forward(self, features: Dict[str, torch.Tensor], proposals: List[torch.Tensor],
                image_shapes: List[Tuple[int, int]], targets: Optional[List[Dict]] = None):
        if not self.training:
            results = self.predict_boxes(features, proposals, image_shapes)
            if self.has_mask():
                probs = self.predict_mask_probs(features, [r["boxes"] for r in results],
                                                [r["labels"] for r in results], image_shapes)
                for r, p in zip(results, probs):
                    r["mask_probs"] = p
            if self.has_keypoint():
                for r, k in zip(results, self.keypoint_head.predict(features, [r["boxes"] for r in results],
                                                                    image_shapes)):
                    r["keypoints"] = k
            return results, {}
        if targets is None:
            raise ValueError(f"{type(self).__name__}: targets are required in training mode")
        proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        losses = self.box_losses(features, proposals, image_shapes, targets, labels, regression_targets)
        if self.has_mask():
            losses["loss_mask"] = self.mask_loss(features, proposals, image_shapes, targets, labels, matched_idxs)
        if self.has_keypoint():
            losses["loss_keypoint"] = self.keypoint_head.loss(features, proposals, image_shapes, targets, labels,
                                                              matched_idxs)
        return [], losses

    def box_losses(self, features, proposals, image_shapes, targets, labels, regression_targets):
        """loss_cls and loss_box_reg of the sampled, labelled proposals."""
        class_logits, box_deltas = self.box_predictor(self.box_head(self.box_roi_pool(features, proposals,
                                                                                      image_shapes)))
        return fast_rcnn_losses(class_logits, box_deltas, labels, regression_targets, self.smooth_l1_beta,
                                self.box_reg_loss_weight)

    def mask_loss(self, features, proposals, image_shapes, targets, labels, matched_idxs) -> torch.Tensor:
        """loss_mask on the foreground ones of the sampled proposals."""
        pos = [torch.where(lab > 0)[0] for lab in labels]
        fg_boxes = [p[i] for p, i in zip(proposals, pos)]
        logits = self._mask_logits(features, fg_boxes, image_shapes)
        return mask_rcnn_loss(logits, fg_boxes, [t["masks"] for t in targets], [lab[i] for lab, i in zip(labels, pos)],
                              [m[i] for m, i in zip(matched_idxs, pos)])

    def predict_boxes(self, features: Dict[str, torch.Tensor], proposals: List[torch.Tensor],
                      image_shapes: List[Tuple[int, int]]) -> List[Dict[str, torch.Tensor]]:
        """Eval: per image {"boxes" (network-input XYXY), "scores", "labels" 1..K}, no masks."""
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_deltas = self.box_predictor(box_features)
        boxes = self.box_coder.decode(box_deltas, proposals)
        scores = F.softmax(class_logits, -1)
        return self.detections(boxes, scores, proposals, image_shapes)

    def predict_mask_probs(self, features: Dict[str, torch.Tensor], boxes: List[torch.Tensor],
                           labels: List[torch.Tensor], image_shapes: List[Tuple[int, int]]) -> List[torch.Tensor]:
        """Eval: per image the [N, M, M] mask probabilities of class `labels` (1..K) in `boxes`."""
        logits = self._mask_logits(features, boxes, image_shapes)
        flat = torch.cat(labels)
        probs = logits[torch.arange(flat.numel(), device=flat.device), flat].sigmoid()
        return list(probs.split([len(b) for b in boxes]))

    def detections(self, boxes: torch.Tensor, scores: torch.Tensor, proposals: List[torch.Tensor],
                   image_shapes: List[Tuple[int, int]]) -> List[Dict[str, torch.Tensor]]:
        """detectron2's fast_rcnn_inference per image from decoded `boxes` [R, C, 4] (C = K + 1, or 1
        when class-agnostic) and softmax `scores` [R, K + 1] (background first): boxes clipped to the
        image, scores > SCORE_THRESH_TEST, per-class NMS, the top DETECTIONS_PER_IMAGE."""
        per_image = [len(p) for p in proposals]
        return [fast_rcnn_inference_single_image(b, s, shape, self.score_thresh, self.nms_thresh,
                                                 self.detections_per_img)
                for b, s, shape in zip(boxes.split(per_image), scores.split(per_image), image_shapes)]


def fast_rcnn_inference_single_image(boxes: torch.Tensor, scores: torch.Tensor, image_shape: Tuple[int, int],
                                     score_thresh: float, nms_thresh: float, topk: int) -> Dict[str, torch.Tensor]:
    """One image's detections (detectron2's fast_rcnn_inference_single_image): `boxes` [R, C, 4] with
    C = K + 1 (per class, background first) or 1 (class-agnostic), or [R, 4]; `scores` [R, K + 1]
    background first. Returns {"boxes", "scores", "labels" 1..K}."""
    boxes = boxes.reshape(boxes.shape[0], -1, 4) if boxes.numel() else boxes.reshape(0, max(boxes.shape[-1] // 4, 1), 4)
    if boxes.shape[1] > 1:
        boxes = boxes[:, 1:]  # drop the background column
    scores = scores[:, 1:]
    finite = torch.isfinite(boxes).all(dim=(1, 2)) & torch.isfinite(scores).all(dim=1)
    if not bool(finite.all()):
        boxes, scores = boxes[finite], scores[finite]
    per_box = boxes.shape[1]
    boxes = box_ops.clip_boxes_to_image(boxes.reshape(-1, 4), image_shape).reshape(-1, per_box, 4)
    keep_mask = scores > score_thresh
    where = keep_mask.nonzero()
    boxes = boxes[where[:, 0], 0] if per_box == 1 else boxes[keep_mask]
    scores = scores[keep_mask]
    keep = box_ops.batched_nms(boxes, scores, where[:, 1], nms_thresh)[:topk]
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": where[keep, 1] + 1}
