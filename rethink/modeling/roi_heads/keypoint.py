"""detectron2's keypoint branch (Keypoint R-CNN, He et al. 2017 Sec. 5): ``KRCNNConvDeconvUpsampleHead``, its
targets, loss and inference, as one component the RoI heads call (``roi_heads.keypoint_head``).

- **head**: the ``ROI_KEYPOINT_HEAD`` pooler (``POOLER_RESOLUTION`` 14, ``POOLER_TYPE``, ``POOLER_SAMPLING_RATIO``),
  ``CONV_DIMS`` 3x3 convs with ReLU (``conv_fcn1..8``, 512 wide, no norm), a 4x4 stride-2 transposed conv to
  ``NUM_KEYPOINTS`` maps (``score_lowres``) and a bilinear x2 upsample: 14 -> 28 -> 56. Weights MSRA-filled
  (kaiming normal, fan_out), biases 0. Parameter names are detectron2's.
- **training**: the foreground ones of the sampled proposals that hold at least one labelled keypoint
  (visibility >= 1) of their matched instance inside the box (borders included); each keypoint's target is
  the heatmap cell ``floor((x - x1) * S / (x2 - x1))`` (a keypoint exactly on the right/bottom edge goes to
  cell S - 1), valid when inside the map and visible (v > 0). Loss ``loss_keypoint``: the summed softmax
  cross-entropy over the S x S cells of the valid keypoints, divided by their number
  (``NORMALIZE_LOSS_BY_VISIBLE_KEYPOINTS``, default) or by images x ``NUM_KEYPOINTS`` x
  ``ROI_HEADS.BATCH_SIZE_PER_IMAGE`` x ``ROI_HEADS.POSITIVE_FRACTION``, times ``LOSS_WEIGHT``; 0 (with a
  graph) when no keypoint is valid.
- **inference**: on the final detections' boxes, each box's S x S logits are resized (bicubic, half-pixel
  centres) to ceil(box height) x ceil(box width); each keypoint is the argmax cell ``(i, j)`` at
  ``x = x1 + (j + 0.5) * w / ceil(w)`` (same for y), its score the softmax at that cell over the S x S map
  (``1 / sum(exp(logits - max))``). Output per image: [N, K, 3] (x, y, score) in network-input pixels.
"""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F


