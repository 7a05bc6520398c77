"""PASCAL VOC detection datasets, read from their XML annotations (detectron2's ``pascal_voc`` datasets).

Built-in names (detectron2's), under the datasets root (``$RETHINK_DATASETS``, ``$DETECTRON2_DATASETS`` or
``./datasets``)::

    voc_2007_trainval, voc_2007_train, voc_2007_val, voc_2007_test   ->  <root>/VOC2007/
    voc_2012_trainval, voc_2012_train, voc_2012_val                   ->  <root>/VOC2012/

each laid out as VOC's devkit: ``ImageSets/Main/<split>.txt`` (one image id per line),
``Annotations/<id>.xml`` and ``JPEGImages/<id>.jpg``. Other VOC-layout folders are registered with
:func:`register_pascal_voc` (detectron2's signature). The paper's split (arXiv 1811.08883 v1, Sec. 5,
"breakdown regimes"): train on ``voc_2007_trainval`` + ``voc_2012_train``, evaluate on ``voc_2012_val``.

Reading, as detectron2's ``load_voc_instances``: the image size from ``size/width`` and ``size/height``;
every ``object`` becomes an instance of its ``name``'s class (the 20 :data:`CLASS_NAMES`, in that order),
**difficult ones included** (detectron2 trains on them; its evaluator ignores them); the box
``(xmin - 1, ymin - 1, xmax, ymax)``: VOC's 1-based inclusive pixel indices as coordinates, so a box from
1 to W covers the whole image. No masks (MODEL.MASK_ON False).

The rest of the pipeline reads COCO-format json, so a set is converted once into
``$RETHINK_CACHE/voc/<name>-<key>.json`` (written atomically, one process at a time) and read from there
like any COCO json. The key hashes the folder, the split, the year, the classes and the size and
mtime of the image-set file and of every XML file it lists: an edited annotation gives a new file.
The json holds, besides COCO's fields: ``"voc": {dirname, split, year, classes}``; per image the VOC
id (``voc_id``); per annotation ``difficult`` (0/1) and ``voc_bbox`` (the XML's xmin, ymin, xmax, ymax
as written), which rethink.evaluation.voc evaluates against. Image ids are the VOC ids' digits
(``000005`` -> 5, ``2008_000002`` -> 2008000002) when every id of the set is digits and underscores
and they are unique, else the 1-based line number in the image-set file.

Errors (:class:`DatasetError`) name the XML file and the image id: malformed XML, a missing or non-numeric
size or box field, an unknown class name, a ``difficult`` other than 0/1. A missing image-set file or
annotation folder is a :class:`DatasetNotFoundError` saying where it looked.
"""
import hashlib
import json
import logging
import os
import re
import xml.etree.ElementTree as ET
from collections import Counter
from typing import Dict, List, Optional, Sequence, Tuple

from ..utils.atomic import atomic_write_bytes
from ..utils.cache import cache_root, canonical_json_bytes, file_lock
from .errors import DatasetError, DatasetNotFoundError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
CLASS_NAMES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
#: detectron2's built-in splits: name -> (folder under the datasets root, image set, year)
BUILTIN_VOC: Dict[str, Tuple[str, str, int]] = {
    "voc_2007_trainval": ("VOC2007", "trainval", 2007),
    "voc_2007_train": ("VOC2007", "train", 2007),
    "voc_2007_val": ("VOC2007", "val", 2007),
    "voc_2007_test": ("VOC2007", "test", 2007),
    "voc_2012_trainval": ("VOC2012", "trainval", 2012),
    "voc_2012_train": ("VOC2012", "train", 2012),
    "voc_2012_val": ("VOC2012", "val", 2012),
}
_REGISTERED_VOC: Dict[str, Tuple[str, str, int, Tuple[str, ...]]] = {}
_DIGIT_ID = re.compile(r"^\d+(?:_\d+)*$")


def register_pascal_voc(name: str, dirname: str, split: str, year: int,
                        class_names: Sequence[str] = CLASS_NAMES) -> None:
    """Register a VOC-layout folder (``Annotations/``, ``ImageSets/Main/<split>.txt``, ``JPEGImages/``) as
    dataset `name` (detectron2's ``register_pascal_voc``). `year` 2007 selects the VOC2007 11-point AP rule
    in evaluation, 2012 the area rule."""
    if name in BUILTIN_VOC:
        raise DatasetError(f"register_pascal_voc: {name} is a built-in dataset name; choose another name")
    if int(year) not in (2007, 2012):
        raise ValueError(f"register_pascal_voc: year must be 2007 or 2012 (the AP rule), got {year!r}")
    _REGISTERED_VOC[name] = (os.path.abspath(os.path.expanduser(dirname)), str(split), int(year),
                             tuple(str(c) for c in class_names))


