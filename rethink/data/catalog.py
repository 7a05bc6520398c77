"""Named datasets: what DATASETS.TRAIN / DATASETS.TEST refer to.

Built in (paths resolved when asked for, so the environment may change after import):

* ``coco_2017_train``, ``coco_2017_val``: ``<root>/coco/annotations/instances_{train,val}2017.json`` with
  images in ``<root>/coco/{train,val}2017/``. ``<root>`` is ``$RETHINK_DATASETS``, else
  ``$DETECTRON2_DATASETS``, else ``./datasets``.
* ``keypoints_coco_2017_train``, ``keypoints_coco_2017_val`` (detectron2's names): COCO person keypoints,
  ``<root>/coco/annotations/person_keypoints_{train,val}2017.json`` with the same image folders.
* ``synthetic_keypoints_train`` / ``synthetic_keypoints_val``: generated stick figures with COCO's 17 person
  keypoints (rethink.data.synthetic_keypoints, 96 + 24 images), created on first use; for smoke tests.
* PASCAL VOC, detectron2's names: ``voc_2007_{trainval,train,val,test}``, ``voc_2012_{trainval,train,val}``
  from ``<root>/VOC2007/`` and ``<root>/VOC2012/`` (devkit layout), and VOC-layout folders registered with
  ``rethink.data.voc.register_pascal_voc``; their XML is converted once to a COCO-format json in
  ``$RETHINK_CACHE/voc/`` (see :mod:`rethink.data.voc`); evaluated with VOC mAP (evaluator_type "pascal_voc").
* Subsets of any other named dataset, by name: ``<base>_<sel>_s<seed>`` with ``<sel>`` a fraction
  ``1of3`` / ``1of10`` / ``1of100`` (any ``AofB``) or an image count ``35k`` / ``10k`` / ``3.5k`` / ``1k`` /
  ``1234``, e.g. ``coco_2017_train_1of10_s0``, ``coco_2017_train_10k_s0``. Created on first use in
  ``$RETHINK_CACHE/subsets/`` (see :mod:`rethink.data.subsets`).
* ``synthetic_coco_train`` / ``synthetic_coco_val``: a small generated dataset (rethink.data.synthetic,
  96 + 24 images), created on first use in ``$RETHINK_CACHE/synthetic/``; for smoke tests.
  ``synthetic_demo_train`` / ``synthetic_demo_val``: the same generator with 768 + 96 images (the demo).
* Anything registered with :func:`register_coco_instances`, or named in the config's
  ``DATASETS.REGISTER`` (:func:`register_config_datasets`); a json path as the dataset itself; subsets
  that tools/make_subsets.py wrote, by name (see :mod:`rethink.data.user_datasets`).
"""
import difflib
import logging
import os
import re
from typing import Dict, List, NamedTuple, Optional, Tuple

from .errors import DatasetError, DatasetNotFoundError
from .subsets import Selection, ensure_subset, read_manifest, subset_paths, verify_subset
from .synthetic import DEMO_NUM_IMAGES, DEMO_NUM_VAL, ensure_builtin_synthetic
from .synthetic_keypoints import ensure_synthetic_keypoints
from .user_datasets import (
    REGISTER_KEY,
    absolute,
    config_registrations,
    find_image_root,
    is_json_path,
    recorded_image_root,
)
from .voc import is_voc_dataset, voc_dataset_files, voc_names

logger = logging.getLogger(__name__)

ROOT_ENVS = ("RETHINK_DATASETS", "DETECTRON2_DATASETS")
BUILTIN_COCO: Dict[str, Tuple[str, str]] = {
    "coco_2017_train": ("coco/annotations/instances_train2017.json", "coco/train2017"),
    "coco_2017_val": ("coco/annotations/instances_val2017.json", "coco/val2017"),
    "keypoints_coco_2017_train": ("coco/annotations/person_keypoints_train2017.json", "coco/train2017"),
    "keypoints_coco_2017_val": ("coco/annotations/person_keypoints_val2017.json", "coco/val2017"),
}
# generated sets: base name -> (train images, val images), None = the generator's defaults (96 + 24)
SYNTHETIC_SIZES: Dict[str, Tuple[Optional[int], Optional[int]]] = {
    "synthetic_coco": (None, None), "synthetic_demo": (DEMO_NUM_IMAGES, DEMO_NUM_VAL)}
SYNTHETIC_KEYPOINT_NAMES = ("synthetic_keypoints_train", "synthetic_keypoints_val")  # rethink.data.synthetic_keypoints
SYNTHETIC_NAMES = tuple(f"{base}_{split}" for base in SYNTHETIC_SIZES for split in ("train", "val")) + \
    SYNTHETIC_KEYPOINT_NAMES