def keypoints_to_heatmap(keypoints: torch.Tensor, rois: torch.Tensor, size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Targets of `keypoints` [N, K, 3] (x, y, v) in `rois` [N, 4] XYXY on an S x S map: the flat cell
    index ``y * S + x`` [N, K] (int64, 0 where not valid) and whether it is valid [N, K] (bool)."""
    if rois.numel() == 0:
        empty = torch.zeros((0, keypoints.shape[1]), dtype=torch.int64, device=rois.device)
        return empty, empty.bool()
    x1, y1, x2, y2 = (rois[:, i:i + 1] for i in range(4))
    x, y = keypoints[..., 0], keypoints[..., 1]
    cx = ((x - x1) * (size / (x2 - x1))).floor().long()
    cy = ((y - y1) * (size / (y2 - y1))).floor().long()
    cx = torch.where(x == x2, torch.full_like(cx, size - 1), cx)  # on the right / bottom edge: the last cell
    cy = torch.where(y == y2, torch.full_like(cy, size - 1), cy)
    valid = (cx >= 0) & (cy >= 0) & (cx < size) & (cy < size) & (keypoints[..., 2] > 0)
    return (cy * size + cx) * valid, valid


def with_keypoint_in_box(keypoints: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """[N] bool: box i holds at least one labelled (v >= 1) keypoint of `keypoints[i]`, borders included."""
    x, y = keypoints[..., 0], keypoints[..., 1]
    b = boxes[:, None, :]
    inside = (x >= b[..., 0]) & (x <= b[..., 2]) & (y >= b[..., 1]) & (y <= b[..., 3])
    return (inside & (keypoints[..., 2] >= 1)).any(dim=1)


def keypoint_rcnn_loss(logits: torch.Tensor, gt_keypoints: Sequence[torch.Tensor], boxes: Sequence[torch.Tensor],
                       normalizer: Optional[float]) -> torch.Tensor:
    """Summed cross-entropy of the valid keypoints' heatmap cells over `logits` [R, K, S, S] (rows in the
    order of the concatenated `boxes`; `gt_keypoints` [n_i, K, 3] per image), divided by `normalizer`, or by
    the number of valid keypoints when None. 0 times the logits when none is valid."""
    size = logits.shape[-1]
    targets, valid = [], []
    for kp, b in zip(gt_keypoints, boxes):
        if len(b):
            t, v = keypoints_to_heatmap(kp, b, size)
            targets.append(t.reshape(-1))
            valid.append(v.reshape(-1))
    if not targets or not bool(torch.cat(valid).any()):
        return logits.sum() * 0
    idx = torch.where(torch.cat(valid))[0]
    flat = logits.reshape(logits.shape[0] * logits.shape[1], size * size)
    loss = F.cross_entropy(flat[idx], torch.cat(targets)[idx], reduction="sum")
    return loss / (idx.numel() if normalizer is None else normalizer)


def heatmaps_to_keypoints(maps: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
    """[R, K, 3] (x, y, score) from heatmap logits `maps` [R, K, S, S] in `rois` [R, 4] XYXY (see the module
    doc: bicubic resize to the box's ceil size, argmax, half-pixel centre scaled by size / ceil(size), softmax
    score over the S x S map)."""
    maps = maps.float()
    widths = (rois[:, 2] - rois[:, 0]).clamp(min=1)
    heights = (rois[:, 3] - rois[:, 1]).clamp(min=1)
    wc, hc = widths.ceil(), heights.ceil()
    out = maps.new_zeros((rois.shape[0], maps.shape[1], 3))
    for i in range(rois.shape[0]):
        up = F.interpolate(maps[i:i + 1], size=(int(hc[i]), int(wc[i])), mode="bicubic", align_corners=False)[0]
        flat = up.reshape(up.shape[0], -1)
        pos = flat.argmax(dim=1)  # the first maximum, as detectron2's argmax
        peak = flat.gather(1, pos[:, None])[:, 0]
        xi, yi = pos % up.shape[2], torch.div(pos, up.shape[2], rounding_mode="floor")
        out[i, :, 0] = (xi.float() + 0.5) * (widths[i] / wc[i]) + rois[i, 0]
        out[i, :, 1] = (yi.float() + 0.5) * (heights[i] / hc[i]) + rois[i, 1]
        out[i, :, 2] = 1.0 / (maps[i] - peak[:, None, None]).exp().sum(dim=(1, 2))
    return out


class KeypointHead(nn.Module):
    """detectron2's KRCNNConvDeconvUpsampleHead with its RoI pooler, loss and inference (module doc).
    `loss_normalizer`: "visible", or a number (NUM_KEYPOINTS x BATCH_SIZE_PER_IMAGE x POSITIVE_FRACTION)
    that is multiplied by the number of images."""

    def __init__(self, pooler: nn.Module, in_channels: int, conv_dims: Sequence[int], num_keypoints: int,
                 loss_weight: float = 1.0, loss_normalizer: Union[str, float] = "visible"):
        super().__init__()
        if loss_normalizer != "visible" and not isinstance(loss_normalizer, float):
            raise ValueError(f"KeypointHead: loss_normalizer must be 'visible' or a float, got {loss_normalizer!r}")
        self.pooler = pooler
        self.num_keypoints = int(num_keypoints)
        self.loss_weight = float(loss_weight)
        self.loss_normalizer = loss_normalizer
        self.convs = []
        for i, width in enumerate(conv_dims, 1):
            conv = nn.Conv2d(in_channels, width, 3, padding=1)
            self.add_module(f"conv_fcn{i}", conv)
            self.convs.append(conv)
            in_channels = width
        self.score_lowres = nn.ConvTranspose2d(in_channels, num_keypoints, 4, stride=2, padding=1)
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            else:
                nn.init.kaiming_normal_(p, mode="fan_out", nonlinearity="relu")

    def forward(self, features: Dict[str, torch.Tensor], boxes: List[torch.Tensor],
                image_shapes: List[Tuple[int, int]]) -> torch.Tensor:
        """Heatmap logits [R, K, 4 x POOLER_RESOLUTION, same] (float32) of the concatenated `boxes`."""
        x = self.pooler(features, boxes, image_shapes)
        for conv in self.convs:
            x = F.relu(conv(x))
        x = self.score_lowres(x)
        return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False).float()

    def loss(self, features: Dict[str, torch.Tensor], proposals: List[torch.Tensor],
             image_shapes: List[Tuple[int, int]], targets: List[Dict], labels: List[torch.Tensor],
             matched_idxs: List[torch.Tensor]) -> torch.Tensor:
        """loss_keypoint of the sampled proposals (`labels` 0 = background, `matched_idxs` their instance)."""
        boxes, gt = [], []
        for p, lab, m, t in zip(proposals, labels, matched_idxs, targets):
            fg = torch.where(lab > 0)[0]
            kp = t["keypoints"][m[fg]].to(p.dtype)
            keep = with_keypoint_in_box(kp, p[fg])
            boxes.append(p[fg][keep])
            gt.append(kp[keep])
        logits = self(features, boxes, image_shapes)
        normalizer = None if self.loss_normalizer == "visible" else len(proposals) * self.loss_normalizer
        return keypoint_rcnn_loss(logits, gt, boxes, normalizer) * self.loss_weight

    def predict(self, features: Dict[str, torch.Tensor], boxes: List[torch.Tensor],
                image_shapes: List[Tuple[int, int]]) -> List[torch.Tensor]:
        """Eval: per image the [N, K, 3] (x, y, score) keypoints of the detections `boxes`."""
        logits = self(features, boxes, image_shapes)
        kps = heatmaps_to_keypoints(logits.detach(), torch.cat(boxes).detach().float())
        return list(kps.split([len(b) for b in boxes]))


def build_keypoint_head(cfg, in_channels: int, pooler: nn.Module) -> Optional[KeypointHead]:
    """The keypoint branch of MODEL.ROI_KEYPOINT_HEAD, or None without MODEL.KEYPOINT_ON."""
    if not cfg.MODEL.KEYPOINT_ON:
        return None
    k = cfg.MODEL.ROI_KEYPOINT_HEAD
    normalizer: Union[str, float] = "visible"
    if not k.NORMALIZE_LOSS_BY_VISIBLE_KEYPOINTS:
        r = cfg.MODEL.ROI_HEADS
        normalizer = float(k.NUM_KEYPOINTS * r.BATCH_SIZE_PER_IMAGE * r.POSITIVE_FRACTION)
    return KeypointHead(pooler, in_channels, list(k.CONV_DIMS), k.NUM_KEYPOINTS, k.LOSS_WEIGHT, normalizer)
