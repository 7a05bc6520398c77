"""Small deterministic synthetic datasets for tests and demos (no COCO needed).

* :func:`make_synthetic_coco`: a COCO-format instance dataset (train and val splits): images of
  64..160 px per side with varied aspect ratios, a noisy textured background and non-overlapping filled
  shapes of 3 classes with non-contiguous category ids (1 rectangle, 3 ellipse, 7 triangle, listed
  out of order in the json). Shapes are drawn from the very polygons that annotate them. Also:
  one instance given as a compressed RLE (image 0), one iscrowd instance as an uncompressed RLE
  (image 1), one non-crowd uncompressed RLE (image 2), one instance made of two polygons (image 3) and
  one image without annotations (the last one).
* :func:`make_synthetic_classification`: an ImageFolder tree (``train/<class>/*.png``,
  ``val/<class>/*.png``) of other shapes (cross, hexagon, ring, star; or any of SCENE_CLASSES, also
  several objects per image at the detection set's object scale) on the same backgrounds, standing
  in for ImageNet. Its classes are never the detection set's.

Same arguments => same files (numpy ``Generator(PCG64(SeedSequence([seed, split])))``; PNG output is
byte-identical, JPEG depends on the Pillow version). ~100 images take well under a few seconds.
"""
import logging
import math
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

from ..utils.cache import build_directory_once, cache_root, canonical_json_bytes
from .errors import DatasetNotFoundError

logger = logging.getLogger(__name__)

CATEGORIES = [  # listed out of id order on purpose
    {"id": 7, "name": "triangle", "supercategory": "shape"},
    {"id": 1, "name": "rectangle", "supercategory": "shape"},
    {"id": 3, "name": "ellipse", "supercategory": "shape"},
]
CLASSIFICATION_CLASSES = ("cross", "hexagon", "ring", "star")  # the default set (the demo's ImageNet stand-in)
# every shape make_synthetic_classification can draw (none of them a detection class)
SCENE_CLASSES = ("arrow", "chevron", "crescent", "cross", "hexagon", "pentagon", "ring", "star")
SYNTHETIC_VERSION = 1
BUILTIN_NUM_IMAGES = 96  # synthetic_coco_{train,val}: 96 + 24 images (tests, smoke runs)
BUILTIN_SEED = 0
# synthetic_demo_{train,val}: the same generator, 8x the training images and a val split of 96 (the demo: one
# evaluation is not decided by a handful of objects)
DEMO_NUM_IMAGES, DEMO_NUM_VAL = 768, 96


