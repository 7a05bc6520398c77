"""A small generated PASCAL VOC tree (devkit layout, XML annotations, JPEG images) standing in for VOC in
tests: ``VOC2007/`` with ``trainval`` and ``test``, ``VOC2012/`` with ``train`` and ``val``, so the
built-in names (``voc_2007_trainval`` + ``voc_2012_train`` -> ``voc_2012_val``, the paper's split) resolve
to it when the datasets root points at `out_dir`.

Objects are filled shapes on rethink.data.synthetic's textured backgrounds, one shape per class:
``aeroplane`` triangles, ``bottle`` ellipses, ``bus`` rectangles (3 of the 20 VOC classes: the others have
no ground truth). Boxes are VOC's 1-based inclusive pixel indices. Every image has 1-3 objects; about one
object in eight, the smallest ones, is marked ``difficult``; ``truncated`` and ``pose`` are written as VOC
does. Ids: ``000001``... for 2007, ``2008_000001``... for 2012. Same arguments => same files (JPEG bytes
depend on the Pillow version).
"""
import math
import os
from typing import Dict, List, Sequence, Tuple
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image, ImageDraw

from .synthetic import _background, _place, _shape_polygon

#: VOC class -> the synthetic shape it is drawn as (rethink.data.synthetic's category ids)
CLASS_SHAPES = {"aeroplane": 7, "bottle": 3, "bus": 1}
DEFAULT_SPLITS = {("VOC2007", "trainval"): 24, ("VOC2007", "test"): 12, ("VOC2012", "train"): 24,
                  ("VOC2012", "val"): 16}


def _xml(voc_id: str, folder: str, w: int, h: int, objects: List[dict]) -> str:
    parts = [f"<annotation>\n\t<folder>{folder}</folder>\n\t<filename>{voc_id}.jpg</filename>\n",
             f"\t<size>\n\t\t<width>{w}</width>\n\t\t<height>{h}</height>\n\t\t<depth>3</depth>\n\t</size>\n",
             "\t<segmented>0</segmented>\n"]
    for o in objects:
        b = o["box"]
        parts.append(f"\t<object>\n\t\t<name>{escape(o['name'])}</name>\n\t\t<pose>Unspecified</pose>\n"
                     f"\t\t<truncated>0</truncated>\n\t\t<difficult>{o['difficult']}</difficult>\n"
                     f"\t\t<bndbox>\n\t\t\t<xmin>{b[0]}</xmin>\n\t\t\t<ymin>{b[1]}</ymin>\n"
                     f"\t\t\t<xmax>{b[2]}</xmax>\n\t\t\t<ymax>{b[3]}</ymax>\n\t\t</bndbox>\n\t</object>\n")
    parts.append("</annotation>\n")
    return "".join(parts)


def _make_split(folder_dir: str, folder: str, split: str, ids: Sequence[str], rng, min_size: int,
                max_size: int) -> None:
    names = sorted(CLASS_SHAPES)
    for voc_id in ids:
        w, h = (int(v) for v in rng.integers(min_size, max_size + 1, size=2))
        pil = Image.fromarray(_background(rng, h, w))
        draw = ImageDraw.Draw(pil)
        taken: List[Tuple[float, float, float, float]] = []
        objects = []
        for _ in range(int(rng.integers(1, 4))):
            box = _place(rng, h, w, taken, min_side=max(12, min(h, w) // 5))
            if box is None:
                break
            taken.append(box)
            name = names[int(rng.integers(len(names)))]
            poly = _shape_polygon(rng, CLASS_SHAPES[name], box)
            draw.polygon(list(zip(poly[0::2], poly[1::2])), fill=tuple(int(v) for v in rng.integers(0, 256, size=3)))
            xs, ys = poly[0::2], poly[1::2]
            # pixel indices covered, 1-based and inclusive as in VOC
            vbox = [math.floor(min(xs)) + 1, math.floor(min(ys)) + 1, min(w, math.ceil(max(xs))),
                    min(h, math.ceil(max(ys)))]
            objects.append({"name": name, "box": vbox, "area": (vbox[2] - vbox[0]) * (vbox[3] - vbox[1]),
                            "difficult": 0})
        if len(objects) > 1 and rng.random() < 0.35:  # the smallest of several objects: difficult
            min(objects, key=lambda o: o["area"])["difficult"] = 1
        pil.save(os.path.join(folder_dir, "JPEGImages", f"{voc_id}.jpg"), format="JPEG", quality=95)
        with open(os.path.join(folder_dir, "Annotations", f"{voc_id}.xml"), "w") as f:
            f.write(_xml(voc_id, folder, w, h, objects))


def make_synthetic_voc(out_dir: str, splits: Dict[Tuple[str, str], int] = None, seed: int = 0,
                       min_size: int = 64, max_size: int = 128) -> Dict[str, str]:
    """Write the tree under `out_dir` (``{(folder, split): images}``, default :data:`DEFAULT_SPLITS`).
    Returns {folder: its path}."""
    splits = dict(DEFAULT_SPLITS if splits is None else splits)
    out_dir = os.path.abspath(out_dir)
    counters: Dict[str, int] = {}
    folders = {}
    for k, ((folder, split), n) in enumerate(sorted(splits.items())):
        folder_dir = folders.setdefault(folder, os.path.join(out_dir, folder))
        for sub in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main")):
            os.makedirs(os.path.join(folder_dir, sub), exist_ok=True)
        start = counters.get(folder, 0)
        counters[folder] = start + n
        prefix = "" if folder == "VOC2007" else "2008_"
        ids = [f"{prefix}{start + i + 1:06d}" for i in range(n)]
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, k])))
        _make_split(folder_dir, folder, split, ids, rng, min_size, max_size)
        with open(os.path.join(folder_dir, "ImageSets", "Main", f"{split}.txt"), "w") as f:
            f.write("".join(i + "\n" for i in ids))
    return folders
