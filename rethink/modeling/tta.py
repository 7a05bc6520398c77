"""Test-time augmentation as detectron2's ``GeneralizedRCNNWithTTA`` (what its ``tools/train_net.py``
``test_with_TTA`` evaluates when ``TEST.AUG.ENABLED``).

``GeneralizedRCNNWithTTA(cfg, model)(images, output_sizes)`` takes what the plain model takes in eval
mode -- the test loader's images (already resized to MIN_SIZE_TEST / MAX_SIZE_TEST) and the original
sizes -- and returns the same per-image {"boxes", "scores", "labels" 1..K, "masks" bool [N, h, w]} in
the original image. Per image:

1. **inputs** (detectron2's ``DatasetMapperTTA``): the loader image resized to each of
   ``TEST.AUG.MIN_SIZES`` with the long side capped at ``TEST.AUG.MAX_SIZE`` (``ResizeShortestEdge``:
   PIL bilinear on uint8, ``F.interpolate`` bilinear on float images), each followed by its horizontal
   flip when ``TEST.AUG.FLIP``: 192, 192 + flip, 256, 256 + flip, ...
2. **boxes**: the inputs run through backbone, RPN and box head(s) in consecutive batches of
   ``batch_size`` (3, as detectron2; the batch's zero padding is part of what GroupNorm normalises
   over, so the batches are detectron2's). Each input's detections (SCORE_THRESH_TEST, NMS,
   DETECTIONS_PER_IMAGE as usual) are mapped back to the original image through the inverse transforms
   (flip ``x -> W - x``, then the resize, then the loader's resize; float32, each step on the four
   corners then min/max, as fvcore's ``apply_box``), their scores put in a [R, K + 1] class-score
   matrix, and merged with ``fast_rcnn_inference_single_image`` at score threshold 1e-8,
   ``ROI_HEADS.NMS_THRESH_TEST`` and ``TEST.DETECTIONS_PER_IMAGE``, clipped to the original size.
3. **masks** (MODEL.MASK_ON): the merged boxes mapped into every input (forward transforms), the mask
   head run on them with their merged classes, the 28 x 28 probabilities of flipped inputs flipped
   back, averaged over the inputs, and pasted at 0.5 (``detector_postprocess``; empty boxes dropped).
   Without masks the merged detections are returned as they are (as detectron2).

detectron2 runs the backbone again for the mask pass, on the same batches; the features of the box
pass are the same numbers, so they are kept and reused (``cache_features=False`` recomputes them, to
hold less memory). Everything after the image resize stays on the model's device; a uint8 image on a
GPU is copied to the CPU once for PIL.
"""
import logging
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from ..data.transforms import resize_shape
from .rcnn import detector_postprocess
from .roi_heads import fast_rcnn_inference_single_image

logger = logging.getLogger(__name__)

#: detectron2's score threshold for merging the augmented detections (anything not exactly 0)
MERGE_SCORE_THRESH = 1e-8


@dataclass(frozen=True)
class Augmentation:
    """One augmented input: the loader image resized to `size` (h, w), then flipped when `flip`."""

    size: Tuple[int, int]
    flip: bool


def tta_augmentations(loader_hw: Tuple[int, int], min_sizes: Sequence[int], max_size: int,
                      flip: bool) -> List[Augmentation]:
    """The augmented inputs of one loader image, in detectron2's order (each size, then its flip)."""
    out = []
    for short in min_sizes:
        size = resize_shape(int(loader_hw[0]), int(loader_hw[1]), int(short), int(max_size))
        out.append(Augmentation(size, False))
        if flip:
            out.append(Augmentation(size, True))
    return out


def resize_image(image: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """A CHW image resized to `size` (h, w) as detectron2's ``ResizeTransform`` (bilinear): uint8 with
    PIL (on the CPU: pass a CPU image), any other dtype with ``F.interpolate`` (align_corners False) on
    its device. The same size returns the image itself."""
    h, w = int(size[0]), int(size[1])
    if tuple(image.shape[-2:]) == (h, w):
        return image
    if image.dtype != torch.uint8:
        return F.interpolate(image[None], (h, w), mode="bilinear", align_corners=False)[0]
    hwc = np.ascontiguousarray(image.permute(1, 2, 0).numpy())
    pil = Image.fromarray(hwc[:, :, 0], mode="L") if hwc.shape[2] == 1 else Image.fromarray(hwc)
    out = np.asarray(pil.resize((w, h), Image.BILINEAR))
    out = out[:, :, None] if out.ndim == 2 else out
    return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))


