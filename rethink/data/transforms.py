"""Per-image transforms and the dataset mappers (detectron2's DatasetMapper semantics).

Training: resize the shortest edge to a size drawn from INPUT.MIN_SIZE_TRAIN ("choice": one of the
values; "range": a uniform integer in [min, max]), capped so the long edge is <= INPUT.MAX_SIZE_TRAIN
(detectron2's ``ResizeShortestEdge.get_output_shape``, rounding ``int(x + 0.5)``, bilinear image
resize with PIL), then a horizontal flip with probability 0.5 when INPUT.RANDOM_FLIP is "horizontal".
The draws come from the per-sample generator the loader passes in, in this order: size, flip.
Test: shortest edge INPUT.MIN_SIZE_TEST (0 = no resize), long edge <= INPUT.MAX_SIZE_TEST, no flip.

Mapped sample (a dict; what crosses from a loader worker to the trainer, so kept compact):
    image     uint8 [3, H, W], 0..255, channel order INPUT.FORMAT ("BGR" default, as detectron2); the
              model casts it to float on its device
    target    (training) {"boxes": float32 [N, 4] XYXY in the resized image, "labels": int64 [N] in
              1..K, "masks": rethink.structures.InstanceMasks of N instances at (H, W) (only with
              MODEL.MASK_ON)}; crowd instances excluded, boxes clipped to the image, instances with an
              empty box after the transform removed (boxes, labels and masks indexed alike, in
              annotation order)
    image_id, height, width   ORIGINAL image id and size (to rescale test outputs)
    file_name, aug            path; {"short_edge", "flip", "size": (H, W)} of the applied transform

Masks, per instance, in network-input coordinates (detectron2's transform_instance_annotations):
- INPUT.MASK_FORMAT "polygon" (default): a polygon annotation stays polygons, float64 flat arrays,
  x *= W / w, y *= H / h, then x -> W - x when flipped. An annotation stored as RLE (non-crowd) is
  decoded, resized to (H, W) with PIL NEAREST, flipped and re-encoded as an RLE (detectron2 refuses
  RLE in polygon mode; we accept the mix).
- "bitmask": every instance an RLE at (H, W): polygons are moved as above and rasterised
  (pycocotools frPyObjects + merge: the RLE that ``polygons_to_bitmask`` decodes, as detectron2's
  bitmask mode); RLE annotations as above.
``target["masks"].to_bitmasks()`` gives the dense uint8 [N, H, W] masks this mapper used to produce.
"""
import logging
import warnings
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from ..structures.masks import InstanceMasks, encode_bitmask
from .errors import DatasetError
from .images import read_rgb

logger = logging.getLogger(__name__)


def resize_shape(h: int, w: int, short_edge: int, max_size: int) -> Tuple[int, int]:
    """(new_h, new_w) for resizing the shortest edge of an h x w image to `short_edge` with the long
    edge capped at `max_size` (detectron2 ``ResizeShortestEdge.get_output_shape``)."""
    size = short_edge * 1.0
    scale = size / min(h, w)
    if h < w:
        newh, neww = size, scale * w
    else:
        newh, neww = scale * h, size
    if max_size > 0 and max(newh, neww) > max_size:
        scale = max_size * 1.0 / max(newh, neww)
        newh, neww = newh * scale, neww * scale
    return int(newh + 0.5), int(neww + 0.5)


def sample_short_edge(rng: np.random.Generator, sizes: Sequence[int], sampling: str) -> int:
    sizes = [int(s) for s in sizes]
    if sampling == "choice":
        return sizes[int(rng.integers(len(sizes)))]
    if sampling == "range":
        if len(sizes) != 2:
            raise ValueError(f"INPUT.MIN_SIZE_TRAIN_SAMPLING 'range' needs (min, max), got {sizes}")
        return int(rng.integers(sizes[0], sizes[1] + 1))
    raise ValueError(f"INPUT.MIN_SIZE_TRAIN_SAMPLING must be 'choice' or 'range', got {sampling!r}")


def _open_rgb(path: str, expected_hw: Tuple[int, int], image_id: int, dataset: str) -> Image.Image:
    """The image as an 8-bit RGB PIL image (rethink.data.images: EXIF orientation applied, every pixel
    format converted or refused), its size checked against the annotations; errors name the file and
    the image id."""
    rgb = read_rgb(path, image_id, dataset)
    if (rgb.height, rgb.width) != tuple(expected_hw):
        raise DatasetError(f"{path}: image id {image_id} of dataset {dataset} is {rgb.height}x{rgb.width} "
                           f"(h x w) but the annotations say {expected_hw[0]}x{expected_hw[1]}")
    return rgb


