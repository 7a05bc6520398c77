"""Your own COCO-format dataset, named by its files in the config or on the command line (no Python):

* ``DATASETS.REGISTER``: a list of ``[name, json, image_root]`` (image_root may be left out or "":
  then it is found as below); each name is usable in DATASETS.TRAIN / DATASETS.TEST, and its subsets
  by name (``<name>_1of10_s0``, ``<name>_1k_s0``)::

      DATASETS.REGISTER '(("mine_train", "/data/mine/train.json", "/data/mine/images"),)' \\
      DATASETS.TRAIN '("mine_train",)'

* a DATASETS.TRAIN / DATASETS.TEST entry that is the path of a json (it ends in ``.json``): the
  dataset is that file, its images in the first of these folders that holds the json's first image:
  a folder recorded by a subset manifest beside it (``<stem>.manifest.json``, written by
  tools/make_subsets.py), the json's own folder, ``images/`` beside it, and in the COCO layout
  (``.../annotations/instances_<split>.json``) ``.../<split>/``, ``.../images/`` and ``...``;
* a subset that tools/make_subsets.py wrote into ``$RETHINK_CACHE/subsets/`` (``--json my.json --name
  mine``) is found by its name (``mine_1of10_s0``) even when ``mine`` is not registered: its manifest
  names the source json and the image folder.

Relative paths are taken from the current directory and made absolute when registered.
"""
import json
import os
from typing import List, Optional, Sequence, Tuple

from .coco import load_coco_index
from .errors import DatasetError, DatasetNotFoundError

REGISTER_KEY = "DATASETS.REGISTER"


def is_json_path(name: str) -> bool:
    """A dataset entry that names a json file rather than a dataset."""
    return isinstance(name, str) and name.lower().endswith(".json")


def absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path)) if path else ""


def config_registrations(entries: Sequence, key: str = REGISTER_KEY) -> List[Tuple[str, str, str]]:
    """DATASETS.REGISTER's entries as (name, absolute json, absolute image root or "" to find it);
    a DatasetError names the key and the entry that is not [name, json] or [name, json, image_root]."""
    out = []
    for i, entry in enumerate(entries or ()):
        ok = isinstance(entry, (list, tuple)) and len(entry) in (2, 3) and all(isinstance(x, str) for x in entry)
        if not ok or not entry[0] or not entry[1]:
            raise DatasetError(f"{key}[{i}] = {entry!r}: each entry is [name, json, image_root] (strings; "
                               f"image_root may be left out to find it beside the json)")
        name, json_file, image_root = entry[0], entry[1], entry[2] if len(entry) == 3 else ""
        if not is_json_path(json_file):
            raise DatasetError(f"{key}[{i}]: dataset {name}: {json_file!r} is not a .json file")
        out.append((name, absolute(json_file), absolute(image_root)))
    return out


def _manifest_beside(json_file: str) -> str:
    return os.path.splitext(json_file)[0] + ".manifest.json"


def recorded_image_root(manifest: str) -> Optional[str]:
    """The image folder a subset manifest records (tools/make_subsets.py writes it), or None."""
    try:
        with open(manifest) as f:
            root = json.load(f).get("image_root")
    except (OSError, ValueError, AttributeError):
        return None
    return root or None


def image_root_candidates(json_file: str) -> List[str]:
    """Where the images of `json_file` may be, in the order they are tried (see the module doc)."""
    here = os.path.dirname(os.path.abspath(json_file))
    out = [here, os.path.join(here, "images")]
    if os.path.basename(here) == "annotations":
        parent = os.path.dirname(here)
        stem = os.path.splitext(os.path.basename(json_file))[0]
        split = stem[len("instances_"):] if stem.startswith("instances_") else stem
        out += [os.path.join(parent, split), os.path.join(parent, "images"), parent]
    return out


def find_image_root(json_file: str, dataset: str) -> str:
    """The image folder of a json named without one (see the module doc); DatasetNotFoundError
    listing the folders tried when none holds the json's first image."""
    recorded = recorded_image_root(_manifest_beside(json_file))
    if recorded:
        return recorded
    index = load_coco_index(json_file, dataset)
    candidates = image_root_candidates(json_file)
    if index.num_images == 0:
        return candidates[0]
    first = index.file_name(0)
    for folder in candidates:
        if os.path.isfile(os.path.join(folder, first)):
            return folder
    tried = "\n".join(f"  {os.path.join(c, first)}" for c in candidates)
    raise DatasetNotFoundError(
        f"dataset {dataset} ({json_file}): its image folder was not given and none of the usual places holds its "
        f"first image {first!r} (image id {index.image_id(0)}). Looked for:\n{tried}\n"
        f"Fix: name the folder, e.g. {REGISTER_KEY} '((\"mine\", \"{json_file}\", \"/path/to/images\"),)' and "
        f"use mine in DATASETS.TRAIN / DATASETS.TEST")
