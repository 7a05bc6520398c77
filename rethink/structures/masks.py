"""Ground-truth instance masks of one image, kept compact (polygons or RLE) from the loader to the
loss, and cut into per-proposal mask-head targets the way detectron2 does.

An :class:`InstanceMasks` holds, per instance, either
- **polygons**: a list of float64 arrays ``[x0, y0, x1, y1, ...]`` in the coordinates of the network
  input (already resized / flipped by the mapper), or
- **an RLE**: a COCO RLE dict (``size`` = [H, W] of the network input, ``counts`` bytes), for
  annotations stored as RLE and for every instance with ``INPUT.MASK_FORMAT bitmask``.

Targets for the mask head (``crop_and_resize``), as detectron2's ``PolygonMasks`` / ``BitMasks``:
- polygons are shifted to the proposal box's corner, scaled by ``M / max(side, 0.1)`` per axis and
  rasterised at M x M (pycocotools, as detectron2's ``rasterize_polygons_within_box``);
- RLEs are decoded to the full image and sampled with ``roi_align(aligned=True)`` at M x M, then
  thresholded ``>= 0.5``.
Both give binary targets. The structure never leaves the CPU: ``to(device)`` returns it as is, and
``crop_and_resize`` puts its M x M result on the boxes' device.
"""
import warnings
from typing import List, Sequence, Tuple, Union

import numpy as np
import torch
from pycocotools import mask as mask_util
from torchvision.ops import roi_align

Polygons = List[np.ndarray]
Item = Union[Polygons, dict]


def _decode(rle) -> np.ndarray:
    """pycocotools' decode, without its numpy-2 ``__array__`` DeprecationWarning on every call."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*__array__ implementation.*")
        return mask_util.decode(rle)


def polygons_to_bitmask(polygons: Sequence[np.ndarray], height: int, width: int) -> np.ndarray:
    """Rasterise one instance's polygons (pycocotools frPyObjects + merge + decode): bool H x W."""
    if len(polygons) == 0:
        return np.zeros((height, width), dtype=bool)
    rles = mask_util.frPyObjects([np.asarray(p, dtype=np.float64) for p in polygons], height, width)
    return _decode(mask_util.merge(rles)).astype(bool)


def rasterize_polygons_within_box(polygons: Sequence[np.ndarray], box: np.ndarray, size: int) -> np.ndarray:
    """The part of an instance inside `box` (x0, y0, x1, y1) rasterised at size x size: bool."""
    x0, y0 = float(box[0]), float(box[1])
    ratio_w = size / max(float(box[2]) - x0, 0.1)
    ratio_h = size / max(float(box[3]) - y0, 0.1)
    moved = []
    for p in polygons:
        q = np.array(p, dtype=np.float64)
        q[0::2] = (q[0::2] - x0) * ratio_w
        q[1::2] = (q[1::2] - y0) * ratio_h
        moved.append(q)
    return polygons_to_bitmask(moved, size, size)


def encode_bitmask(mask: np.ndarray) -> dict:
    """COCO RLE (counts as bytes) of a H x W binary mask."""
    return mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))


def crop_and_resize_bitmasks(masks: torch.Tensor, boxes: torch.Tensor, instance_idx: torch.Tensor,
                             size: int) -> torch.Tensor:
    """detectron2's ``BitMasks.crop_and_resize``: full-image masks [K, H, W] sampled in `boxes` with
    ``roi_align(aligned=True)`` at size x size, ``>= 0.5``; float32 0/1 [len(boxes), size, size] on
    the masks' device."""
    boxes = boxes.to(masks.device, torch.float32)
    rois = torch.cat([instance_idx.to(boxes)[:, None], boxes], dim=1)
    sampled = roi_align(masks[:, None].to(torch.float32), rois, (size, size), spatial_scale=1.0,
                        sampling_ratio=0, aligned=True)
    return (sampled[:, 0] >= 0.5).to(torch.float32)


class InstanceMasks:
    """Masks of N instances of one image of size `image_size` (h, w); see the module doc."""

    def __init__(self, items: Sequence[Item], image_size: Tuple[int, int]):
        self.items = list(items)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        for k, it in enumerate(self.items):
            if isinstance(it, dict):
                if tuple(it["size"]) != self.image_size:
                    raise ValueError(f"instance {k}: RLE of size {tuple(it['size'])} in an image of {self.image_size}")
            elif not isinstance(it, list):
                raise TypeError(f"instance {k}: expected a list of polygons or an RLE dict, got {type(it).__name__}")

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        n_rle = sum(isinstance(it, dict) for it in self.items)
        return f"InstanceMasks({len(self)} instances, {n_rle} as RLE, image_size={self.image_size})"

    def __getitem__(self, index) -> "InstanceMasks":
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        if isinstance(index, np.ndarray) and index.dtype == bool:
            index = np.nonzero(index)[0]
        if isinstance(index, slice):
            return InstanceMasks(self.items[index], self.image_size)
        return InstanceMasks([self.items[int(i)] for i in np.asarray(index).reshape(-1)], self.image_size)

    def to(self, *args, **kwargs) -> "InstanceMasks":
        """Stays on the CPU (the loader hands compact polygons to the trainer); see crop_and_resize."""
        return self

    def to_bitmasks(self) -> torch.Tensor:
        """uint8 [N, H, W] full-image masks (for tests and visualisation; the loss never needs them)."""
        h, w = self.image_size
        out = np.zeros((len(self), h, w), dtype=np.uint8)
        for k, it in enumerate(self.items):
            out[k] = _decode(it) if isinstance(it, dict) else polygons_to_bitmask(it, h, w)
        return torch.from_numpy(out)

    def crop_and_resize(self, boxes: torch.Tensor, instance_idx: torch.Tensor, size: int) -> torch.Tensor:
        """Binary targets [len(boxes), size, size] (float32, on boxes.device): instance
        `instance_idx[i]` cut by `boxes[i]` (network-input XYXY)."""
        n = len(boxes)
        out = torch.zeros((n, size, size), dtype=torch.float32)
        if n == 0:
            return out.to(boxes.device)
        boxes_cpu = boxes.detach().to("cpu", torch.float32)
        idx = instance_idx.detach().cpu().numpy()
        boxes_np = boxes_cpu.numpy()
        rle_rows = []
        for i, k in enumerate(idx):
            it = self.items[int(k)]
            if isinstance(it, dict):
                rle_rows.append(i)
            else:
                out[i] = torch.from_numpy(rasterize_polygons_within_box(it, boxes_np[i], size))
        if rle_rows:
            rows = torch.as_tensor(rle_rows)
            needed = sorted({int(idx[i]) for i in rle_rows})
            where = {k: j for j, k in enumerate(needed)}
            full = torch.from_numpy(np.stack([_decode(self.items[k]) for k in needed]))
            out[rows] = crop_and_resize_bitmasks(full, boxes_cpu[rows],
                                                 torch.tensor([where[int(idx[i])] for i in rle_rows]), size)
        return out.to(boxes.device)