SUBSET_RE = re.compile(r"^(?P<base>.+)_(?P<sel>\d+of\d+|\d+(?:\.\d+)?k|\d+)_s(?P<seed>\d+)$")

_REGISTERED: Dict[str, Tuple[str, str]] = {}  # name -> (json, image root; "" = find it beside the json)
_ORIGIN: Dict[str, str] = {}  # name -> what registered it (for messages)


class DatasetSpec(NamedTuple):
    """Where a named dataset is. Unpacks as ``json_file, image_root, *_``."""
    json_file: str
    image_root: str
    name: str
    kind: str  # "builtin", "registered", "subset", "synthetic" or "path"
    parent: Optional[str] = None  # subsets: the dataset they were drawn from
    manifest: Optional[str] = None  # subsets: the manifest json beside the subset json
    evaluator_type: str = "coco"  # "coco" or "pascal_voc" (detectron2's metadata evaluator_type); subsets inherit


def datasets_root() -> Tuple[str, str]:
    """(absolute datasets root, where it came from)."""
    for env in ROOT_ENVS:
        if os.environ.get(env):
            return os.path.abspath(os.path.expanduser(os.environ[env])), f"${env}"
    return (os.path.abspath("datasets"),
            "the default ./datasets (neither $RETHINK_DATASETS nor $DETECTRON2_DATASETS is set)")


def register_coco_instances(name: str, json_file: str, image_root: str, overwrite: bool = False,
                            origin: str = "register_coco_instances") -> None:
    """Register a COCO-format instance dataset under `name` (usable in DATASETS.TRAIN/TEST, and its
    subsets as ``<name>_1of10_s0`` etc.). Registering the same paths again is a no-op. An empty
    `image_root` is found beside the json when first used (rethink.data.user_datasets)."""
    if not name or not isinstance(name, str):
        raise ValueError(f"{origin}: bad dataset name {name!r}")
    if name in BUILTIN_COCO or name in SYNTHETIC_NAMES:
        raise DatasetError(f"{origin}: {name} is a built-in dataset name; choose another name")
    if SUBSET_RE.match(name) or is_json_path(name):
        raise DatasetError(f"{origin}: {name} looks like a subset name (<base>_<1of10|10k>_s<seed>) or a json path; "
                           f"choose another name")
    entry = (absolute(json_file), absolute(image_root))
    if name in _REGISTERED and _REGISTERED[name] != entry and not overwrite:
        raise DatasetError(f"{origin}: dataset {name} is already registered with {_REGISTERED[name]} "
                           f"({_ORIGIN.get(name)}), not {entry} (pass overwrite=True to replace it)")
    if name in _REGISTERED and _REGISTERED[name] != entry:
        logger.info("dataset %s: %s replaces %s (%s)", name, entry, _REGISTERED[name], _ORIGIN.get(name))
    _REGISTERED[name] = entry
    _ORIGIN[name] = origin


def register_config_datasets(cfg_or_entries) -> List[str]:
    """Register the datasets a config names in DATASETS.REGISTER (a config, or the entries themselves);
    they replace earlier registrations of the same names (a process may run several configs in turn).
    Returns the names. Every rank and every process that resolves a run's datasets calls this first."""
    entries = cfg_or_entries.DATASETS.REGISTER if hasattr(cfg_or_entries, "DATASETS") else cfg_or_entries
    names = []
    for name, json_file, image_root in config_registrations(entries):
        register_coco_instances(name, json_file, image_root, overwrite=True, origin=REGISTER_KEY)
        names.append(name)
    return names


def unregister(name: str) -> None:
    _REGISTERED.pop(name, None)
    _ORIGIN.pop(name, None)


def list_datasets() -> List[str]:
    """Names known without pattern matching (subset names are derived from these)."""
    return sorted(set(BUILTIN_COCO) | set(SYNTHETIC_NAMES) | set(_REGISTERED) | set(voc_names()))


def _builtin_spec(name: str) -> DatasetSpec:
    root, source = datasets_root()
    rel_json, rel_img = BUILTIN_COCO[name]
    json_file, image_root = os.path.join(root, rel_json), os.path.join(root, rel_img)
    missing = [p for p in (json_file, image_root) if not os.path.exists(p)]
    if missing:
        looked = "\n".join(f"  {p}{'/' if p == image_root else ''} ({'missing' if p in missing else 'found'})"
                           for p in (json_file, image_root))
        raise DatasetNotFoundError(
            f"dataset {name} not found. Looked for:\n{looked}\n"
            f"The datasets root is {root}, from {source}.\n"
            f"Fix: set RETHINK_DATASETS (or DETECTRON2_DATASETS) to the folder that holds coco/, laid out as\n"
            f"  coco/annotations/instances_train2017.json\n  coco/annotations/instances_val2017.json\n"
            f"  coco/train2017/*.jpg\n  coco/val2017/*.jpg\n"
            f"or register your own copy with rethink.data.register_coco_instances(name, json_file, image_root).")
    return DatasetSpec(json_file, image_root, name, "builtin")


