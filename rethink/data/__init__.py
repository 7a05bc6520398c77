"""Data: dataset catalog, nested subsets, columnar COCO annotation cache, synthetic sets (this package's
face imports no torch, so a rank opens its annotation index in a fraction of a second); the mapper
and the loaders, which need torch, are imported from their modules:

    from rethink.data import get_dataset_spec, load_coco_index
    from rethink.data.build import build_train_loader, build_test_loader
"""
from .catalog import DatasetSpec, datasets_root, get_dataset_spec, list_datasets, register_coco_instances
from .coco import CocoDataset, CocoIndex, load_coco_index
from .errors import DatasetError, DatasetNotFoundError
from .preflight import check_datasets
from .subsets import PAPER_SELECTIONS, Selection, ensure_subset, make_subsets
from .synthetic import make_synthetic_classification, make_synthetic_coco

__all__ = [
    "CocoDataset", "CocoIndex", "DatasetError", "DatasetNotFoundError", "DatasetSpec", "PAPER_SELECTIONS", "Selection",
    "check_datasets", "datasets_root", "ensure_subset", "get_dataset_spec", "list_datasets", "load_coco_index",
    "make_subsets", "make_synthetic_classification", "make_synthetic_coco", "register_coco_instances",
]