def _background(rng, h: int, w: int) -> np.ndarray:
    """Low-frequency colour gradient + stripes texture + pixel noise, uint8 HxWx3."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c0, c1 = rng.uniform(40, 215, size=3), rng.uniform(40, 215, size=3)
    t = (xx / max(w - 1, 1) * rng.uniform(-1, 1) + yy / max(h - 1, 1) * rng.uniform(-1, 1) + 1) / 2
    img = c0 + (c1 - c0) * np.clip(t, 0, 1)[..., None]
    f, ang = rng.uniform(0.1, 0.5), rng.uniform(0, math.pi)
    img += 12 * np.sin(f * (xx * math.cos(ang) + yy * math.sin(ang)))[..., None]
    img += rng.normal(0, 10, size=(h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _shape_polygon(rng, cat_id: int, box: Tuple[float, float, float, float]) -> List[float]:
    x0, y0, x1, y1 = box
    if cat_id == 1:  # rectangle
        pts = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    elif cat_id == 3:  # ellipse, 24 vertices
        cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
        pts = [(cx + rx * math.cos(2 * math.pi * k / 24), cy + ry * math.sin(2 * math.pi * k / 24)) for k in range(24)]
    else:  # triangle
        apex = rng.uniform(x0, x1)
        pts = [(apex, y0), (x1, y1), (x0, y1)]
    return [round(float(v), 2) for p in pts for v in p]


def _poly_mask(polys: List[List[float]], h: int, w: int) -> np.ndarray:
    m = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(m)
    for p in polys:
        d.polygon(list(zip(p[0::2], p[1::2])), fill=1)
    return np.asarray(m, dtype=np.uint8)


def uncompressed_rle(mask: np.ndarray) -> Dict[str, object]:
    """COCO uncompressed RLE (column-major run lengths starting with a 0-run)."""
    flat = np.asarray(mask, dtype=np.uint8).flatten(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        runs = [0] + runs
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(r) for r in runs]}


def compressed_rle(mask: np.ndarray) -> Dict[str, object]:
    from pycocotools import mask as mask_util

    r = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in r["size"]], "counts": r["counts"].decode("ascii")}


def _place(rng, h, w, taken, min_side=12, tries=30):
    """A box not overlapping `taken` (with a 2 px gap), or None."""
    for _ in range(tries):
        bw = rng.uniform(min_side, max(min_side + 1, 0.5 * w))
        bh = rng.uniform(min_side, max(min_side + 1, 0.5 * h))
        x0, y0 = rng.uniform(1, w - bw - 1), rng.uniform(1, h - bh - 1)
        b = (x0, y0, x0 + bw, y0 + bh)
        if all(b[2] + 2 < t[0] or t[2] + 2 < b[0] or b[3] + 2 < t[1] or t[3] + 2 < b[1] for t in taken):
            return b
    return None


def _make_split(out_dir: str, split: str, num_images: int, seed: int, split_idx: int, image_format: str,
                min_size: int, max_size: int, first_image_id: int, first_ann_id: int) -> str:
    from pycocotools import mask as mask_util

    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, split_idx])))
    img_dir = os.path.join(out_dir, split)
    os.makedirs(img_dir, exist_ok=True)
    images, anns = [], []
    ann_id = first_ann_id
    cat_ids = [c["id"] for c in CATEGORIES]
    ext = {"png": "png", "jpg": "jpg", "jpeg": "jpg"}[image_format.lower()]
    for i in range(num_images):
        image_id = first_image_id + 3 * i  # non-contiguous ids
        w, h = (int(v) for v in rng.integers(min_size, max_size + 1, size=2))
        img = _background(rng, h, w)
        pil = Image.fromarray(img)
        draw = ImageDraw.Draw(pil)
        last = i == num_images - 1 and num_images > 1
        n_inst = 0 if last else int(rng.integers(1, 5))
        taken = []
        if i == 1:  # a crowd: a cluster of small ellipses, one iscrowd instance as uncompressed RLE
            box = _place(rng, h, w, taken, min_side=20)
            if box is not None:
                taken.append(box)
                x0, y0, x1, y1 = box
                colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
                blobs = []
                for _ in range(5):
                    cx, cy = rng.uniform(x0 + 3, x1 - 3), rng.uniform(y0 + 3, y1 - 3)
                    r = rng.uniform(2, 4)
                    blobs.append(_shape_polygon(rng, 3, (cx - r, cy - r, cx + r, cy + r)))
                for p in blobs:
                    draw.polygon(list(zip(p[0::2], p[1::2])), fill=colour)
                mask = _poly_mask(blobs, h, w)
                ys, xs = np.nonzero(mask)
                anns.append({"id": ann_id, "image_id": image_id, "category_id": 3, "iscrowd": 1,
                             "bbox": [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
                                      float(ys.max() - ys.min() + 1)],
                             "segmentation": uncompressed_rle(mask), "area": float(mask.sum())})
                ann_id += 1
        for k in range(n_inst):
            box = _place(rng, h, w, taken)
            if box is None:
                break
            taken.append(box)
            cat = int(cat_ids[rng.integers(len(cat_ids))])
            colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
            if i == 3 and k == 0:  # one instance made of two polygons: a rectangle cut by a vertical gap
                cat = 1
                x0, y0, x1, y1 = box
                mid = (x0 + x1) / 2
                polys = [_shape_polygon(rng, 1, (x0, y0, mid - 2, y1)), _shape_polygon(rng, 1, (mid + 2, y0, x1, y1))]
            else:
                polys = [_shape_polygon(rng, cat, box)]
            for p in polys:
                draw.polygon(list(zip(p[0::2], p[1::2])), fill=colour)
            xs = [v for p in polys for v in p[0::2]]
            ys = [v for p in polys for v in p[1::2]]
            bbox = [round(min(xs), 2), round(min(ys), 2), round(max(xs) - min(xs), 2), round(max(ys) - min(ys), 2)]
            ann = {"id": ann_id, "image_id": image_id, "category_id": cat, "bbox": bbox, "iscrowd": 0}
            if k == 0 and i in (0, 2):  # RLE-encoded non-crowd instances: compressed (0), uncompressed (2)
                mask = _poly_mask(polys, h, w)
                ann["segmentation"] = compressed_rle(mask) if i == 0 else uncompressed_rle(mask)
                ann["area"] = float(mask.sum())
            else:
                ann["segmentation"] = polys
                ann["area"] = round(float(mask_util.area(mask_util.merge(mask_util.frPyObjects(polys, h, w)))), 2)
            anns.append(ann)
            ann_id += 1
        fname = f"{image_id:06d}.{ext}"
        if ext == "png":
            pil.save(os.path.join(img_dir, fname), format="PNG", compress_level=1)
        else:
            pil.save(os.path.join(img_dir, fname), format="JPEG", quality=92)
        images.append({"id": image_id, "file_name": fname, "height": h, "width": w, "license": 1})
    data = {
        "info": {"description": f"rethink synthetic shapes, {split} split, seed {seed}", "version": "1.0",
                 "year": 2024},
        "licenses": [{"id": 1, "name": "CC0", "url": ""}],
        "categories": CATEGORIES,
        "images": images,
        "annotations": anns,
    }
    ann_dir = os.path.join(out_dir, "annotations")
    os.makedirs(ann_dir, exist_ok=True)
    path = os.path.join(ann_dir, f"instances_{split}.json")
    with open(path, "wb") as f:
        f.write(canonical_json_bytes(data))
    return path


def make_synthetic_coco(out_dir: str, num_images: int = 64, seed: int = 0, num_val: Optional[int] = None,
                        image_format: str = "png", min_size: int = 64, max_size: int = 160) -> Dict[str, str]:
    """Write a synthetic COCO instance dataset under `out_dir`:
    ``annotations/instances_{train,val}.json``, ``train/*.png``, ``val/*.png``. `num_val` defaults to
    max(4, num_images // 4). Returns {"train", "val": json paths, "image_root_train", "image_root_val"}."""
    if num_images < 1:
        raise ValueError("make_synthetic_coco: num_images must be >= 1")
    num_val = max(4, num_images // 4) if num_val is None else num_val
    out_dir = os.path.abspath(out_dir)
    train = _make_split(out_dir, "train", num_images, seed, 0, image_format, min_size, max_size, 1, 1)
    val = _make_split(out_dir, "val", num_val, seed, 1, image_format, min_size, max_size, 100001, 1000001)
    return {"train": train, "val": val, "image_root_train": os.path.join(out_dir, "train"),
            "image_root_val": os.path.join(out_dir, "val")}


def ensure_builtin_synthetic(create: bool = True, num_images: Optional[int] = None,
                             num_val: Optional[int] = None) -> Dict[str, str]:
    """The files behind ``synthetic_coco_train``/``synthetic_coco_val`` (`num_images` default
    BUILTIN_NUM_IMAGES = 96 + `num_val` default a quarter of that, seed 0; the demo's pair passes its own
    sizes) in ``$RETHINK_CACHE/synthetic/``; made once, by one process, published by rename."""
    num_images = BUILTIN_NUM_IMAGES if num_images is None else num_images
    name = f"coco_v{SYNTHETIC_VERSION}_n{num_images}" + ("" if num_val is None else f"_v{num_val}")
    d = os.path.join(cache_root(), "synthetic", f"{name}_s{BUILTIN_SEED}")
    if not os.path.isfile(os.path.join(d, "DONE")) and not create:
        raise DatasetNotFoundError(f"synthetic dataset not generated yet: {d}")
    build_directory_once(d, lambda tmp: make_synthetic_coco(tmp, num_images, BUILTIN_SEED, num_val=num_val),
                         "the synthetic COCO dataset")
    return {"train": os.path.join(d, "annotations", "instances_train.json"),
            "val": os.path.join(d, "annotations", "instances_val.json"),
            "image_root_train": os.path.join(d, "train"), "image_root_val": os.path.join(d, "val")}


# ------------------------------------------------------------------------------------------------
# classification (ImageNet stand-in)
# ------------------------------------------------------------------------------------------------
def _unit_shape(cls: str, rng) -> List[Tuple[List[Tuple[float, float]], int]]:
    """(polygon in [-1, 1]^2, fill 255 or 0) pairs that draw `cls` into a mask, in order; 0 cuts a hole."""
    def circle(cx, cy, r, n=32):
        return [(cx + r * math.cos(2 * math.pi * k / n), cy + r * math.sin(2 * math.pi * k / n)) for k in range(n)]

    def regular(n, phase=-math.pi / 2):
        return [(math.cos(phase + 2 * math.pi * k / n), math.sin(phase + 2 * math.pi * k / n)) for k in range(n)]

    if cls == "cross":
        t = 0.35
        return [([(-1, -t), (1, -t), (1, t), (-1, t)], 255), ([(-t, -1), (t, -1), (t, 1), (-t, 1)], 255)]
    if cls == "hexagon":
        return [(regular(6, 0.0), 255)]
    if cls == "pentagon":
        return [(regular(5), 255)]
    if cls == "star":
        return [([((1 if k % 2 == 0 else 0.45) * math.cos(k * math.pi / 5 - math.pi / 2),
                   (1 if k % 2 == 0 else 0.45) * math.sin(k * math.pi / 5 - math.pi / 2)) for k in range(10)], 255)]
    if cls == "ring":
        return [(circle(0, 0, 1), 255), (circle(0, 0, rng.uniform(0.45, 0.7)), 0)]
    if cls == "crescent":
        return [(circle(0, 0, 1), 255), (circle(rng.uniform(0.35, 0.6), 0, rng.uniform(0.75, 0.9)), 0)]
    if cls == "arrow":
        return [([(-1, -0.3), (0.1, -0.3), (0.1, -0.8), (1, 0), (0.1, 0.8), (0.1, 0.3), (-1, 0.3)], 255)]
    if cls == "chevron":
        return [([(-1, -1), (0, -0.2), (1, -1), (1, -0.3), (0, 0.6), (-1, -0.3)], 255)]
    raise ValueError(f"unknown classification shape {cls!r}; known: {', '.join(SCENE_CLASSES)}")


def _draw_object(pil: Image.Image, rng, cls: str, box: Tuple[float, float, float, float],
                 max_rot: float = math.pi) -> None:
    """Draw one `cls` object, rotated by up to +-max_rot, filling `box` (x0, y0, x1, y1), in one random colour."""
    parts = _unit_shape(cls, rng)
    rot = rng.uniform(-max_rot, max_rot)
    c, s = math.cos(rot), math.sin(rot)
    rotated = [([(x * c - y * s, x * s + y * c) for x, y in pts], fill) for pts, fill in parts]
    xs = [x for pts, fill in rotated if fill for x, _ in pts]
    ys = [y for pts, fill in rotated if fill for _, y in pts]
    x0, y0, x1, y1 = box
    sx, sy = (x1 - x0) / (max(xs) - min(xs)), (y1 - y0) / (max(ys) - min(ys))
    mask = Image.new("L", pil.size, 0)
    draw = ImageDraw.Draw(mask)
    for pts, fill in rotated:
        draw.polygon([(x0 + (x - min(xs)) * sx, y0 + (y - min(ys)) * sy) for x, y in pts], fill=fill)
    pil.paste(tuple(int(v) for v in rng.integers(0, 256, size=3)), mask=mask)


def make_synthetic_classification(out_dir: str, num_per_class: int = 16, seed: int = 0,
                                  num_val_per_class: Optional[int] = None, size: int = 64,
                                  classes: Optional[Sequence[str]] = None,
                                  objects: Tuple[int, int] = (1, 1), max_rot: float = math.pi,
                                  aspect: float = 1.0) -> Dict[str, object]:
    """ImageFolder tree ``<out_dir>/{train,val}/<class>/<k>.png`` of `size` x `size` images.

    Default: one object per image of the classes cross, hexagon, ring, star (CLASSIFICATION_CLASSES),
    0.4..0.8 of the image across. With ``objects=(lo, hi)`` other than (1, 1) an image holds lo..hi
    objects of its class, placed without overlap at the detection set's object scale (sides
    12 px..half the image, as :func:`make_synthetic_coco`), so the classifier sees the detection
    images' backgrounds, edges and object sizes but none of their classes. `classes`: any of
    SCENE_CLASSES. Returns {"train": dir, "val": dir, "classes": [...]}."""
    classes = list(CLASSIFICATION_CLASSES if classes is None else classes)
    if set(classes) & {c["name"] for c in CATEGORIES}:
        raise ValueError(f"classification classes must differ from the detection classes: {classes}")
    num_val_per_class = max(2, num_per_class // 4) if num_val_per_class is None else num_val_per_class
    out_dir = os.path.abspath(out_dir)
    for split_idx, (split, n) in enumerate((("train", num_per_class), ("val", num_val_per_class))):
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 100 + split_idx])))
        for cls in classes:
            d = os.path.join(out_dir, split, cls)
            os.makedirs(d, exist_ok=True)
            for k in range(n):
                pil = Image.fromarray(_background(rng, size, size))
                if tuple(objects) == (1, 1):
                    side = rng.uniform(0.4, 0.8) * size
                    ar = math.exp(rng.uniform(-math.log(aspect), math.log(aspect)))
                    sw, sh = side * min(1.0, ar), side * min(1.0, 1 / ar)
                    x0, y0 = rng.uniform(0, size - sw), rng.uniform(0, size - sh)
                    _draw_object(pil, rng, cls, (x0, y0, x0 + sw, y0 + sh), max_rot)
                else:
                    taken = []
                    for _ in range(int(rng.integers(objects[0], objects[1] + 1))):
                        box = _place(rng, size, size, taken)
                        if box is None:
                            break
                        taken.append(box)
                        _draw_object(pil, rng, cls, box, max_rot)
                pil.save(os.path.join(d, f"{k:05d}.png"), format="PNG", compress_level=1)
    return {"train": os.path.join(out_dir, "train"), "val": os.path.join(out_dir, "val"), "classes": classes}