def unregister_pascal_voc(name: str) -> None:
    _REGISTERED_VOC.pop(name, None)


def voc_names() -> List[str]:
    return sorted(set(BUILTIN_VOC) | set(_REGISTERED_VOC))


def is_voc_dataset(name: str) -> bool:
    return name in BUILTIN_VOC or name in _REGISTERED_VOC


def voc_source(name: str, root: str) -> Tuple[str, str, int, Tuple[str, ...]]:
    """(folder, split, year, class names) of VOC dataset `name`, built-in ones under `root`."""
    if name in _REGISTERED_VOC:
        return _REGISTERED_VOC[name]
    folder, split, year = BUILTIN_VOC[name]
    return os.path.join(root, folder), split, year, CLASS_NAMES


def image_set_file(dirname: str, split: str) -> str:
    return os.path.join(dirname, "ImageSets", "Main", split + ".txt")


def read_image_set(path: str) -> List[str]:
    """The image ids listed in an image-set file, one per line (blank lines skipped)."""
    ids = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) > 1:
                raise DatasetError(f"{path}:{n}: expected one image id per line, got {line.strip()!r}")
            ids.append(parts[0])
    return ids


def _check_layout(name: str, dirname: str, split: str, source: str) -> str:
    listing = image_set_file(dirname, split)
    needed = [listing, os.path.join(dirname, "Annotations"), os.path.join(dirname, "JPEGImages")]
    missing = [p for p in needed if not os.path.exists(p)]
    if missing:
        looked = "\n".join(f"  {p} ({'missing' if p in missing else 'found'})" for p in needed)
        raise DatasetNotFoundError(
            f"dataset {name} not found. Looked for:\n{looked}\n{source}\n"
            f"Fix: put the PASCAL VOC devkit folders there (VOC2007/ and VOC2012/, each with Annotations/, "
            f"ImageSets/Main/<split>.txt and JPEGImages/), or register another copy with "
            f"rethink.data.voc.register_pascal_voc(name, dirname, split, year).")
    return listing