def _registered_spec(name: str, create: bool = True) -> DatasetSpec:
    json_file, image_root = _REGISTERED[name]
    origin = _ORIGIN.get(name, "register_coco_instances")
    if not os.path.isfile(json_file):
        raise DatasetNotFoundError(f"dataset {name}: annotation file {json_file} not found (registered with "
                                   f"{origin})")
    if image_root and not os.path.isdir(image_root):
        raise DatasetNotFoundError(f"dataset {name} ({json_file}): image folder {image_root} not found (registered "
                                   f"with {origin})")
    if not image_root and create:  # not named: found beside the json (parses it)
        image_root = find_image_root(json_file, name)
    return DatasetSpec(json_file, image_root, name, "registered")


def _path_spec(path: str, create: bool = True) -> DatasetSpec:
    """A DATASETS.TRAIN / TEST entry that is a json path: the file itself, images found beside it."""
    json_file = absolute(path)
    if not os.path.isfile(json_file):
        raise DatasetNotFoundError(f"dataset {path}: annotation file {json_file} not found (a DATASETS.TRAIN / "
                                   f"DATASETS.TEST entry ending in .json is the path of a COCO-format json)")
    return DatasetSpec(json_file, find_image_root(json_file, path) if create else "", path, "path")


def _made_subset_spec(name: str, base: str, sel: Selection, seed: int) -> Optional[DatasetSpec]:
    """A subset of an unregistered base that tools/make_subsets.py wrote into the cache (its manifest
    names the source json and the image folder); None when there is none."""
    json_file, manifest = subset_paths(base, sel, seed)
    if not (os.path.isfile(json_file) and os.path.isfile(manifest)):
        return None
    source = read_manifest(manifest)["source"]["path"]
    verify_subset(json_file, manifest, source)
    image_root = recorded_image_root(manifest) or find_image_root(source, base)
    return DatasetSpec(json_file, image_root, name, "subset", source, manifest)


def get_dataset_spec(name: str, create: bool = True) -> DatasetSpec:
    """Resolve a dataset name to its files. Subset and synthetic datasets are created on first use
    (unless create=False, then a missing one is a DatasetNotFoundError)."""
    if is_json_path(name):
        return _path_spec(name, create)
    if name in _REGISTERED:
        return _registered_spec(name, create)
    if name in BUILTIN_COCO:
        return _builtin_spec(name)
    if name in SYNTHETIC_NAMES:
        base, split = name.rsplit("_", 1)
        paths = (ensure_synthetic_keypoints(create) if name in SYNTHETIC_KEYPOINT_NAMES
                 else ensure_builtin_synthetic(create, *SYNTHETIC_SIZES[base]))
        return DatasetSpec(paths[split], paths["image_root_" + split], name, "synthetic")
    if is_voc_dataset(name):
        json_file, image_root = voc_dataset_files(name, *datasets_root(), create=create)
        return DatasetSpec(json_file, image_root, name, "voc", evaluator_type="pascal_voc")
    m = SUBSET_RE.match(name)
    if m and (m.group("base") in _REGISTERED or m.group("base") in BUILTIN_COCO or m.group("base") in SYNTHETIC_NAMES
              or is_voc_dataset(m.group("base"))):
        parent = get_dataset_spec(m.group("base"), create=create)
        sel = Selection.parse(m.group("sel"))
        json_file, manifest = ensure_subset(parent.json_file, parent.name, sel, int(m.group("seed")), create=create,
                                            image_root=parent.image_root)
        return DatasetSpec(json_file, parent.image_root, name, "subset", parent.name, manifest,
                           parent.evaluator_type)
    try:
        sel = Selection.parse(m.group("sel")) if m else None
    except ValueError:
        sel = None
    made = _made_subset_spec(name, m.group("base"), sel, int(m.group("seed"))) if sel else None
    if made is not None:
        return made
    known = list_datasets()
    close = difflib.get_close_matches(name, known, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise DatasetNotFoundError(
        f"unknown dataset {name!r}.{hint} Known: {', '.join(known)}; subsets of these as "
        f"<name>_<1of3|1of10|1of100|35k|10k|3.5k|1k>_s<seed>. Your own COCO-format dataset: give the path of its "
        f"json (an entry ending in .json), or name it with {REGISTER_KEY} '((\"{name}\", \"/path/to/instances.json\", "
        f"\"/path/to/images\"),)'.")
