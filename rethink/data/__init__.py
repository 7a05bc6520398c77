"""Data: dataset catalog, nested subsets, columnar COCO annotation cache, transforms and loaders.

    from rethink.data import build_train_loader, build_test_loader, get_dataset_spec

Names are imported lazily so that ``import rethink.data.coco`` (e.g. in a rank that only needs the
annotation index) does not import torch.
"""
import importlib

_EXPORTS = {
    "DatasetError": "common", "DatasetNotFoundError": "common", "cache_root": "common",
    "DatasetSpec": "catalog", "get_dataset_spec": "catalog", "register_coco_instances": "catalog",
    "list_datasets": "catalog", "datasets_root": "catalog",
    "Selection": "subsets", "make_subsets": "subsets", "ensure_subset": "subsets", "PAPER_SELECTIONS": "subsets",
    "CocoDataset": "coco", "CocoIndex": "coco", "load_coco_index": "coco",
    "DatasetMapper": "transforms", "resize_shape": "transforms",
    "BatchStream": "samplers",
    "build_train_loader": "build", "build_test_loader": "build", "get_dataset": "build",
    "get_dataset_metadata": "build", "TrainLoader": "build", "TestLoader": "build",
    "make_synthetic_coco": "synthetic", "make_synthetic_classification": "synthetic",
    "register_synthetic_coco": "synthetic",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return __all__
