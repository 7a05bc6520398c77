"""Nested, seeded training subsets (the paper's 1/3, 1/10, 1/100 of COCO train and 35k/10k/3.5k/1k images).

Selection, for a source annotation file and a seed:

1. eligible = the sorted ids of the images with at least one usable non-crowd instance, i.e. one that
   the loader keeps (box with w, h > 0 after clipping; a valid polygon or an RLE where a segmentation
   is given) -- the images DATALOADER.FILTER_EMPTY_ANNOTATIONS trains on;
2. perm = ``numpy.random.Generator(numpy.random.PCG64(seed)).permutation(len(eligible))``;
3. a subset of k images = ``sorted(eligible[perm[:k]])``, with k = the count, or for a fraction a/b
   ``max(1, floor(len(eligible) * a / b + 1/2))``.

All subsets of one seed are prefixes of one permutation, so they are nested (1/100 within 1/10 within
1/3, 1k within 3.5k within 10k within 35k). A subset json keeps every top-level field of the source
(info, licenses, all categories) and only the chosen images and all their annotations (crowd included),
sorted by id. It is written deterministically (sorted keys, ``(",", ":")`` separators, ASCII) -- the same
source and seed give a byte-identical file -- and atomically (temporary file + rename), followed by a
manifest ``<name>.manifest.json`` beside it::

    {"format": 1, "name", "file", "source": {"path", "sha256", "size"}, "seed", "fraction": "1/10" | null,
     "count": 10000 | null, "selection": <the rule above>, "num_eligible", "num_images",
     "num_annotations", "sha256": <of the subset json>, "image_root": <the source's image folder> | null}

The image folder lets the catalog find a subset made from a json that no dataset name stands for
(``tools/make_subsets.py --json my.json --name mine``: ``mine_1of10_s0``) by its name alone.

On reuse both are checked: if the source's sha256 differs from the manifest's, or the subset json's
from the recorded one, that is an ERROR (not a silent regeneration: a paper run must not change its
training set under it); the message says to delete the two files or to rerun
``tools/make_subsets.py --force``. Location: ``$RETHINK_CACHE/subsets/`` (default ``~/.cache/rethink``)
unless an output folder is given.
"""
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..utils.atomic import atomic_write_bytes
from ..utils.cache import cache_root, canonical_json_bytes, file_lock, file_sha256, remember_sha256
from .coco import CocoIndex, build_coco_index, read_coco_json
from .errors import DatasetError, DatasetNotFoundError

logger = logging.getLogger(__name__)

MANIFEST_FORMAT = 1
SELECTION_RULE = ("eligible = sorted ids of images with >= 1 usable non-crowd instance; perm = "
                  "numpy.random.Generator(numpy.random.PCG64(seed)).permutation(len(eligible)); "
                  "images = sorted(eligible[perm[:k]]), k = count or max(1, floor(len(eligible) * fraction + 1/2))")


