"""Data: dataset catalog, nested subsets, columnar COCO annotation cache, transforms and loaders.

    from rethink.data import build_train_loader, build_test_loader, get_dataset_spec
"""
from .build import TestLoader, TrainLoader, build_test_loader, build_train_loader, get_dataset
from .catalog import DatasetSpec, datasets_root, get_dataset_spec, list_datasets, register_coco_instances
from .coco import CocoDataset, CocoIndex, load_coco_index
from .errors import DatasetError, DatasetNotFoundError
from .samplers import BatchStream
from .subsets import PAPER_SELECTIONS, Selection, ensure_subset, make_subsets
from .synthetic import make_synthetic_classification, make_synthetic_coco
from .transforms import DatasetMapper, resize_shape

__all__ = [
    "BatchStream", "CocoDataset", "CocoIndex", "DatasetError", "DatasetMapper", "DatasetNotFoundError", "DatasetSpec",
    "PAPER_SELECTIONS", "Selection", "TestLoader", "TrainLoader", "build_test_loader", "build_train_loader",
    "datasets_root", "ensure_subset", "get_dataset", "get_dataset_spec", "list_datasets", "load_coco_index",
    "make_subsets", "make_synthetic_classification", "make_synthetic_coco", "register_coco_instances", "resize_shape",
]
