"""A run's categories: how many classes the model predicts (MODEL.ROI_HEADS.NUM_CLASSES, or 0: from the
data), and which COCO category each predicted label stands for.

Labels are contiguous, 1..K, in the order of the training json's sorted category ids. A checkpoint
keeps that list (``[{"id", "name"}]``, label i = entry i - 1), so an evaluation maps each label back
to a category of the test json even when the test json numbers or orders its categories differently:
by name when every trained name is in the test json (names unique), else by id when every trained id
is, else a :class:`DatasetError` naming the json and what is missing.
"""
import logging
from typing import Dict, List, Optional, Sequence

from .catalog import get_dataset_spec
from .coco import load_coco_index
from .errors import DatasetError

logger = logging.getLogger(__name__)

KEY = "MODEL.ROI_HEADS.NUM_CLASSES"


def dataset_categories(name: str) -> List[dict]:
    """[{"id", "name"}] of dataset `name`, in label order (sorted ids)."""
    spec = get_dataset_spec(name)
    index = load_coco_index(spec.json_file, name)
    return [{"id": int(c["id"]), "name": str(c.get("name", ""))} for c in index.categories]


def describe(categories: Sequence[dict], limit: int = 8) -> str:
    names = [c["name"] or str(c["id"]) for c in categories]
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def num_classes_from_data(train: Sequence[str], test: Sequence[str]) -> int:
    """What NUM_CLASSES 0 stands for: the category count of the first DATASETS.TRAIN dataset (of the first
    DATASETS.TEST one when there is no training set)."""
    names = list(train) or list(test)
    if not names:
        raise DatasetError(f"{KEY} = 0 (from the data) but DATASETS.TRAIN and DATASETS.TEST are empty: nothing to "
                           f"count the categories of; set {KEY} to the number of categories")
    count = len(dataset_categories(names[0]))
    logger.info("%s 0: %d classes, from %s (%s)", KEY, count, get_dataset_spec(names[0]).json_file,
                describe(dataset_categories(names[0])))
    return count


def check_num_classes(num_classes: int, name: str, role: str, json_file: str, categories: Sequence[dict]) -> None:
    """The model's class count against one dataset's categories; the error names the key, its value, the
    json and its category count."""
    if num_classes != len(categories):
        raise DatasetError(
            f"{KEY} = {num_classes}, but {json_file} (dataset {name}, in {role}) has {len(categories)} categories "
            f"({describe(categories)}): the model would predict {num_classes} classes for {len(categories)}. Set "
            f"{KEY} {len(categories)}, or 0 to take it from the training json")


def label_to_category_id(trained: Optional[Sequence[dict]], test: Sequence[dict], json_file: str) -> Dict[int, int]:
    """{label: category id of the test json} for a model trained on `trained` ([{"id", "name"}] in label
    order; None = unknown, e.g. a detectron2 model: the test json's own sorted ids, as detectron2 does)."""
    test_ids = [int(c["id"]) for c in test]
    if not trained:
        return {i + 1: c for i, c in enumerate(sorted(test_ids))}
    by_name = {c["name"]: int(c["id"]) for c in test}
    names = [c["name"] for c in trained]
    if all(names) and len(set(names)) == len(names) and len(by_name) == len(test) and all(n in by_name for n in names):
        mapping = {i + 1: by_name[n] for i, n in enumerate(names)}
        if any(mapping[i + 1] != int(c["id"]) for i, c in enumerate(trained)):
            logger.info("%s numbers its categories differently from the training set: labels mapped by name", json_file)
        return mapping
    if all(int(c["id"]) in set(test_ids) for c in trained):
        missing = [c["name"] for c in trained if c["name"] not in by_name]
        if missing:
            logger.warning("%s: categories %s of the training set are not named there; labels mapped by category id",
                           json_file, missing)
        return {i + 1: int(c["id"]) for i, c in enumerate(trained)}
    absent = [f"{c['id']} {c['name']!r}" for c in trained if c["name"] not in by_name and int(c["id"]) not in test_ids]
    raise DatasetError(f"{json_file}: the model was trained on {len(trained)} categories ({describe(trained)}); "
                       f"{len(absent)} of them are in this json neither by name nor by id: {', '.join(absent[:8])}. "
                       f"Its categories: {describe(test)}")
