"""The start-up check of a run's datasets, before the first iteration (``rethink.engine.check_run``):
what would otherwise fail only when an image is first sampled, or at the first evaluation after
hours of training.

For every DATASETS.TRAIN and DATASETS.TEST name: the catalog finds its files, its annotation json
parses and validates (the columnar cache of :mod:`rethink.data.coco` is built once here and reused by
every rank), it has annotations (a training set something to learn, a test set ground truth to
evaluate against), and every image file it lists exists (one stat per image, no decoding). A
:class:`DatasetError` names the dataset and its json, and lists the first missing files with their
image ids and how many are missing.

With the model's class count (MODEL.ROI_HEADS.NUM_CLASSES; 0: the first dataset's), every dataset's
category count is checked against it (rethink.data.categories): a model with too few classes would
fail at its first iteration, one with too many only when evaluated, after the whole training.
"""
import logging
import time
from typing import Optional, Sequence

from .catalog import get_dataset_spec
from .categories import check_num_classes
from .coco import CocoDataset
from .errors import DatasetError

logger = logging.getLogger(__name__)

MAX_LISTED = 5  # missing image files shown in the error (then a count)


def check_dataset(name: str, role: str) -> CocoDataset:
    """Check one dataset (`role` is the config key that names it, DATASETS.TRAIN or DATASETS.TEST)."""
    spec = get_dataset_spec(name)
    ds = CocoDataset(name, spec.json_file, spec.image_root)
    if ds.index.meta["num_annotations_in_file"] == 0:
        need = "nothing to train on" if role == "DATASETS.TRAIN" else "no ground truth to evaluate against"
        raise DatasetError(f"{ds.json_file}: dataset {name} (in {role}) has no annotations ('annotations' is empty "
                           f"or absent): {need}")
    if len(ds) == 0:
        raise DatasetError(f"{ds.json_file}: dataset {name} (in {role}) has no images ('images' is empty)")
    ds.verify_images(MAX_LISTED)
    return ds


def check_datasets(train: Sequence[str], test: Sequence[str], num_classes: Optional[int] = None) -> None:
    """Check every dataset of DATASETS.TRAIN (`train`) and DATASETS.TEST (`test`), and with `num_classes`
    (0: from the data) their category counts; see the module doc."""
    t0 = time.perf_counter()
    images = 0
    for role, names in (("DATASETS.TRAIN", train), ("DATASETS.TEST", test)):
        for name in names:
            ds = check_dataset(name, role)
            images += len(ds)
            if num_classes is not None:
                num_classes = num_classes or ds.index.num_classes  # 0: the first dataset's count
                check_num_classes(num_classes, name, role, ds.json_file, ds.index.categories)
    logger.info("Datasets checked in %.1f s: %d of DATASETS.TRAIN, %d of DATASETS.TEST, %d image files present",
                time.perf_counter() - t0, len(train), len(test), images)
