"""Per-image transforms and the dataset mappers (detectron2's DatasetMapper semantics).

Training, in detectron2's order (DatasetMapper puts RandomCrop before build_augmentation's resize/flip):
1. with INPUT.CROP.ENABLED, a random crop of the ORIGINAL image (detectron2's ``RandomCrop``):
   TYPE "relative" crops (int(H*SIZE[0] + 0.5), int(W*SIZE[1] + 0.5)); "relative_range" draws the two
   fractions uniformly in [SIZE[i], 1] (SIZE as float32, as detectron2) and crops as "relative";
   "absolute" crops (min(SIZE[0], H), min(SIZE[1], W)); "absolute_range" draws the crop height in
   [min(H, SIZE[0]), min(H, SIZE[1])] and the width in [min(W, SIZE[0]), min(W, SIZE[1])]; the corner
   (y0, x0) is then uniform over the positions that keep the crop inside the image;
2. resize the shortest edge (of the crop) to a size drawn from INPUT.MIN_SIZE_TRAIN ("choice": one of
   the values; "range": a uniform integer in [min, max]), capped so the long edge is <=
   INPUT.MAX_SIZE_TRAIN (detectron2's ``ResizeShortestEdge.get_output_shape``, rounding ``int(x + 0.5)``,
   bilinear image resize with PIL);
3. a horizontal flip with probability 0.5 when INPUT.RANDOM_FLIP is "horizontal".
The draws come from the per-sample generator the loader passes in, in this order: the crop's size
(relative_range: one uniform pair (h, w); absolute_range: height, then width), its y0, its x0 (only
with INPUT.CROP.ENABLED: without it nothing is drawn for the crop, so samples are those of a run
without crop support), then the short edge, then the flip.
Test: shortest edge INPUT.MIN_SIZE_TEST (0 = no resize), long edge <= INPUT.MAX_SIZE_TEST, no flip, no crop.

Mapped sample (a dict; what crosses from a loader worker to the trainer, so kept compact):
    image     uint8 [3, H, W], 0..255, channel order INPUT.FORMAT ("BGR" default, as detectron2); the
              model casts it to float on its device
    target    (training) {"boxes": float32 [N, 4] XYXY in the resized image, "labels": int64 [N] in
              1..K, "masks": rethink.structures.InstanceMasks of N instances at (H, W) (only with
              MODEL.MASK_ON)}; crowd instances excluded, boxes clipped to the image, instances with an
              empty box (width or height <= 1e-5) or an empty mask (no polygon left, or no pixel)
              after the transform removed (detectron2's filter_empty_instances; boxes, labels,
              masks and keypoints indexed alike, in annotation order); "keypoints": float32 [N, K, 3]
              (x, y, v) in the network input (only with MODEL.KEYPOINT_ON; rethink.data.keypoints:
              + 0.5, moved with the crop, resize and flip, left/right swapped by a flip, v = 0 outside).
              With a crop and MODEL.MASK_ON the boxes are
              recomputed from the cropped masks (detectron2's recompute_boxes): the polygons' extent,
              or the pixel extent of an RLE mask (BitMasks.get_bounding_boxes: last pixel + 1)
    image_id, height, width   ORIGINAL image id and size (to rescale test outputs)
    file_name, aug            path; {"short_edge", "flip", "size": (H, W), "crop": (y0, x0, h, w) in the
                              original image or None} of the applied transform

Masks, per instance, in network-input coordinates (detectron2's transform_instance_annotations):
- a crop first clips every polygon to the crop rectangle (Sutherland-Hodgman; a polygon left with no
  area is dropped) and moves it by (-x0, -y0); detectron2 intersects with shapely instead, which cuts a
  concave polygon crossing the border twice into separate polygons where we keep one whose pieces
  are joined by zero-width runs along the crop border: the same region, the same rasterised mask and
  extent. RLE masks are cut to the crop (a slice of the decoded mask).
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
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from ..structures.masks import InstanceMasks, encode_bitmask
from .errors import DatasetError
from .images import read_rgb
from .keypoints import dataset_flip_indices, transform_keypoints

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


CROP_TYPES = ("relative_range", "relative", "absolute", "absolute_range")
Crop = Tuple[int, int, int, int]  # (y0, x0, h, w) in the original image


def check_crop(crop_type: str, size: Sequence[float]) -> Tuple[float, float]:
    """INPUT.CROP.TYPE / SIZE checked as rethink.config.validate does; ValueError naming the key."""
    if crop_type not in CROP_TYPES:
        raise ValueError(f"INPUT.CROP.TYPE must be one of {list(CROP_TYPES)}, got {crop_type!r}")
    size = tuple(float(v) for v in size)
    if len(size) != 2:
        raise ValueError(f"INPUT.CROP.SIZE needs two values, got {list(size)}")
    if crop_type.startswith("relative") and not all(0 < v <= 1 for v in size):
        raise ValueError(f"INPUT.CROP.SIZE of a {crop_type!r} crop takes fractions in (0, 1], got {list(size)}")
    if crop_type.startswith("absolute") and not all(v.is_integer() and v >= 1 for v in size):
        raise ValueError(f"INPUT.CROP.SIZE of a {crop_type!r} crop takes pixel sizes >= 1, got {list(size)}")
    if crop_type == "absolute_range" and size[0] > size[1]:
        raise ValueError(f"INPUT.CROP.SIZE of an 'absolute_range' crop is (min, max) with min <= max, got {list(size)}")
    return size


def sample_crop(rng: np.random.Generator, h: int, w: int, crop_type: str, size: Tuple[float, float]) -> Crop:
    """(y0, x0, crop_h, crop_w) of detectron2's RandomCrop on an h x w image (see the module doc);
    draws: the size (relative_range: a pair; absolute_range: height then width), then y0, then x0."""
    if crop_type == "relative":
        ch, cw = int(h * size[0] + 0.5), int(w * size[1] + 0.5)
    elif crop_type == "relative_range":
        low = np.asarray(size, dtype=np.float32)
        fh, fw = low + rng.random(2) * (1 - low)
        ch, cw = int(h * fh + 0.5), int(w * fw + 0.5)
    elif crop_type == "absolute":
        ch, cw = min(int(size[0]), h), min(int(size[1]), w)
    elif crop_type == "absolute_range":
        ch = int(rng.integers(min(h, int(size[0])), min(h, int(size[1])) + 1))
        cw = int(rng.integers(min(w, int(size[0])), min(w, int(size[1])) + 1))
    else:
        raise ValueError(f"INPUT.CROP.TYPE must be one of {list(CROP_TYPES)}, got {crop_type!r}")
    ch, cw = max(ch, 1), max(cw, 1)  # a fraction of a tiny image could round to 0 rows
    y0 = int(rng.integers(h - ch + 1))
    x0 = int(rng.integers(w - cw + 1))
    return y0, x0, ch, cw


def _clip_edge(p: np.ndarray, axis: int, bound: float, keep_above: bool) -> np.ndarray:
    """One Sutherland-Hodgman step: the part of closed polygon `p` (n x 2) on one side of
    coordinate[axis] = bound, vertices in order, crossing points inserted."""
    if len(p) == 0:
        return p
    inside = p[:, axis] >= bound if keep_above else p[:, axis] <= bound
    prev = np.roll(p, 1, axis=0)
    prev_inside = np.roll(inside, 1)
    cross = inside != prev_inside
    out = np.empty((len(p), 2, 2))
    keep = np.zeros((len(p), 2), dtype=bool)
    if cross.any():
        a, b = prev[cross], p[cross]
        t = (bound - a[:, axis]) / (b[:, axis] - a[:, axis])
        pt = a + t[:, None] * (b - a)
        pt[:, axis] = bound
        out[cross, 0] = pt
        keep[cross, 0] = True
    out[:, 1] = p
    keep[:, 1] = inside
    return out[keep]


def crop_polygon(poly, crop: Crop):
    """A flat [x0, y0, x1, ...] polygon clipped to the crop rectangle and moved to its origin (float64),
    or None when nothing with an area is left."""
    y0, x0, ch, cw = crop
    p = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
    for axis, bound, above in ((0, x0, True), (0, x0 + cw, False), (1, y0, True), (1, y0 + ch, False)):
        p = _clip_edge(p, axis, float(bound), above)
    if len(p) < 3:
        return None
    x, y = p[:, 0], p[:, 1]
    if np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)) == 0:  # twice the signed area
        return None
    p = p - np.array([x0, y0], dtype=np.float64)
    return p.reshape(-1)


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
               image_id: int, dataset: str, crop: Optional[Crop] = None) -> torch.Tensor:
    """The network input: uint8 [3, new_h, new_w] in `fmt` channel order. Read as RGB, cut to `crop`
    (y0, x0, h, w), resized with PIL bilinear (per channel, so resizing before the channel swap gives
    the same bytes as after), then flip, channel order and HWC -> CHW in one copy."""
    _check_format(fmt)
    im = _open_rgb(path, expected_hw, image_id, dataset)
    if crop is not None:
        y0, x0, ch, cw = crop
        im = im.crop((x0, y0, x0 + cw, y0 + ch))
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


def transform_rle(rle: Dict, newh: int, neww: int, flip: bool, crop: Optional[Crop] = None) -> Dict:
    """An RLE annotation in network-input coordinates: decoded, cut to `crop` (y0, x0, h, w), resized
    to (newh, neww) with PIL NEAREST (detectron2's apply_segmentation), flipped, re-encoded.
    Works on the transposed mask (RLE runs are column-major: the decoded mask is Fortran-ordered, so
    its transpose is C-contiguous for PIL and goes back to the encoder without a copy); PIL's nearest
    resize samples each axis on its own, so resizing the transpose gives the transpose of the resize
    (tested against the direct path)."""
    from pycocotools import mask as mask_util

    mt = _decode(rle).T  # (w, h), C-contiguous
    if crop is not None:
        y0, x0, ch, cw = crop
        mt = np.ascontiguousarray(mt[x0:x0 + cw, y0:y0 + ch])
    if mt.shape != (neww, newh):
        mt = np.asarray(Image.fromarray(mt).resize((newh, neww), Image.NEAREST))
    if flip:
        mt = mt[::-1]
    return mask_util.encode(np.ascontiguousarray(mt).T)


def _item_box(item) -> np.ndarray:
    """XYXY extent of one instance's mask item: polygons' min/max (detectron2's
    PolygonMasks.get_bounding_boxes, float32); an RLE's pixel extent, last pixel + 1 (BitMasks')."""
    from pycocotools import mask as mask_util

    if isinstance(item, dict):
        x, y, bw, bh = mask_util.toBbox(item).tolist()
        return np.array([x, y, x + bw, y + bh], dtype=np.float32)
    if len(item) == 0:
        return np.zeros(4, dtype=np.float32)
    pts = np.concatenate([np.asarray(p, dtype=np.float32).reshape(-1, 2) for p in item])
    return np.concatenate([pts.min(axis=0), pts.max(axis=0)])


def _item_nonempty(item) -> bool:
    """detectron2's PolygonMasks.nonempty (any polygon) / BitMasks.nonempty (any pixel)."""
    from pycocotools import mask as mask_util

    return bool(mask_util.area(item) > 0) if isinstance(item, dict) else len(item) > 0


