"""Keypoint annotations as detectron2 reads and transforms them (MODEL.KEYPOINT_ON).

- **reading** (detectron2's ``load_coco_json``): COCO's keypoint coordinates are integer pixel indices; each
  x and y gets + 0.5 to become a continuous coordinate (the evaluator subtracts it again).
- **transform** (``transform_keypoint_annotations``): the crop's origin subtracted, x scaled by new_w / w and
  y by new_h / h, x -> new_w - x when flipped; a keypoint outside [0, new_w] x [0, new_h] becomes unlabelled
  (v = 0); a flip swaps each left keypoint with its right one (:func:`flip_indices`); unlabelled keypoints
  are (0, 0, 0).
- **flip pairs**: from the dataset's keypoint names (the json category's ``"keypoints"``), ``left_<part>`` with
  ``right_<part>``: for COCO's person keypoints exactly detectron2's ``COCO_PERSON_KEYPOINT_FLIP_MAP``.
- **filter** (``filter_images_with_few_keypoints``): training images with fewer than
  ``ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE`` labelled (v > 0) keypoints over their annotations are skipped.
"""
import logging
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .errors import DatasetError

logger = logging.getLogger(__name__)

#: COCO's person keypoints, in the order of person_keypoints_*.json
COCO_PERSON_KEYPOINT_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
    "right_ankle",
)
#: COCO's skeleton (1-based keypoint indices, as in the json's category)
COCO_PERSON_SKELETON = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8), (7, 9), (8, 10), (9, 11),
    (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
)
Crop = Tuple[int, int, int, int]  # (y0, x0, h, w) in the original image


def flip_indices(names: Sequence[str]) -> List[int]:
    """Index of each keypoint's mirror image: ``left_x`` <-> ``right_x``, others themselves."""
    names = list(names)
    out = []
    for n in names:
        for a, b in (("left_", "right_"), ("right_", "left_")):
            if n.startswith(a) and b + n[len(a):] in names:
                n = b + n[len(a):]
                break
        out.append(names.index(n))
    return out


def keypoint_names(dataset) -> Optional[List[str]]:
    """The keypoint names of `dataset`'s categories (one list shared by every category that has one), or None."""
    lists = {tuple(c["keypoints"]) for c in dataset.index.categories if c.get("keypoints")}
    if len(lists) > 1:
        raise DatasetError(f"dataset {dataset.name} ({dataset.json_file}): categories name different keypoints; "
                           f"keypoint detection needs one list")
    return list(lists.pop()) if lists else None


def check_keypoints(dataset, num_keypoints: int) -> None:
    """`dataset` has NUM_KEYPOINTS keypoints per annotation (and names for them, if any, as many)."""
    k = dataset.index.num_keypoints
    if k == 0:
        raise DatasetError(f"dataset {dataset.name} ({dataset.json_file}) has no keypoint annotations, which "
                           f"MODEL.KEYPOINT_ON needs (COCO's person_keypoints_*.json have them)")
    if k != num_keypoints:
        raise DatasetError(f"dataset {dataset.name} ({dataset.json_file}) has {k} keypoints per annotation but "
                           f"MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS = {num_keypoints}")
    names = keypoint_names(dataset)
    if names is not None and len(names) != k:
        raise DatasetError(f"dataset {dataset.name} ({dataset.json_file}): its category names {len(names)} keypoints "
                           f"but the annotations have {k}")


def dataset_flip_indices(dataset) -> List[int]:
    """:func:`flip_indices` of `dataset`'s keypoint names; a DatasetError naming the file when it has none
    (detectron2: "Cannot flip keypoints without providing flip indices")."""
    names = keypoint_names(dataset)
    if names is None:
        raise DatasetError(f"dataset {dataset.name} ({dataset.json_file}): its categories name no keypoints, so a "
                           f"horizontal flip cannot swap left and right ones; add the names (a category's "
                           f"'keypoints' list) or set INPUT.RANDOM_FLIP none")
    return flip_indices(names)


def transform_keypoints(kps: np.ndarray, src_hw: Tuple[int, int], new_hw: Tuple[int, int], flip: bool,
                        flip_idx: Optional[Sequence[int]] = None, crop: Optional[Crop] = None) -> np.ndarray:
    """[n, K, 3] COCO keypoints (as in the json) of an image (or crop) of `src_hw` -> float32 [n, K, 3] in the
    network input of `new_hw`, flipped with `flip_idx` (see the module doc)."""
    kps = np.array(kps, dtype=np.float64).reshape(len(kps), -1, 3)
    x, y = kps[..., 0] + 0.5, kps[..., 1] + 0.5
    if crop is not None:
        x, y = x - crop[1], y - crop[0]
    (h, w), (nh, nw) = src_hw, new_hw
    x, y = x * (nw / w), y * (nh / h)
    if flip:
        x = nw - x
    inside = (x >= 0) & (y >= 0) & (x <= nw) & (y <= nh)
    kps[..., 0], kps[..., 1] = x, y
    kps[..., 2][~inside] = 0
    if flip:
        if flip_idx is None or len(flip_idx) != kps.shape[1]:
            raise ValueError(f"flipping {kps.shape[1]} keypoints needs as many flip indices, got {flip_idx}")
        kps = kps[:, np.asarray(flip_idx, dtype=np.int64)]
    kps[kps[..., 2] == 0] = 0
    return kps.astype(np.float32)


def visible_keypoints_per_image(index) -> np.ndarray:
    """[I] int: labelled (v > 0) keypoints over each image's annotations (crowd ones included, as detectron2)."""
    per_ann = (np.asarray(index.a["keypoints"])[:, 2::3] > 0).sum(axis=1)
    cs = np.concatenate([[0], np.cumsum(per_ann)])
    start = np.asarray(index.a["ann_start"])
    return cs[start + np.asarray(index.a["ann_count"])] - cs[start]