def _check_format(fmt: str) -> None:
    if fmt not in ("BGR", "RGB"):
        raise ValueError(f"INPUT.FORMAT must be 'BGR' or 'RGB', got {fmt!r}")


def load_image(path: str, fmt: str, expected_hw: Tuple[int, int], new_hw: Tuple[int, int], flip: bool,
               image_id: int, dataset: str) -> torch.Tensor:
    """The network input: uint8 [3, new_h, new_w] in `fmt` channel order. Read as RGB, resized with
    PIL bilinear (per channel, so resizing before the channel swap gives the same bytes as after),
    then flip, channel order and HWC -> CHW in one copy."""
    _check_format(fmt)
    im = _open_rgb(path, expected_hw, image_id, dataset)
    newh, neww = new_hw
    if (im.height, im.width) != (newh, neww):
        im = im.resize((neww, newh), Image.BILINEAR)
    arr = np.asarray(im)
    if flip:
        arr = arr[:, ::-1]
    if fmt == "BGR":
        arr = arr[:, :, ::-1]
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def transform_boxes(xywh: np.ndarray, h: int, w: int, newh: int, neww: int, flip: bool) -> np.ndarray:
    """XYWH boxes in the original image -> XYXY float32 in the resized (and flipped) image, clipped."""
    b = np.asarray(xywh, dtype=np.float64).reshape(-1, 4)
    sx, sy = neww / w, newh / h
    x1, y1 = b[:, 0] * sx, b[:, 1] * sy
    x2, y2 = (b[:, 0] + b[:, 2]) * sx, (b[:, 1] + b[:, 3]) * sy
    if flip:
        x1, x2 = neww - x2, neww - x1
    out = np.stack([x1, y1, x2, y2], axis=1)
    out[:, 0::2] = out[:, 0::2].clip(0, neww)
    out[:, 1::2] = out[:, 1::2].clip(0, newh)
    return out.astype(np.float32)


def transform_polygon(poly: np.ndarray, h: int, w: int, newh: int, neww: int, flip: bool) -> np.ndarray:
    """Flat [x0, y0, x1, ...] in the original image -> float64 in the resized (and flipped) image:
    x *= new_w / w, y *= new_h / h, then x -> new_w - x (detectron2's apply_polygons)."""
    p = np.array(poly, dtype=np.float64).reshape(-1, 2)
    p[:, 0] *= neww / w
    p[:, 1] *= newh / h
    if flip:
        p[:, 0] = neww - p[:, 0]
    return p.reshape(-1)


def _decode(rle) -> np.ndarray:
    """pycocotools' decode, without its numpy-2 ``__array__`` DeprecationWarning on every call."""
    from pycocotools import mask as mask_util

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*__array__ implementation.*")
        return mask_util.decode(rle)


def polygons_to_rle(polys: List[np.ndarray], height: int, width: int) -> Dict:
    """One instance's polygons (already in output coordinates) as a compressed RLE of height x width:
    pycocotools frPyObjects + merge, i.e. exactly the RLE that ``polygons_to_bitmask`` decodes
    (detectron2's bitmask mode), without the decode / re-encode round trip."""
    from pycocotools import mask as mask_util

    if len(polys) == 0:
        return encode_bitmask(np.zeros((height, width), dtype=np.uint8))
    rles = mask_util.frPyObjects([np.asarray(p, dtype=np.float64) for p in polys], height, width)
    return mask_util.merge(rles)


def transform_rle(rle: Dict, newh: int, neww: int, flip: bool) -> Dict:
    """An RLE annotation in network-input coordinates: decoded, resized to (newh, neww) with PIL
    NEAREST (detectron2's apply_segmentation), flipped, re-encoded (``encode_bitmask``).
    Works on the transposed mask (RLE runs are column-major: the decoded mask is Fortran-ordered, so
    its transpose is C-contiguous for PIL and goes back to the encoder without a copy); PIL's nearest
    resize samples each axis on its own, so resizing the transpose gives the transpose of the resize
    (tested against the direct path)."""
    from pycocotools import mask as mask_util

    mt = _decode(rle).T  # (w, h), C-contiguous
    if mt.shape != (neww, newh):
        mt = np.asarray(Image.fromarray(mt).resize((newh, neww), Image.NEAREST))
    if flip:
        mt = mt[::-1]
    return mask_util.encode(np.ascontiguousarray(mt).T)