def cache_key(dirname: str, split: str, year: int, classes: Sequence[str], ids: Sequence[str]) -> str:
    """Hash of what the converted json depends on: the folder, split, year, classes, and the size and
    mtime of the image-set file and of every listed XML file (a missing XML is an error naming it)."""
    h = hashlib.sha256(json.dumps([FORMAT_VERSION, dirname, split, year, list(classes)]).encode())
    listing = image_set_file(dirname, split)
    st = os.stat(listing)
    h.update(f"{st.st_size}:{st.st_mtime_ns}\n".encode())
    ann_dir = os.path.join(dirname, "Annotations")
    for i in ids:
        try:
            st = os.stat(os.path.join(ann_dir, i + ".xml"))
        except FileNotFoundError:
            raise DatasetError(f"{os.path.join(ann_dir, i + '.xml')}: annotation file not found (image id {i}, "
                               f"listed in {listing})") from None
        h.update(f"{i}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _number(node, tag: str, where: str, kind=float):
    child = node.find(tag)
    text = None if child is None else (child.text or "").strip()
    if not text:
        raise DatasetError(f"{where}: missing <{tag}>")
    try:
        return kind(float(text)) if kind is int else kind(text)
    except ValueError:
        raise DatasetError(f"{where}: <{tag}> is not a number: {text!r}") from None


def parse_voc_xml(path: str, image_id: str, classes: Sequence[str]) -> Tuple[int, int, List[dict]]:
    """(height, width, objects) of one VOC annotation file; each object {"name", "class", "difficult",
    "xyxy": the XML box as written}. Errors name the file and the image id."""
    where = f"{path} (image id {image_id})"
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise DatasetError(f"{where}: malformed XML: {e}") from None
    except OSError as e:
        raise DatasetError(f"{where}: cannot read the annotation file: {e}") from None
    size = root.find("size")
    if size is None:
        raise DatasetError(f"{where}: missing <size>")
    width, height = _number(size, "width", where + " <size>", int), _number(size, "height", where + " <size>", int)
    if width <= 0 or height <= 0:
        raise DatasetError(f"{where}: image size {width}x{height} must be positive")
    objects = []
    for k, obj in enumerate(root.findall("object")):
        ow = f"{where}, object {k}"
        name_node = obj.find("name")
        name = (name_node.text or "").strip() if name_node is not None else ""
        if name not in classes:
            raise DatasetError(f"{ow}: class {name!r} is not one of the dataset's {len(classes)} classes "
                               f"({', '.join(classes)})")
        diff_node = obj.find("difficult")
        diff_text = (diff_node.text or "").strip() if diff_node is not None else "0"
        if diff_text not in ("0", "1"):
            raise DatasetError(f"{ow}: <difficult> must be 0 or 1, got {diff_text!r}")
        box = obj.find("bndbox")
        if box is None:
            raise DatasetError(f"{ow}: missing <bndbox>")
        xyxy = [_number(box, t, f"{ow} <bndbox>") for t in ("xmin", "ymin", "xmax", "ymax")]
        objects.append({"name": name, "class": classes.index(name), "difficult": int(diff_text), "xyxy": xyxy})
    return height, width, objects


def _image_ids(ids: Sequence[str]) -> List[int]:
    if all(_DIGIT_ID.match(i) for i in ids):
        nums = [int(i.replace("_", "")) for i in ids]
        if len(set(nums)) == len(nums):
            return nums
    return list(range(1, len(ids) + 1))


def convert_voc(dirname: str, split: str, year: int, classes: Sequence[str] = CLASS_NAMES,
                ids: Optional[Sequence[str]] = None) -> dict:
    """The COCO-format dict of one VOC split (see the module doc)."""
    if ids is None:
        ids = read_image_set(image_set_file(dirname, split))
    dups = [i for i, n in Counter(ids).items() if n > 1]
    if dups:
        dup = dups[0]
        raise DatasetError(f"{image_set_file(dirname, split)}: image id {dup} is listed twice")
    classes = list(classes)
    images, anns = [], []
    for image_id, voc_id in zip(_image_ids(ids), ids):
        path = os.path.join(dirname, "Annotations", voc_id + ".xml")
        height, width, objects = parse_voc_xml(path, voc_id, classes)
        images.append({"id": image_id, "file_name": f"JPEGImages/{voc_id}.jpg", "height": height, "width": width,
                       "voc_id": voc_id})
        for obj in objects:
            xmin, ymin, xmax, ymax = obj["xyxy"]
            x1, y1 = xmin - 1.0, ymin - 1.0  # detectron2: 1-based inclusive indices -> coordinates
            w, h = xmax - x1, ymax - y1
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": obj["class"] + 1,
                         "bbox": [x1, y1, w, h], "area": max(w, 0.0) * max(h, 0.0), "iscrowd": 0,
                         "difficult": obj["difficult"], "voc_bbox": obj["xyxy"]})
    return {
        "info": {"description": f"PASCAL VOC {year} {split} from {dirname}, converted by rethink.data.voc"},
        "voc": {"dirname": dirname, "split": split, "year": int(year), "classes": classes},
        "categories": [{"id": k + 1, "name": c, "supercategory": "voc"} for k, c in enumerate(classes)],
        "images": images,
        "annotations": anns,
    }


def voc_json_path(name: str, dirname: str, split: str, year: int, classes: Sequence[str]) -> str:
    ids = read_image_set(image_set_file(dirname, split))
    key = cache_key(dirname, split, year, classes, ids)
    return os.path.join(cache_root(), "voc", f"{name}-{key}.json")


def ensure_voc_json(name: str, dirname: str, split: str, year: int, classes: Sequence[str] = CLASS_NAMES) -> str:
    """The converted json of a VOC split, written first when missing or stale (one process at a time)."""
    path = voc_json_path(name, dirname, split, year, classes)
    if os.path.isfile(path):
        return path
    with file_lock(path + ".lock"):
        if not os.path.isfile(path):
            data = convert_voc(dirname, split, year, classes)
            atomic_write_bytes(path, canonical_json_bytes(data))
            logger.info("%s: converted %d images, %d objects (%d difficult) of %s to %s", name, len(data["images"]),
                        len(data["annotations"]), sum(a["difficult"] for a in data["annotations"]),
                        image_set_file(dirname, split), path)
    return path


def voc_dataset_files(name: str, root: str, root_source: str, create: bool = True) -> Tuple[str, str]:
    """(COCO-format json, image root) of VOC dataset `name`. With `create` False nothing is written: the
    json path is where the conversion goes (it may not exist yet; it is made on first read)."""
    dirname, split, year, classes = voc_source(name, root)
    source = (f"The datasets root is {root}, from {root_source}." if name in BUILTIN_VOC
              else f"Registered with register_pascal_voc({name!r}, {dirname!r}, {split!r}, {year}).")
    _check_layout(name, dirname, split, source)
    if create:
        return ensure_voc_json(name, dirname, split, year, classes), dirname
    return voc_json_path(name, dirname, split, year, classes), dirname