@dataclass(frozen=True)
class Selection:
    """A fraction (num, den) or an absolute image count."""
    fraction: Optional[Tuple[int, int]] = None
    count: Optional[int] = None

    def __post_init__(self):
        if (self.fraction is None) == (self.count is None):
            raise ValueError("Selection: give exactly one of fraction and count")
        if self.fraction is not None:
            a, b = self.fraction
            if not (0 < a <= b):
                raise ValueError(f"Selection: fraction {a}/{b} must be in (0, 1]")
        if self.count is not None and self.count < 1:
            raise ValueError(f"Selection: count {self.count} must be positive")

    @staticmethod
    def parse(text: str) -> "Selection":
        """'1of10' or '1/10' -> fraction; '10k', '3.5k', '1000' -> count."""
        t = str(text).strip().lower()
        m = re.fullmatch(r"(\d+)(?:of|/)(\d+)", t)
        if m:
            return Selection(fraction=(int(m.group(1)), int(m.group(2))))
        m = re.fullmatch(r"(\d+(?:\.\d+)?)k", t)
        if m:
            n = Fraction(m.group(1)) * 1000
            if n.denominator != 1:
                raise ValueError(f"subset size {text!r} is not a whole number of images")
            return Selection(count=int(n))
        if re.fullmatch(r"\d+", t):
            return Selection(count=int(t))
        raise ValueError(f"bad subset selection {text!r}: use a fraction like 1of10 or a count like 10k, 3.5k, 1000")

    @property
    def tag(self) -> str:
        """Canonical name part: 1of10, 35k, 3.5k, 1234."""
        if self.fraction is not None:
            return f"{self.fraction[0]}of{self.fraction[1]}"
        c = self.count
        if c % 1000 == 0:
            return f"{c // 1000}k"
        if c % 100 == 0:
            return f"{c / 1000:g}k"
        return str(c)

    def num_images(self, num_eligible: int) -> int:
        if self.fraction is not None:
            a, b = self.fraction
            k = max(1, (2 * num_eligible * a + b) // (2 * b))
        else:
            k = self.count
        if k < 1 or k > num_eligible:
            raise DatasetError(f"subset {self.tag}: needs {k} images but the source has {num_eligible} eligible images "
                               f"(with at least one usable non-crowd instance)")
        return k


PAPER_SELECTIONS = tuple(Selection.parse(s) for s in ("1of3", "1of10", "1of100", "35k", "10k", "3.5k", "1k"))


def subset_name(base: str, sel: Selection, seed: int) -> str:
    return f"{base}_{sel.tag}_s{seed}"


def subset_paths(base: str, sel: Selection, seed: int, out_dir: Optional[str] = None) -> Tuple[str, str]:
    d = out_dir or os.path.join(cache_root(), "subsets")
    name = subset_name(base, sel, seed)
    return os.path.join(d, name + ".json"), os.path.join(d, name + ".manifest.json")


def subset_permutation(num_eligible: int, seed: int) -> np.ndarray:
    """The one permutation all subsets of `seed` are prefixes of."""
    return np.random.Generator(np.random.PCG64(seed)).permutation(num_eligible)


def choose_image_ids(eligible_ids: np.ndarray, sel: Selection, seed: int) -> np.ndarray:
    eligible_ids = np.sort(np.asarray(eligible_ids, dtype=np.int64))
    k = sel.num_images(len(eligible_ids))
    return np.sort(eligible_ids[subset_permutation(len(eligible_ids), seed)[:k]])


def _load_source(source_json: str):
    """Parse the source once, build/open its annotation cache from the same parse; return
    (data, sha256, eligible image ids)."""
    data, raw = read_coco_json(source_json)
    sha = hashlib.sha256(raw).hexdigest()
    del raw
    remember_sha256(source_json, sha)
    index = CocoIndex(build_coco_index(source_json, sha, data=data), source_json)
    eligible = np.asarray(index.a["image_id"])[index.usable_mask()]
    return data, sha, eligible


def _write_subset(data, source_json: str, source_sha: str, eligible: np.ndarray, base: str, sel: Selection,
                  seed: int, out_dir: Optional[str], image_root: Optional[str] = None) -> Tuple[str, str]:
    json_path, manifest_path = subset_paths(base, sel, seed, out_dir)
    chosen = choose_image_ids(eligible, sel, seed)
    chosen_set = set(chosen.tolist())
    out = {k: v for k, v in data.items() if k not in ("images", "annotations")}
    out["images"] = sorted((im for im in data["images"] if im["id"] in chosen_set), key=lambda im: im["id"])
    out["annotations"] = sorted((a for a in data.get("annotations", []) if a["image_id"] in chosen_set),
                                key=lambda a: a["id"])
    blob = canonical_json_bytes(out)
    digest = hashlib.sha256(blob).hexdigest()
    atomic_write_bytes(json_path, blob)
    remember_sha256(json_path, digest)
    manifest = {
        "format": MANIFEST_FORMAT,
        "name": subset_name(base, sel, seed),
        "file": os.path.basename(json_path),
        "source": {"path": os.path.abspath(source_json), "sha256": source_sha, "size": os.path.getsize(source_json)},
        "seed": seed,
        "fraction": f"{sel.fraction[0]}/{sel.fraction[1]}" if sel.fraction else None,
        "count": sel.count,
        "selection": SELECTION_RULE,
        "num_eligible": int(len(eligible)),
        "num_images": len(out["images"]),
        "num_annotations": len(out["annotations"]),
        "sha256": digest,
        "image_root": os.path.abspath(image_root) if image_root else None,
    }
    atomic_write_bytes(manifest_path, json.dumps(manifest, indent=1, sort_keys=True).encode() + b"\n")
    logger.info("wrote subset %s: %d images, %d annotations -> %s", manifest["name"], manifest["num_images"],
                manifest["num_annotations"], json_path)
    return json_path, manifest_path


def read_manifest(manifest_path: str) -> dict:
    """A subset's manifest; DatasetError naming it when it cannot be read."""
    try:
        with open(manifest_path) as f:
            manifest = json.load(f)
        manifest["source"]["path"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DatasetError(f"{manifest_path}: unreadable subset manifest ({e}); delete it and the subset json "
                           f"beside it to have them made again") from None
    return manifest


def verify_subset(json_path: str, manifest_path: str, source_json: str) -> dict:
    """Check a subset against its manifest and its source; returns the manifest."""
    fix = (f"Delete {json_path} and {manifest_path} to have them made again, or run "
           f"tools/make_subsets.py --force.")
    try:
        with open(manifest_path) as f:
            manifest = json.load(f)
        src_sha = manifest["source"]["sha256"]
        sub_sha = manifest["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DatasetError(f"{manifest_path}: unreadable subset manifest ({e}). {fix}") from None
    now = file_sha256(source_json)
    if now != src_sha:
        raise DatasetError(f"{json_path}: this subset was drawn from {manifest['source'].get('path')} with sha256 "
                           f"{src_sha}, but the source {source_json} now has sha256 {now}. The subset is stale. {fix}")
    got = file_sha256(json_path)
    if got != sub_sha:
        raise DatasetError(f"{json_path}: sha256 {got} differs from the {sub_sha} recorded in {manifest_path}: "
                           f"the subset file was modified or is corrupt. {fix}")
    return manifest


def make_subsets(source_json: str, base: str, selections: Sequence[Selection], seeds: Sequence[int] = (0,),
                 out_dir: Optional[str] = None, force: bool = False,
                 image_root: Optional[str] = None) -> List[Tuple[str, str]]:
    """Create the subsets (all `selections` x `seeds`) of `source_json`, parsing it once. Existing
    ones are verified and kept unless `force`. `image_root`: the source's image folder, recorded in
    the manifest. Returns [(json, manifest)]."""
    source_json = os.path.abspath(source_json)
    if not os.path.isfile(source_json):
        raise DatasetNotFoundError(f"{source_json}: annotation file not found (source of the {base} subsets)")
    results, loaded = [], None
    for seed in seeds:
        for sel in selections:
            json_path, manifest_path = subset_paths(base, sel, seed, out_dir)
            with file_lock(json_path + ".lock"):
                if not force and os.path.isfile(manifest_path) and os.path.isfile(json_path):
                    verify_subset(json_path, manifest_path, source_json)
                    logger.info("subset %s exists and matches its source: %s", subset_name(base, sel, seed), json_path)
                else:
                    if loaded is None:
                        loaded = _load_source(source_json)
                    data, sha, eligible = loaded
                    _write_subset(data, source_json, sha, eligible, base, sel, seed, out_dir, image_root)
            results.append((json_path, manifest_path))
    return results


def ensure_subset(source_json: str, base: str, sel: Selection, seed: int, out_dir: Optional[str] = None,
                  create: bool = True, image_root: Optional[str] = None) -> Tuple[str, str]:
    """The subset's (json, manifest), verified; created first if missing (one process at a time)."""
    json_path, manifest_path = subset_paths(base, sel, seed, out_dir)
    if os.path.isfile(manifest_path) and os.path.isfile(json_path):
        verify_subset(json_path, manifest_path, source_json)
        return json_path, manifest_path
    if not create:
        raise DatasetNotFoundError(f"subset {subset_name(base, sel, seed)} not found: looked for {json_path} and "
                                   f"{manifest_path}; create it with tools/make_subsets.py")
    return make_subsets(source_json, base, [sel], [seed], out_dir, image_root=image_root)[0]
