"""COCO instance annotations, parsed once into a compact columnar cache of ``.npy`` files and opened
with ``np.load(mmap_mode="r")``, so the ranks on a node share one copy in the page cache and a
COCO-scale rank is ready in well under a second instead of holding its own Python dicts.

Cache layout (``$RETHINK_CACHE/coco_index/v{FORMAT}-{sha256 of the json[:32]}/``; built by one process
under ``fcntl.flock`` on ``<dir>.lock`` into a temporary folder, published by ``rename``):

=====================  =====================  =================================================
file                   shape, dtype           content
=====================  =====================  =================================================
meta.json                                     source path/sha256/size, counts, categories,
                                              counts of what was dropped (written last)
image_id.npy           [I] int64              sorted image ids (row i = image i)
file_name_blob.npy     [B] uint8              utf-8 file names, concatenated
file_name_off.npy      [I+1] int64            name i = blob[off[i]:off[i+1]]
height.npy, width.npy  [I] int32              original image size from the json
ann_start.npy          [I] int64              annotations of image i: rows start..start+count
ann_count.npy          [I] int32
ann_id.npy             [A] int64              kept annotations, sorted by (image, annotation id)
bbox.npy               [A,4] float32          XYWH as in the json (not clipped)
category_id.npy        [A] int32              COCO category id
label.npy              [A] int32              contiguous label 1..K (sorted category ids)
iscrowd.npy            [A] uint8
area.npy               [A] float32            json "area" (NaN where absent)
seg_kind.npy           [A] uint8              0 none, 1 polygons, 2 RLE
seg_start.npy          [A] int64              first polygon (kind 1) / RLE row (kind 2)
seg_count.npy          [A] int32              number of polygons (kind 1) / 1 (kind 2)
poly_off.npy           [P+1] int64            polygon p = poly_xy[off[p]:off[p+1]] (x0,y0,x1,..)
poly_xy.npy            [C] float32
rle_off.npy            [R+1] int64            RLE r counts = rle_counts[off[r]:off[r+1]]
rle_counts.npy         [Cb] uint8             compressed COCO RLE strings (uncompressed
                                              lists are converted with pycocotools)
rle_size.npy           [R,2] int32            (h, w)
keypoints.npy          [A,3K] float32         COCO keypoints x, y, v as in the json (integer pixel
                                              indices; zeros where absent); K = 0 in a json without
                                              keypoints, else the annotations' common K
=====================  =====================  =================================================

Validation at build (a :class:`DatasetError` naming the file and the id): malformed JSON (with the
decoder's line/column/char), missing or mistyped fields, duplicate image/annotation/category ids, an
annotation on an unknown image id or with an unknown category id, non-finite numbers, an RLE whose
size differs from its image or whose counts do not sum to h*w. Dropped and counted (logged once per
dataset): polygons with fewer than 3 points or an odd number of coordinates (the instance stays if it
has another valid polygon), instances left with no valid polygon, and boxes with w or h <= 0 after
clipping to the image.
"""
import itertools
import json
import logging
import math
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..utils.cache import cache_root, file_lock, file_sha256
from ..utils.logger import log_once
from .errors import DatasetError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: keypoints
SEG_NONE, SEG_POLYGON, SEG_RLE = 0, 1, 2
ARRAYS = (
    "image_id", "file_name_blob", "file_name_off", "height", "width", "ann_start", "ann_count",
    "ann_id", "bbox", "category_id", "label", "iscrowd", "area", "seg_kind", "seg_start", "seg_count",
    "poly_off", "poly_xy", "rle_off", "rle_counts", "rle_size", "keypoints",
)


