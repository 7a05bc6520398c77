"""A small generated person-keypoint dataset in COCO's format, standing in for person_keypoints_*2017.json in
tests and smoke runs (no COCO needed): ``synthetic_keypoints_{train,val}``.

Each image (96..160 px a side, a noisy textured background as rethink.data.synthetic's) holds 1..3
non-overlapping stick figures facing the camera, drawn in one colour each: a filled head with two dark eyes,
the torso, arms and legs as thick lines between COCO's 17 named keypoints (nose, eyes, ears, shoulders,
elbows, wrists, hips, knees, ankles; the person's left on the image's right, as for a person facing the
camera). Limb angles are drawn at random. Annotations as COCO's: one category ``person`` (id 1) with the 17
keypoint names and COCO's skeleton; per figure ``keypoints`` [x, y, v] * 17 as integer pixel indices (the
pixel holding the joint), v = 2 (visible) for most, 1 (labelled, not visible) for some, 0 (unlabelled,
x = y = 0) for a few ears; ``num_keypoints``; ``bbox`` the figure's extent; ``segmentation`` its box as a
polygon and ``area`` 0.6 x the box (about what a person covers of its box). Image 1 also holds an iscrowd
region (keypoints all 0) and the last image holds nobody.

Same arguments => same files (numpy ``Generator(PCG64(SeedSequence([seed, 200 + split])))``, PNG output).
"""
import logging
import math
import os
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image, ImageDraw

from ..utils.cache import build_directory_once, cache_root, canonical_json_bytes
from .errors import DatasetNotFoundError
from .keypoints import COCO_PERSON_KEYPOINT_NAMES, COCO_PERSON_SKELETON
from .synthetic import _background, uncompressed_rle

logger = logging.getLogger(__name__)

SYNTHETIC_KEYPOINTS_VERSION = 1
BUILTIN_NUM_IMAGES, BUILTIN_NUM_VAL, BUILTIN_SEED = 96, 24, 0
CATEGORY = {"id": 1, "name": "person", "supercategory": "person", "keypoints": list(COCO_PERSON_KEYPOINT_NAMES),
            "skeleton": [list(p) for p in COCO_PERSON_SKELETON]}
# limbs drawn as lines (0-based keypoint indices): arms, shoulders, torso sides, hips, legs
_LIMBS = ((5, 7), (7, 9), (6, 8), (8, 10), (5, 6), (5, 11), (6, 12), (11, 12), (11, 13), (13, 15), (12, 14), (14, 16))


def _figure(rng, x0: float, y0: float, w: float, h: float) -> np.ndarray:
    """[17, 2] continuous joint positions of one stick figure of height `h` centred in the box (x0, y0, w, h)
    (w >= 0.9 h holds every pose), limbs at random angles."""
    cx = x0 + w / 2
    pts = np.zeros((17, 2))

    def at(u, v):  # u: across from the centre line in units of h (+ = the person's left), v: down in units of h
        return np.array([cx + u * h, y0 + v * h])

    pts[0] = at(0, 0.09)
    pts[1], pts[2] = at(0.035, 0.075), at(-0.035, 0.075)
    pts[3], pts[4] = at(0.07, 0.09), at(-0.07, 0.09)
    pts[5], pts[6] = at(0.13, 0.22), at(-0.13, 0.22)
    pts[11], pts[12] = at(0.08, 0.56), at(-0.08, 0.56)
    for side, (s, e, wr) in ((1, (5, 7, 9)), (-1, (6, 8, 10))):  # arms: angles from straight down, outwards
        a1 = rng.uniform(-0.3, 1.6)
        a2 = a1 + rng.uniform(-0.8, 0.8)
        pts[e] = pts[s] + 0.17 * h * np.array([side * math.sin(a1), math.cos(a1)])
        pts[wr] = pts[e] + 0.15 * h * np.array([side * math.sin(a2), math.cos(a2)])
    for side, (s, k, a) in ((1, (11, 13, 15)), (-1, (12, 14, 16))):  # legs
        a1 = rng.uniform(-0.1, 0.5)
        a2 = a1 + rng.uniform(-0.5, 0.3)
        pts[k] = pts[s] + 0.2 * h * np.array([side * math.sin(a1), math.cos(a1)])
        pts[a] = pts[k] + 0.19 * h * np.array([side * math.sin(a2), math.cos(a2)])
    return pts