def _box_nonempty(boxes: np.ndarray) -> np.ndarray:
    return ((boxes[:, 2] - boxes[:, 0]) > 1e-5) & ((boxes[:, 3] - boxes[:, 1]) > 1e-5)


class DatasetMapper:
    """Maps (dataset, image row, generator) to a sample dict; see the module doc."""

    def __init__(self, cfg, is_train: bool):
        self.is_train = is_train
        self.format = cfg.INPUT.FORMAT
        self.mask_on = bool(cfg.MODEL.MASK_ON)
        self.keypoint_on = bool(cfg.MODEL.KEYPOINT_ON)
        self._flip_idx = {}  # dataset name -> its keypoint flip indices
        self.mask_format = cfg.INPUT.MASK_FORMAT
        if self.mask_format not in ("polygon", "bitmask"):
            raise ValueError(f"INPUT.MASK_FORMAT must be 'polygon' or 'bitmask', got {self.mask_format!r}")
        self.crop_type, self.crop_size = None, None
        if is_train:
            self.sizes = tuple(int(s) for s in cfg.INPUT.MIN_SIZE_TRAIN)
            self.sampling = cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
            self.max_size = int(cfg.INPUT.MAX_SIZE_TRAIN)
            if cfg.INPUT.RANDOM_FLIP not in ("horizontal", "none"):
                raise ValueError(f"INPUT.RANDOM_FLIP {cfg.INPUT.RANDOM_FLIP!r} is not supported ('horizontal', 'none')")
            self.flip_prob = 0.5 if cfg.INPUT.RANDOM_FLIP == "horizontal" else 0.0
            sample_short_edge(np.random.default_rng(0), self.sizes, self.sampling)  # validate early
            if cfg.INPUT.CROP.ENABLED:
                self.crop_type = cfg.INPUT.CROP.TYPE
                self.crop_size = check_crop(self.crop_type, cfg.INPUT.CROP.SIZE)
        else:
            self.sizes = (int(cfg.INPUT.MIN_SIZE_TEST),)
            self.sampling = "choice"
            self.max_size = int(cfg.INPUT.MAX_SIZE_TEST)
            self.flip_prob = 0.0

    def draw_crop(self, rng: np.random.Generator, h: int, w: int) -> Optional[Crop]:
        """The crop of an h x w image, (y0, x0, crop_h, crop_w), drawn before :meth:`draw`'s
        choices (detectron2's order); None (and nothing drawn) without INPUT.CROP.ENABLED."""
        if self.crop_type is None:
            return None
        return sample_crop(rng, h, w, self.crop_type, self.crop_size)

    def draw(self, rng: np.random.Generator) -> Tuple[int, bool]:
        """The resize and flip choices of one sample, in a fixed order: short edge, then flip."""
        short = sample_short_edge(rng, self.sizes, self.sampling) if self.is_train else self.sizes[0]
        flip = bool(rng.random() < self.flip_prob) if self.flip_prob > 0 else False
        return short, flip

    def __call__(self, dataset, i: int, rng: np.random.Generator = None) -> Dict[str, object]:
        index = dataset.index
        image_id = index.image_id(i)
        h, w = int(index.a["height"][i]), int(index.a["width"][i])
        path = dataset.image_path(i)
        crop = self.draw_crop(rng, h, w) if rng is not None else None
        short, flip = self.draw(rng) if rng is not None else (self.sizes[0], False)
        src_h, src_w = (crop[2], crop[3]) if crop is not None else (h, w)
        if short > 0:
            newh, neww = resize_shape(src_h, src_w, short, self.max_size)
        else:
            newh, neww = src_h, src_w
        image = load_image(path, self.format, (h, w), (newh, neww), flip, image_id, dataset.name, crop)
        out = {"image": image, "image_id": image_id, "height": h, "width": w, "file_name": path,
               "aug": {"short_edge": short, "flip": flip, "size": (newh, neww), "crop": crop}}
        if self.is_train:
            out["target"] = self._target(dataset, i, h, w, newh, neww, flip, crop)
        return out

    def _target(self, dataset, i, h, w, newh, neww, flip, crop=None) -> Dict[str, object]:
        index = dataset.index
        anns = index.annotations(i, with_segmentation=False)
        rows = np.arange(index.ann_rows(i).start, index.ann_rows(i).stop)
        keep = anns["iscrowd"] == 0
        rows, labels = rows[keep], anns["label"][keep]
        xywh = np.asarray(anns["bbox"][keep], dtype=np.float64).reshape(-1, 4)
        src_h, src_w = h, w
        if crop is not None:
            y0, x0, src_h, src_w = crop
            xywh = xywh - np.array([x0, y0, 0, 0], dtype=np.float64)
        boxes = transform_boxes(xywh, src_h, src_w, newh, neww, flip)
        recompute = crop is not None and self.mask_on  # detectron2: boxes from the cropped masks
        if not recompute:  # drop empty boxes before building their masks
            nonempty = _box_nonempty(boxes)
            rows, boxes, labels = rows[nonempty], boxes[nonempty], labels[nonempty]
        target = {}
        if self.mask_on:
            items = [self._mask_item(dataset, i, int(r), src_h, src_w, newh, neww, flip, crop) for r in rows]
            if recompute:
                boxes = np.stack([_item_box(it) for it in items]).astype(np.float32) if items else boxes
            good = np.array([_item_nonempty(it) for it in items], dtype=bool).reshape(-1)
            if recompute:
                good &= _box_nonempty(boxes)
            rows, boxes, labels = rows[good], boxes[good], labels[good]
            target["masks"] = InstanceMasks([it for it, g in zip(items, good) if g], (newh, neww))
        if self.keypoint_on:
            if flip and dataset.name not in self._flip_idx:
                self._flip_idx[dataset.name] = dataset_flip_indices(dataset)
            kps = transform_keypoints(index.keypoints(rows), (src_h, src_w), (newh, neww), flip,
                                      self._flip_idx.get(dataset.name), crop)
            target["keypoints"] = torch.from_numpy(kps)
        target = {"boxes": torch.from_numpy(np.ascontiguousarray(boxes.reshape(-1, 4), dtype=np.float32)),
                  "labels": torch.from_numpy(labels.astype(np.int64)), **target}
        return target

    def _mask_item(self, dataset, i, r, src_h, src_w, newh, neww, flip, crop):
        """One instance's mask in network-input coordinates: polygons (float64 arrays) or an RLE."""
        index = dataset.index
        seg = index.segmentation(r)
        if seg is None:
            raise DatasetError(f"{dataset.json_file}: annotation id {int(index.a['ann_id'][r])} (image id "
                               f"{index.image_id(i)}) has no segmentation, which MODEL.MASK_ON needs")
        if isinstance(seg, dict):
            return transform_rle(seg, newh, neww, flip, crop)
        if crop is not None:
            seg = [c for c in (crop_polygon(p, crop) for p in seg) if c is not None]
        polys = [transform_polygon(p, src_h, src_w, newh, neww, flip) for p in seg]
        return polys if self.mask_format == "polygon" else polygons_to_rle(polys, newh, neww)