# ------------------------------------------------------------------------------------------------
# RLE helpers
# ------------------------------------------------------------------------------------------------
def rle_string_to_counts(s: bytes) -> List[int]:
    """Decode a compressed COCO RLE string (pycocotools' ``rleFrString``) into run lengths; raises
    ValueError on characters outside the alphabet or a truncated run."""
    cnts: List[int] = []
    p, n = 0, len(s)
    while p < n:
        x = k = 0
        more = True
        while more:
            if p >= n:
                raise ValueError("truncated run at the end of the string")
            c = s[p] - 48
            if not 0 <= c <= 63:
                raise ValueError(f"character {chr(s[p])!r} at position {p} is not an RLE character")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(cnts) > 2:
            x += cnts[-2]
        cnts.append(x)
    return cnts


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# ------------------------------------------------------------------------------------------------
# Parsing and building
# ------------------------------------------------------------------------------------------------
def parse_json_bytes(raw: bytes, json_file: str):
    """``json.loads`` with errors that name the file and the position."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{json_file}: not valid JSON: {e.msg} at line {e.lineno} column {e.colno} "
                           f"(char {e.pos})") from None
    except UnicodeDecodeError as e:
        raise DatasetError(f"{json_file}: not valid UTF-8 JSON: {e}") from None


def read_coco_json(json_file: str):
    """Read and parse a COCO json; returns (data, raw bytes)."""
    try:
        with open(json_file, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DatasetError(f"{json_file}: annotation file not found") from None
    return parse_json_bytes(raw, json_file), raw


def _check_categories(data, json_file):
    cats = data.get("categories")
    if not isinstance(cats, list) or not cats:
        raise DatasetError(f"{json_file}: 'categories' must be a non-empty list")
    seen = {}
    for i, c in enumerate(cats):
        if not isinstance(c, dict) or not _is_int(c.get("id")):
            raise DatasetError(f"{json_file}: categories[{i}] has no integer 'id': {str(c)[:200]}")
        if c["id"] in seen:
            raise DatasetError(f"{json_file}: category id {c['id']} appears twice in 'categories'")
        seen[c["id"]] = c
    out = [{"id": k, "name": str(seen[k].get("name", "")), "supercategory": str(seen[k].get("supercategory", ""))}
           for k in sorted(seen)]
    for c in out:  # keypoint names (COCO person keypoints): the flip pairs are read from them
        names = seen[c["id"]].get("keypoints")
        if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
            c["keypoints"] = list(names)
    return out


def _build_arrays(data, json_file: str):
    """Validate a parsed COCO dict and turn it into the columnar arrays + meta (see module doc)."""
    if not isinstance(data, dict):
        raise DatasetError(f"{json_file}: the top level must be a JSON object, got {type(data).__name__}")
    categories = _check_categories(data, json_file)
    cat_ids = [c["id"] for c in categories]
    cat_to_label = {cid: i + 1 for i, cid in enumerate(cat_ids)}

    images = data.get("images")
    if not isinstance(images, list):
        raise DatasetError(f"{json_file}: 'images' must be a list")
    anns = data.get("annotations", [])
    if not isinstance(anns, list):
        raise DatasetError(f"{json_file}: 'annotations' must be a list")

    # --- images, sorted by id
    for i, im in enumerate(images):
        if not isinstance(im, dict) or not _is_int(im.get("id")):
            raise DatasetError(f"{json_file}: images[{i}] has no integer 'id': {str(im)[:200]}")
        if not isinstance(im.get("file_name"), str) or not im["file_name"]:
            raise DatasetError(f"{json_file}: image id {im['id']}: 'file_name' must be a non-empty string")
        for k in ("height", "width"):
            if not _is_int(im.get(k)) or im[k] <= 0:
                raise DatasetError(f"{json_file}: image id {im['id']}: '{k}' must be a positive integer, "
                                   f"got {im.get(k)!r}")
    images = sorted(images, key=lambda im: im["id"])
    I = len(images)  # noqa: E741 - the number of images, as in the docstring
    image_id = np.fromiter((im["id"] for im in images), dtype=np.int64, count=I)
    if I > 1 and np.any(image_id[1:] == image_id[:-1]):
        dup = int(image_id[1:][image_id[1:] == image_id[:-1]][0])
        raise DatasetError(f"{json_file}: image id {dup} appears twice in 'images'")
    height = np.fromiter((im["height"] for im in images), dtype=np.int32, count=I)
    width = np.fromiter((im["width"] for im in images), dtype=np.int32, count=I)
    enc = [im["file_name"].encode("utf-8") for im in images]
    file_name_off = np.zeros(I + 1, dtype=np.int64)
    np.cumsum(np.fromiter((len(e) for e in enc), dtype=np.int64, count=I), out=file_name_off[1:])
    file_name_blob = np.frombuffer(b"".join(enc), dtype=np.uint8).copy()
    del enc
    img_pos = {int(v): i for i, v in enumerate(image_id)}

    # --- pass 1: ids, image and category references
    A = len(anns)
    a_id = np.empty(A, dtype=np.int64)
    a_img = np.empty(A, dtype=np.int64)
    for j, a in enumerate(anns):
        if not isinstance(a, dict) or not _is_int(a.get("id")):
            raise DatasetError(f"{json_file}: annotations[{j}] has no integer 'id': {str(a)[:200]}")
        aid = a["id"]
        try:
            a_img[j] = img_pos[a.get("image_id")]
        except (KeyError, TypeError):
            raise DatasetError(f"{json_file}: annotation id {aid}: image_id {a.get('image_id')!r} is not in "
                               f"'images'") from None
        if not _is_int(a.get("category_id")) or a["category_id"] not in cat_to_label:
            shown = cat_ids if len(cat_ids) <= 20 else cat_ids[:20] + ["..."]
            raise DatasetError(f"{json_file}: annotation id {aid} (image id {a.get('image_id')}): category_id "
                               f"{a.get('category_id')!r} is not in 'categories' (known ids: {shown})")
        a_id[j] = aid
    if A > 1:
        s = np.sort(a_id)
        if np.any(s[1:] == s[:-1]):
            raise DatasetError(f"{json_file}: annotation id {int(s[1:][s[1:] == s[:-1]][0])} appears twice")
    order = np.lexsort((a_id, a_img))
    del a_id
    sorted_anns = [anns[j] for j in order]
    sorted_img = a_img[order]
    del a_img, order

    # --- boxes (vectorised), degenerate after clipping to the image
    def bad_box(a):
        b = a.get("bbox")
        return not (isinstance(b, list) and len(b) == 4 and all(_is_num(v) and math.isfinite(v) for v in b))

    boxes = [a.get("bbox") for a in sorted_anns]
    ok = (all(type(b) is list and len(b) == 4 for b in boxes)
          and set(map(type, itertools.chain.from_iterable(boxes))) <= {int, float})
    bbox64 = np.array(boxes, dtype=np.float64).reshape(A, 4) if ok else None
    del boxes
    if bbox64 is None or not np.isfinite(bbox64).all():
        a = next(a for a in sorted_anns if bad_box(a))
        raise DatasetError(f"{json_file}: annotation id {a['id']} (image id {a['image_id']}): 'bbox' must be 4 "
                           f"finite numbers [x, y, w, h], got {a.get('bbox')!r}")
    H = height[sorted_img].astype(np.float64)
    W = width[sorted_img].astype(np.float64)
    x1 = np.clip(bbox64[:, 0], 0, W)
    y1 = np.clip(bbox64[:, 1], 0, H)
    x2 = np.clip(bbox64[:, 0] + bbox64[:, 2], 0, W)
    y2 = np.clip(bbox64[:, 1] + bbox64[:, 3], 0, H)
    degenerate = (x2 <= x1) | (y2 <= y1)

    # --- pass 2: segmentations, crowd, area
    from pycocotools import mask as mask_util

    dropped = {"polygons_too_few_points": 0, "polygons_odd_length": 0, "instances_without_valid_segmentation": 0,
               "degenerate_boxes": int(degenerate.sum())}
    keep = ~degenerate
    polys: List[list] = []
    rles: List[bytes] = []
    rle_size: List[tuple] = []
    seg_kind = np.zeros(A, dtype=np.uint8)
    seg_start = np.zeros(A, dtype=np.int64)
    seg_count = np.zeros(A, dtype=np.int32)
    iscrowd = np.zeros(A, dtype=np.uint8)
    area = np.full(A, np.nan, dtype=np.float32)
    keypoints: Dict[int, list] = {}
    for j, a in enumerate(sorted_anns):
        if not keep[j]:
            continue
        where = f"{json_file}: annotation id {a['id']} (image id {a['image_id']})"
        kp = a.get("keypoints")
        if kp:  # as detectron2's loader: an empty list or none is no keypoints
            if not (isinstance(kp, list) and len(kp) % 3 == 0 and all(_is_num(v) and math.isfinite(v) for v in kp)):
                raise DatasetError(f"{where}: 'keypoints' must be finite numbers x, y, v per keypoint, got "
                                   f"{str(kp)[:100]}")
            keypoints[j] = kp
        c = a.get("iscrowd", 0)
        if c not in (0, 1) or isinstance(c, float):
            raise DatasetError(f"{where}: 'iscrowd' must be 0 or 1, got {c!r}")
        iscrowd[j] = c
        ar = a.get("area")
        if ar is not None:
            if not _is_num(ar) or not math.isfinite(ar):
                raise DatasetError(f"{where}: 'area' must be a finite number, got {ar!r}")
            area[j] = ar
        seg = a.get("segmentation")
        if seg is None:
            continue
        if isinstance(seg, list):
            start, n = len(polys), 0
            for poly in seg:
                if not isinstance(poly, list):
                    raise DatasetError(f"{where}: a polygon must be a list of numbers, got {str(poly)[:100]}")
                if len(poly) < 6:
                    dropped["polygons_too_few_points"] += 1
                elif len(poly) % 2:
                    dropped["polygons_odd_length"] += 1
                else:
                    polys.append(poly)
                    n += 1
            if n == 0:
                dropped["instances_without_valid_segmentation"] += 1
                keep[j] = False
                continue
            seg_kind[j], seg_start[j], seg_count[j] = SEG_POLYGON, start, n
        elif isinstance(seg, dict):
            i = sorted_img[j]
            h, w = int(height[i]), int(width[i])
            size, counts = seg.get("size"), seg.get("counts")
            if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) for v in size)):
                raise DatasetError(f"{where}: RLE 'size' must be [height, width], got {size!r}")
            if list(size) != [h, w]:
                raise DatasetError(f"{where}: RLE size {size} does not match the image size [{h}, {w}] "
                                   f"(height, width)")
            if isinstance(counts, list):
                if not all(_is_int(v) and v >= 0 for v in counts):
                    raise DatasetError(f"{where}: uncompressed RLE counts must be non-negative integers")
                total = sum(counts)
                if total != h * w:
                    raise DatasetError(f"{where}: uncompressed RLE counts sum to {total}, expected height*width = "
                                       f"{h}*{w} = {h * w}")
                comp = mask_util.frPyObjects({"size": [h, w], "counts": counts}, h, w)["counts"]
            elif isinstance(counts, str):
                comp = counts.encode("ascii", "replace")
                try:
                    runs = rle_string_to_counts(comp)
                except ValueError as e:
                    raise DatasetError(f"{where}: compressed RLE counts are malformed: {e}") from None
                if any(r < 0 for r in runs):
                    raise DatasetError(f"{where}: compressed RLE counts decode to a negative run")
                if sum(runs) != h * w:
                    raise DatasetError(f"{where}: compressed RLE counts sum to {sum(runs)}, expected height*width "
                                       f"= {h}*{w} = {h * w}")
            else:
                raise DatasetError(f"{where}: RLE 'counts' must be a list of integers or a string")
            seg_kind[j], seg_start[j], seg_count[j] = SEG_RLE, len(rles), 1
            rles.append(comp)
            rle_size.append((h, w))
        else:
            raise DatasetError(f"{where}: 'segmentation' must be a list of polygons or an RLE dict, "
                               f"got {type(seg).__name__}")

    # --- polygon table
    lengths = np.fromiter((len(p) for p in polys), dtype=np.int64, count=len(polys))
    poly_off = np.zeros(len(polys) + 1, dtype=np.int64)
    np.cumsum(lengths, out=poly_off[1:])
    types = set(map(type, itertools.chain.from_iterable(polys)))
    poly_xy = None
    if types <= {int, float}:
        poly_xy = np.fromiter(itertools.chain.from_iterable(polys), dtype=np.float32, count=int(poly_off[-1]))
    if poly_xy is None or not np.isfinite(poly_xy).all():
        for j in np.flatnonzero(seg_kind == SEG_POLYGON):
            for p in polys[seg_start[j]: seg_start[j] + seg_count[j]]:
                if not all(_is_num(v) and math.isfinite(v) for v in p):
                    a = sorted_anns[j]
                    raise DatasetError(f"{json_file}: annotation id {a['id']} (image id {a['image_id']}): polygon "
                                       f"coordinates must be finite numbers, got {str(p)[:100]}")
    del polys

    # --- drop instances, re-index per image
    kept = np.flatnonzero(keep)
    ann_img = sorted_img[kept]
    ann_count = np.bincount(ann_img, minlength=I).astype(np.int32)
    ann_start = np.zeros(I, dtype=np.int64)
    if I:
        np.cumsum(ann_count[:-1], out=ann_start[1:])
    rle_off = np.zeros(len(rles) + 1, dtype=np.int64)
    np.cumsum(np.fromiter((len(r) for r in rles), dtype=np.int64, count=len(rles)), out=rle_off[1:])
    cat = np.fromiter((a["category_id"] for a in sorted_anns), dtype=np.int32, count=A)
    lengths = {len(v) for j, v in keypoints.items() if keep[j]}
    if len(lengths) > 1:
        j = next(j for j, v in keypoints.items() if keep[j] and len(v) != min(lengths))
        raise DatasetError(f"{json_file}: annotation id {sorted_anns[j]['id']} has {len(keypoints[j]) // 3} keypoints, "
                           f"others {max(lengths) // 3}: every annotation with keypoints needs the same number")
    kp_table = np.zeros((len(kept), max(lengths, default=0)), dtype=np.float32)
    for row, j in enumerate(kept):
        if j in keypoints:
            kp_table[row] = keypoints[j]
    arrays = {
        "image_id": image_id, "file_name_blob": file_name_blob, "file_name_off": file_name_off,
        "height": height, "width": width, "ann_start": ann_start, "ann_count": ann_count,
        "ann_id": np.fromiter((sorted_anns[j]["id"] for j in kept), dtype=np.int64, count=len(kept)),
        "bbox": bbox64[kept].astype(np.float32).reshape(-1, 4),
        "category_id": cat[kept],
        "label": (np.searchsorted(np.asarray(cat_ids), cat[kept]) + 1).astype(np.int32),
        "iscrowd": iscrowd[kept], "area": area[kept],
        "seg_kind": seg_kind[kept], "seg_start": seg_start[kept], "seg_count": seg_count[kept],
        "poly_off": poly_off, "poly_xy": poly_xy,
        "rle_off": rle_off,
        "rle_counts": np.frombuffer(b"".join(rles), dtype=np.uint8).copy(),
        "rle_size": np.array(rle_size, dtype=np.int32).reshape(-1, 2),
        "keypoints": kp_table,
    }
    meta = {
        "format": FORMAT_VERSION,
        "num_images": I,
        "num_annotations": int(len(kept)),
        "num_annotations_in_file": A,
        "categories": categories,
        "dropped": dropped,
    }
    return arrays, meta


def index_dir(sha256: str) -> str:
    return os.path.join(cache_root(), "coco_index", f"v{FORMAT_VERSION}-{sha256[:32]}")


def _complete(d: str) -> bool:
    return os.path.isfile(os.path.join(d, "meta.json"))


def build_coco_index(json_file: str, sha256: Optional[str] = None, data=None) -> str:
    """Build (if not there yet) the columnar cache of `json_file` and return its folder. `data` may
    be the already parsed json (its bytes must hash to `sha256`). Safe to call from many processes."""
    json_file = os.path.abspath(json_file)
    if not os.path.isfile(json_file):
        raise DatasetError(f"{json_file}: annotation file not found")
    sha256 = sha256 or file_sha256(json_file)
    d = index_dir(sha256)
    if _complete(d):
        return d
    with file_lock(d + ".lock"):
        if _complete(d):
            return d
        t0 = time.perf_counter()
        st = os.stat(json_file)
        if data is None:
            data, raw = read_coco_json(json_file)
            import hashlib

            got = hashlib.sha256(raw).hexdigest()
            del raw
            if got != sha256:
                raise DatasetError(f"{json_file}: the file changed while being read (sha256 {got} != {sha256}); "
                                   f"retry once it is no longer being written")
        arrays, meta = _build_arrays(data, json_file)
        del data
        meta.update({"json_file": json_file, "sha256": sha256, "size": st.st_size,
                     "build_seconds": round(time.perf_counter() - t0, 3)})
        os.makedirs(os.path.dirname(d), exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=os.path.basename(d) + ".tmp-", dir=os.path.dirname(d))
        try:
            for k in ARRAYS:
                np.save(os.path.join(tmp, k + ".npy"), np.ascontiguousarray(arrays[k]), allow_pickle=False)
            with open(os.path.join(tmp, "meta.json"), "w") as f:
                json.dump(meta, f, indent=1, sort_keys=True)
            try:
                os.rename(tmp, d)
            except OSError:
                if not _complete(d):  # a stale incomplete folder (crash mid-way without flock): replace it
                    shutil.rmtree(d, ignore_errors=True)
                    os.rename(tmp, d)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        logger.info("built the annotation cache of %s in %.1f s: %d images, %d annotations -> %s", json_file,
                    time.perf_counter() - t0, meta["num_images"], meta["num_annotations"], d)
    return d


# ------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------
class CocoIndex:
    """Memory-mapped columnar view of one COCO json (see module doc). Picklable (re-opens the maps)."""

    def __init__(self, cache_dir: str, json_file: str):
        self.cache_dir = cache_dir
        self.json_file = json_file
        with open(os.path.join(cache_dir, "meta.json")) as f:
            self.meta = json.load(f)
        if self.meta.get("format") != FORMAT_VERSION:
            raise DatasetError(f"{cache_dir}: cache format {self.meta.get('format')} != {FORMAT_VERSION}; delete it")
        self.a = {k: np.load(os.path.join(cache_dir, k + ".npy"), mmap_mode="r", allow_pickle=False) for k in ARRAYS}
        self.categories = self.meta["categories"]
        self.cat_ids = [c["id"] for c in self.categories]
        # label (1..K) <-> COCO category id; 0 is background (torchvision convention)
        self.label_to_cat_id: Dict[int, int] = {i + 1: c for i, c in enumerate(self.cat_ids)}
        self.cat_id_to_label: Dict[int, int] = {c: i + 1 for i, c in enumerate(self.cat_ids)}

    def __getstate__(self):
        return {"cache_dir": self.cache_dir, "json_file": self.json_file}

    def __setstate__(self, state):
        self.__init__(state["cache_dir"], state["json_file"])

    @property
    def sha256(self) -> str:
        return self.meta["sha256"]

    @property
    def num_images(self) -> int:
        return int(self.meta["num_images"])

    @property
    def num_annotations(self) -> int:
        return int(self.meta["num_annotations"])

    @property
    def num_classes(self) -> int:
        return len(self.cat_ids)

    def file_name(self, i: int) -> str:
        off = self.a["file_name_off"]
        return bytes(self.a["file_name_blob"][off[i]: off[i + 1]]).decode("utf-8")

    def image_id(self, i: int) -> int:
        return int(self.a["image_id"][i])

    def ann_rows(self, i: int) -> slice:
        s = int(self.a["ann_start"][i])
        return slice(s, s + int(self.a["ann_count"][i]))

    def segmentation(self, row: int):
        """Polygons (list of float32 arrays x0,y0,x1,...), an RLE dict {"size": [h, w], "counts": bytes}
        (compressed, as pycocotools takes it), or None."""
        kind = self.a["seg_kind"][row]
        s, n = int(self.a["seg_start"][row]), int(self.a["seg_count"][row])
        if kind == SEG_POLYGON:
            off = self.a["poly_off"]
            xy = self.a["poly_xy"]
            return [np.array(xy[off[p]: off[p + 1]]) for p in range(s, s + n)]
        if kind == SEG_RLE:
            off = self.a["rle_off"]
            h, w = (int(v) for v in self.a["rle_size"][s])
            return {"size": [h, w], "counts": bytes(self.a["rle_counts"][off[s]: off[s + 1]])}
        return None

    @property
    def num_keypoints(self) -> int:
        """K of the annotations' keypoints (0: the json has none)."""
        return int(self.a["keypoints"].shape[1]) // 3

    def keypoints(self, rows) -> np.ndarray:
        """[n, K, 3] float64 (x, y, v) of annotation `rows` as in the json (integer pixel indices)."""
        return np.asarray(self.a["keypoints"][rows], dtype=np.float64).reshape(-1, self.num_keypoints, 3)

    def annotations(self, i: int, with_segmentation: bool = True) -> Dict[str, object]:
        """Annotations of image row `i` as numpy copies: ann_id, bbox [n,4] XYWH, category_id, label,
        iscrowd, area, and (optionally) segmentation (list, one entry per instance)."""
        r = self.ann_rows(i)
        out = {k: np.array(self.a[k][r]) for k in ("ann_id", "bbox", "category_id", "label", "iscrowd", "area")}
        if with_segmentation:
            out["segmentation"] = [self.segmentation(j) for j in range(r.start, r.stop)]
        return out

    def usable_mask(self) -> np.ndarray:
        """[I] bool: images with at least one kept (valid box and segmentation) non-crowd instance."""
        noncrowd = (np.asarray(self.a["iscrowd"]) == 0).astype(np.int64)
        cs = np.concatenate([[0], np.cumsum(noncrowd)])
        start = np.asarray(self.a["ann_start"])
        return (cs[start + np.asarray(self.a["ann_count"])] - cs[start]) > 0

    def dropped_summary(self) -> str:
        d = self.meta["dropped"]
        return (f"{d['polygons_too_few_points']} polygons with < 3 points, {d['polygons_odd_length']} polygons "
                f"with an odd number of coordinates, {d['instances_without_valid_segmentation']} instances left "
                f"without a valid polygon, {d['degenerate_boxes']} degenerate boxes (w or h <= 0 after clipping)")