def _draw(draw: ImageDraw.ImageDraw, pts: np.ndarray, h: float, colour) -> None:
    width = max(2, int(round(h / 22)))
    for a, b in _LIMBS:
        draw.line([tuple(pts[a]), tuple(pts[b])], fill=colour, width=width)
    mid_sh, mid_hip = (pts[5] + pts[6]) / 2, (pts[11] + pts[12]) / 2
    draw.line([tuple(mid_sh), tuple(mid_hip)], fill=colour, width=width)
    r = 0.1 * h
    hx, hy = pts[0]
    draw.ellipse([hx - r, hy - r, hx + r, hy + r], fill=colour)
    for e in (1, 2):
        ex, ey = pts[e]
        draw.ellipse([ex - 1, ey - 1, ex + 1, ey + 1], fill=(0, 0, 0))
    for j in (9, 10, 15, 16):  # hands and feet as dots: the extremities are visible at small sizes
        x, y = pts[j]
        draw.ellipse([x - width, y - width, x + width, y + width], fill=colour)


def _make_split(out_dir: str, split: str, num_images: int, seed: int, split_idx: int, first_image_id: int,
                first_ann_id: int) -> str:
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 200 + split_idx])))
    img_dir = os.path.join(out_dir, split)
    os.makedirs(img_dir, exist_ok=True)
    images, anns, ann_id = [], [], first_ann_id
    for i in range(num_images):
        image_id = first_image_id + 2 * i
        w, h = (int(v) for v in rng.integers(96, 161, size=2))
        pil = Image.fromarray(_background(rng, h, w))
        draw = ImageDraw.Draw(pil)
        n = 0 if (i == num_images - 1 and num_images > 1) else int(rng.integers(1, 4))
        taken: List[Tuple[float, float, float, float]] = []
        for k in range(n + (1 if i == 1 else 0)):
            crowd = i == 1 and k == n
            for _ in range(30):
                fh = rng.uniform(0.45, 0.9) * h
                fw = 0.9 * fh
                if fw > w - 4:
                    continue
                fx, fy = rng.uniform(2, w - fw - 2), rng.uniform(2, h - fh - 2)
                box = (fx, fy, fx + fw, fy + fh)
                if all(box[2] + 2 < t[0] or t[2] + 2 < box[0] or box[3] + 2 < t[1] or t[3] + 2 < box[1] for t in taken):
                    break
            else:
                continue
            taken.append(box)
            colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
            if crowd:  # a crowd region: a few small figures, one iscrowd annotation without keypoints
                mask = np.zeros((h, w), dtype=np.uint8)
                for c in range(3):
                    sub = _figure(rng, fx + c * fw / 3, fy + fh / 2, fw / 3, fh / 3)
                    _draw(draw, sub, fh / 3, colour)
                mask[int(fy):int(math.ceil(fy + fh)), int(fx):int(math.ceil(fx + fw))] = 1
                anns.append({"id": ann_id, "image_id": image_id, "category_id": 1, "iscrowd": 1,
                             "bbox": [round(fx, 2), round(fy, 2), round(fw, 2), round(fh, 2)],
                             "segmentation": uncompressed_rle(mask), "area": float(mask.sum()),
                             "keypoints": [0] * 51, "num_keypoints": 0})
                ann_id += 1
                continue
            pts = _figure(rng, fx, fy, fw, fh)
            _draw(draw, pts, fh, colour)
            v = np.where(rng.random(17) < 0.1, 1, 2)
            v[[3, 4]] = np.where(rng.random(2) < 0.3, 0, v[[3, 4]])
            kps = [[int(math.floor(x)), int(math.floor(y)), int(vis)] if vis else [0, 0, 0]
                   for (x, y), vis in zip(pts, v)]
            r = 0.1 * fh
            xs = np.concatenate([pts[:, 0], [pts[0, 0] - r, pts[0, 0] + r]])
            ys = np.concatenate([pts[:, 1], [pts[0, 1] - r]])
            m = max(2, int(round(fh / 22))) + 1  # the line width and the hands' and feet's dots
            bx0, by0 = max(0.0, xs.min() - m), max(0.0, ys.min() - 1)
            bx1, by1 = min(float(w), xs.max() + m), min(float(h), ys.max() + m)
            bbox = [round(bx0, 2), round(by0, 2), round(bx1 - bx0, 2), round(by1 - by0, 2)]
            anns.append({"id": ann_id, "image_id": image_id, "category_id": 1, "iscrowd": 0, "bbox": bbox,
                         "segmentation": [[bbox[0], bbox[1], bbox[0] + bbox[2], bbox[1], bbox[0] + bbox[2],
                                           bbox[1] + bbox[3], bbox[0], bbox[1] + bbox[3]]],
                         "area": round(0.6 * bbox[2] * bbox[3], 2), "keypoints": [c for kp in kps for c in kp],
                         "num_keypoints": int((v > 0).sum())})
            ann_id += 1
        fname = f"{image_id:06d}.png"
        pil.save(os.path.join(img_dir, fname), format="PNG", compress_level=1)
        images.append({"id": image_id, "file_name": fname, "height": h, "width": w})
    data = {"info": {"description": f"rethink synthetic stick figures, {split} split, seed {seed}"},
            "categories": [CATEGORY], "images": images, "annotations": anns}
    os.makedirs(os.path.join(out_dir, "annotations"), exist_ok=True)
    path = os.path.join(out_dir, "annotations", f"person_keypoints_{split}.json")
    with open(path, "wb") as f:
        f.write(canonical_json_bytes(data))
    return path