class DatasetMapper:
    """Maps (dataset, image row, generator) to a sample dict; see the module doc."""

    def __init__(self, cfg, is_train: bool):
        self.is_train = is_train
        self.format = cfg.INPUT.FORMAT
        self.mask_on = bool(cfg.MODEL.MASK_ON)
        self.mask_format = cfg.INPUT.MASK_FORMAT
        if self.mask_format not in ("polygon", "bitmask"):
            raise ValueError(f"INPUT.MASK_FORMAT must be 'polygon' or 'bitmask', got {self.mask_format!r}")
        if is_train:
            self.sizes = tuple(int(s) for s in cfg.INPUT.MIN_SIZE_TRAIN)
            self.sampling = cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
            self.max_size = int(cfg.INPUT.MAX_SIZE_TRAIN)
            if cfg.INPUT.RANDOM_FLIP not in ("horizontal", "none"):
                raise ValueError(f"INPUT.RANDOM_FLIP {cfg.INPUT.RANDOM_FLIP!r} is not supported ('horizontal', 'none')")
            self.flip_prob = 0.5 if cfg.INPUT.RANDOM_FLIP == "horizontal" else 0.0
            sample_short_edge(np.random.default_rng(0), self.sizes, self.sampling)  # validate early
        else:
            self.sizes = (int(cfg.INPUT.MIN_SIZE_TEST),)
            self.sampling = "choice"
            self.max_size = int(cfg.INPUT.MAX_SIZE_TEST)
            self.flip_prob = 0.0

    def draw(self, rng: np.random.Generator) -> Tuple[int, bool]:
        """The random choices of one sample, in a fixed order: short edge, then flip."""
        short = sample_short_edge(rng, self.sizes, self.sampling) if self.is_train else self.sizes[0]
        flip = bool(rng.random() < self.flip_prob) if self.flip_prob > 0 else False
        return short, flip

    def __call__(self, dataset, i: int, rng: np.random.Generator = None) -> Dict[str, object]:
        index = dataset.index
        image_id = index.image_id(i)
        h, w = int(index.a["height"][i]), int(index.a["width"][i])
        path = dataset.image_path(i)
        short, flip = self.draw(rng) if rng is not None else (self.sizes[0], False)
        if short > 0:
            newh, neww = resize_shape(h, w, short, self.max_size)
        else:
            newh, neww = h, w
        image = load_image(path, self.format, (h, w), (newh, neww), flip, image_id, dataset.name)
        out = {"image": image, "image_id": image_id, "height": h, "width": w, "file_name": path,
               "aug": {"short_edge": short, "flip": flip, "size": (newh, neww)}}
        if self.is_train:
            out["target"] = self._target(dataset, i, h, w, newh, neww, flip)
        return out

    def _target(self, dataset, i, h, w, newh, neww, flip) -> Dict[str, object]:
        index = dataset.index
        anns = index.annotations(i, with_segmentation=False)
        rows = np.arange(index.ann_rows(i).start, index.ann_rows(i).stop)
        keep = anns["iscrowd"] == 0
        boxes = transform_boxes(anns["bbox"][keep], h, w, newh, neww, flip)
        nonempty = ((boxes[:, 2] - boxes[:, 0]) > 1e-5) & ((boxes[:, 3] - boxes[:, 1]) > 1e-5)
        rows, boxes, labels = rows[keep][nonempty], boxes[nonempty], anns["label"][keep][nonempty]
        target = {"boxes": torch.from_numpy(boxes.reshape(-1, 4)),
                  "labels": torch.from_numpy(labels.astype(np.int64))}
        if self.mask_on:
            items = []
            for r in rows:
                seg = index.segmentation(int(r))
                if seg is None:
                    raise DatasetError(f"{dataset.json_file}: annotation id {int(index.a['ann_id'][r])} (image id "
                                       f"{index.image_id(i)}) has no segmentation, which MODEL.MASK_ON needs")
                if isinstance(seg, dict):
                    items.append(transform_rle(seg, newh, neww, flip))
                else:
                    polys = [transform_polygon(p, h, w, newh, neww, flip) for p in seg]
                    items.append(polys if self.mask_format == "polygon" else polygons_to_rle(polys, newh, neww))
            target["masks"] = InstanceMasks(items, (newh, neww))
        return target