def load_coco_index(json_file: str, dataset_name: Optional[str] = None) -> CocoIndex:
    """Open (building once if needed) the columnar cache of `json_file`. Logs once per dataset what
    the build dropped."""
    json_file = os.path.abspath(json_file)
    if not os.path.isfile(json_file):
        raise DatasetError(f"{json_file}: annotation file not found" +
                           (f" (dataset {dataset_name})" if dataset_name else ""))
    d = build_coco_index(json_file)
    idx = CocoIndex(d, json_file)
    if any(idx.meta["dropped"].values()):
        log_once(logger, ("dropped", idx.sha256, dataset_name), logging.WARNING, "%s (%s): dropped %s",
                 dataset_name or "dataset", json_file, idx.dropped_summary())
    return idx


# ------------------------------------------------------------------------------------------------
# A named dataset: index + image root
# ------------------------------------------------------------------------------------------------
class CocoDataset:
    """A named COCO dataset: the columnar index of its json and the folder its file_names are in."""

    def __init__(self, name: str, json_file: str, image_root: str, verify_images: bool = False):
        self.name = name
        self.json_file = os.path.abspath(json_file)
        self.image_root = os.path.abspath(image_root)
        self.index = load_coco_index(self.json_file, name)
        if verify_images:
            self.verify_images()

    def __len__(self) -> int:
        return self.index.num_images

    @property
    def label_to_cat_id(self) -> Dict[int, int]:
        return self.index.label_to_cat_id

    def image_path(self, i: int) -> str:
        return os.path.join(self.image_root, self.index.file_name(i))

    def missing_images(self, threads: int = 16) -> List[int]:
        """Rows whose image file is not a file under image_root: one stat per image, in `threads` threads
        (a stat waits on the file system, not the CPU: on network file systems threads hide the latency)."""
        blob = bytes(self.index.a["file_name_blob"])
        off = np.asarray(self.index.a["file_name_off"]).tolist()
        root, isfile = self.image_root, os.path.isfile

        def missing(rows: range) -> List[int]:
            return [i for i in rows if not isfile(os.path.join(root, blob[off[i]:off[i + 1]].decode("utf-8")))]

        n, chunk = len(self), 4096
        chunks = [range(s, min(s + chunk, n)) for s in range(0, n, chunk)]
        if len(chunks) <= 1 or threads <= 1:
            return [i for c in chunks for i in missing(c)]
        with ThreadPoolExecutor(min(threads, len(chunks))) as pool:
            return [i for part in pool.map(missing, chunks) for i in part]

    def verify_images(self, max_listed: int = 10) -> None:
        """Check that every image file exists; error listing the first missing ones with their ids."""
        missing = self.missing_images()
        if missing:
            lines = "\n".join(f"  {self.image_path(i)} (image id {self.index.image_id(i)})"
                              for i in missing[:max_listed])
            more = f"\n  ... and {len(missing) - max_listed} more" if len(missing) > max_listed else ""
            raise DatasetError(f"dataset {self.name} ({self.json_file}): {len(missing)} of {len(self)} image files "
                               f"are missing under {self.image_root}:\n{lines}{more}")

    def describe_annotations(self) -> str:
        """How many annotations the json has and how many are usable for training (for error messages)."""
        m = self.index.meta
        usable = int(self.index.usable_mask().sum())
        return (f"{m['num_annotations_in_file']} annotations in the file, {m['num_annotations']} valid "
                f"(dropped: {self.index.dropped_summary()}), {usable} of {len(self)} images with a valid "
                f"non-crowd instance")


def check_same_categories(datasets: Sequence[CocoDataset]) -> None:
    """Datasets trained together must share one category list (the label mapping)."""
    for d in datasets[1:]:
        if d.index.cat_ids != datasets[0].index.cat_ids:
            raise DatasetError(f"datasets {datasets[0].name} ({datasets[0].json_file}) and {d.name} ({d.json_file}) "
                               f"have different categories: {datasets[0].index.cat_ids} vs {d.index.cat_ids}")