def make_synthetic_keypoints(out_dir: str, num_images: int = BUILTIN_NUM_IMAGES, seed: int = 0,
                             num_val: int = BUILTIN_NUM_VAL) -> Dict[str, str]:
    """Write ``annotations/person_keypoints_{train,val}.json`` and ``{train,val}/*.png`` under `out_dir`;
    returns {"train", "val": json paths, "image_root_train", "image_root_val"}."""
    if num_images < 1 or num_val < 1:
        raise ValueError("make_synthetic_keypoints: num_images and num_val must be >= 1")
    out_dir = os.path.abspath(out_dir)
    return {"train": _make_split(out_dir, "train", num_images, seed, 0, 1, 1),
            "val": _make_split(out_dir, "val", num_val, seed, 1, 50001, 500001),
            "image_root_train": os.path.join(out_dir, "train"), "image_root_val": os.path.join(out_dir, "val")}


def ensure_synthetic_keypoints(create: bool = True) -> Dict[str, str]:
    """The files behind ``synthetic_keypoints_{train,val}`` (96 + 24 images, seed 0) in
    ``$RETHINK_CACHE/synthetic/``; made once, by one process, published by rename."""
    d = os.path.join(cache_root(), "synthetic", f"keypoints_v{SYNTHETIC_KEYPOINTS_VERSION}_n{BUILTIN_NUM_IMAGES}"
                                                f"_v{BUILTIN_NUM_VAL}_s{BUILTIN_SEED}")
    if not os.path.isfile(os.path.join(d, "DONE")) and not create:
        raise DatasetNotFoundError(f"synthetic keypoint dataset not generated yet: {d}")
    build_directory_once(d, lambda tmp: make_synthetic_keypoints(tmp, BUILTIN_NUM_IMAGES, BUILTIN_SEED,
                                                                 BUILTIN_NUM_VAL), "the synthetic keypoint dataset")
    return {"train": os.path.join(d, "annotations", "person_keypoints_train.json"),
            "val": os.path.join(d, "annotations", "person_keypoints_val.json"),
            "image_root_train": os.path.join(d, "train"), "image_root_val": os.path.join(d, "val")}