def _ordered(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """XYXY boxes from the transformed x [N, 2] and y [N, 2] of two opposite corners (min / max)."""
    return torch.stack([x.min(dim=1).values, y.min(dim=1).values, x.max(dim=1).values, y.max(dim=1).values], dim=1)


def _scale(boxes: torch.Tensor, sx: float, sy: float) -> torch.Tensor:
    return _ordered(boxes[:, 0::2] * sx, boxes[:, 1::2] * sy)


def _hflip(boxes: torch.Tensor, width: int) -> torch.Tensor:
    return _ordered(width - boxes[:, 0::2], boxes[:, 1::2])


def boxes_to_original(boxes: torch.Tensor, aug: Augmentation, loader_hw: Tuple[int, int],
                      orig_hw: Tuple[int, int]) -> torch.Tensor:
    """XYXY boxes of an augmented input in the original image: flip undone, resize undone, loader
    resize undone (each a float32 step, as detectron2's inverse ``TransformList``)."""
    (ah, aw), (lh, lw), (oh, ow) = aug.size, loader_hw, orig_hw
    if aug.flip:
        boxes = _hflip(boxes, aw)
    boxes = _scale(boxes, lw * 1.0 / aw, lh * 1.0 / ah)
    if (lh, lw) != (oh, ow):
        boxes = _scale(boxes, ow * 1.0 / lw, oh * 1.0 / lh)
    return boxes


def boxes_to_augmented(boxes: torch.Tensor, aug: Augmentation, loader_hw: Tuple[int, int],
                       orig_hw: Tuple[int, int]) -> torch.Tensor:
    """XYXY boxes of the original image in an augmented input (the forward transforms)."""
    (ah, aw), (lh, lw), (oh, ow) = aug.size, loader_hw, orig_hw
    if (lh, lw) != (oh, ow):
        boxes = _scale(boxes, lw * 1.0 / ow, lh * 1.0 / oh)
    boxes = _scale(boxes, aw * 1.0 / lw, ah * 1.0 / lh)
    if aug.flip:
        boxes = _hflip(boxes, aw)
    return boxes


class GeneralizedRCNNWithTTA(nn.Module):
    """`model` (a :class:`rethink.modeling.rcnn.MaskRCNN`) with test-time augmentation; see the module
    doc. Eval only: ``wrapper(images, output_sizes=[(h, w), ...])`` as the model's eval call."""

    def __init__(self, cfg, model: nn.Module, batch_size: int = 3, cache_features: bool = True):
        super().__init__()
        if cfg.MODEL.KEYPOINT_ON:
            raise ValueError("GeneralizedRCNNWithTTA: MODEL.KEYPOINT_ON is not supported (as in detectron2)")
        if cfg.MODEL.LOAD_PROPOSALS:
            raise ValueError("GeneralizedRCNNWithTTA: MODEL.LOAD_PROPOSALS is not supported (as in detectron2)")
        if batch_size < 1:
            raise ValueError(f"GeneralizedRCNNWithTTA: batch_size must be >= 1, got {batch_size}")
        aug = cfg.TEST.AUG
        if len(aug.MIN_SIZES) == 0:
            raise ValueError("TEST.AUG.MIN_SIZES is empty: test-time augmentation needs at least one size")
        self.model = model
        self.min_sizes = tuple(int(s) for s in aug.MIN_SIZES)
        self.max_size = int(aug.MAX_SIZE)
        self.flip = bool(aug.FLIP)
        self.batch_size = int(batch_size)
        self.cache_features = bool(cache_features)
        self.mask_on = bool(cfg.MODEL.MASK_ON)
        self.num_classes = int(cfg.MODEL.ROI_HEADS.NUM_CLASSES)
        self.nms_thresh = float(cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST)
        self.detections_per_image = int(cfg.TEST.DETECTIONS_PER_IMAGE)
        self.train(model.training)

    def forward(self, images: List[torch.Tensor],
                output_sizes: Optional[List[Tuple[int, int]]] = None) -> List[Dict[str, torch.Tensor]]:
        if self.training:
            raise RuntimeError("GeneralizedRCNNWithTTA is for inference: call .eval() first")
        sizes = output_sizes or [tuple(img.shape[-2:]) for img in images]
        with torch.no_grad():
            return [self.inference_one_image(img, (int(hw[0]), int(hw[1]))) for img, hw in zip(images, sizes)]

    def augmented_inputs(self, image: torch.Tensor) -> Tuple[List[Augmentation], List[torch.Tensor]]:
        """The augmentations of one loader image and the images they give (on the image's device)."""
        augs = tta_augmentations(tuple(image.shape[-2:]), self.min_sizes, self.max_size, self.flip)
        device = image.device
        source = image.cpu() if image.dtype == torch.uint8 else image  # PIL resizes uint8 on the CPU
        resized: Dict[Tuple[int, int], torch.Tensor] = {}
        inputs = []
        for a in augs:
            if a.size not in resized:
                resized[a.size] = resize_image(source, a.size).to(device)
            inputs.append(resized[a.size].flip(-1) if a.flip else resized[a.size])
        return augs, inputs

    def _batches(self, n: int) -> List[range]:
        return [range(s, min(s + self.batch_size, n)) for s in range(0, n, self.batch_size)]

    def _features(self, images: List[torch.Tensor]):
        batch, _ = self.model.transform(images)
        return batch, self.model.backbone(batch.tensors)

    def inference_one_image(self, image: torch.Tensor, orig_hw: Tuple[int, int]) -> Dict[str, torch.Tensor]:
        loader_hw = tuple(image.shape[-2:])
        augs, inputs = self.augmented_inputs(image)
        heads = self.model.roi_heads
        # pass 1: boxes of every augmented input, in the original image
        batches, cached, boxes, scores, labels = self._batches(len(inputs)), [], [], [], []
        for idx in batches:
            batch, features = self._features([inputs[i] for i in idx])
            proposals, _ = self.model.rpn(batch, features)
            for i, det in zip(idx, heads.predict_boxes(features, proposals, batch.image_sizes)):
                boxes.append(boxes_to_original(det["boxes"], augs[i], loader_hw, orig_hw))
                scores.append(det["scores"])
                labels.append(det["labels"])
            cached.append((batch.image_sizes, features) if self.cache_features else None)
        merged = self.merge_detections(torch.cat(boxes), torch.cat(scores), torch.cat(labels), orig_hw)
        if not self.mask_on:
            return merged
        # pass 2: the mask head on the merged boxes in every input, averaged
        n = len(merged["boxes"])
        if n == 0:
            merged["mask_probs"] = merged["boxes"].new_zeros((0, 1, 1))  # nothing to paste
            return detector_postprocess(merged, orig_hw, orig_hw)
        probs = []
        for idx, cache in zip(batches, cached):
            if cache is None:
                batch, features = self._features([inputs[i] for i in idx])
                image_sizes = batch.image_sizes
            else:
                image_sizes, features = cache
            aug_boxes = [boxes_to_augmented(merged["boxes"], augs[i], loader_hw, orig_hw) for i in idx]
            per_input = heads.predict_mask_probs(features, aug_boxes, [merged["labels"]] * len(idx), image_sizes)
            probs += [p.flip(-1) if augs[i].flip else p for i, p in zip(idx, per_input)]
        del cached
        merged["mask_probs"] = torch.stack(probs).mean(dim=0)
        return detector_postprocess(merged, orig_hw, orig_hw)

    def merge_detections(self, boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
                         orig_hw: Tuple[int, int]) -> Dict[str, torch.Tensor]:
        """The union of the inputs' detections (original image) merged by per-class NMS: each box's
        score in a [R, K + 1] matrix (background column 0 stays 0), then detectron2's
        fast_rcnn_inference_single_image at score threshold 1e-8."""
        if len(boxes) == 0:  # no input detected anything (fast_rcnn_inference_single_image needs a row)
            return {"boxes": boxes.reshape(0, 4), "scores": scores, "labels": labels}
        scores_2d = torch.zeros((len(boxes), self.num_classes + 1), dtype=scores.dtype, device=scores.device)
        scores_2d[torch.arange(len(boxes), device=scores.device), labels] = scores
        return fast_rcnn_inference_single_image(boxes, scores_2d, orig_hw, MERGE_SCORE_THRESH, self.nms_thresh,
                                                self.detections_per_image)
