"""Training and test loaders.

    loader = build_train_loader(cfg, rank, world_size, start_iter)   # infinite
    for batch in loader:          # batch: list of IMS_PER_BATCH // world_size sample dicts
        images = [s["image"] for s in batch]; targets = [s["target"] for s in batch]
        ...                       # loader.iteration == number of batches consumed (checkpoint it)

    test = build_test_loader(cfg, "coco_2017_val", rank, world_size)
    for batch in test:            # batch: [one sample dict], this rank's contiguous shard
        ...                       # test.label_to_cat_id maps label i to the COCO category id

Determinism (see rethink.data.samplers): batches and every random draw depend only on (seed, the
iteration, rank, world_size) -- not on SOLVER.MAX_ITER nor DATALOADER.NUM_WORKERS -- and
``start_iter=k`` resumes exactly. The seed is cfg.SEED, or 0 when cfg.SEED < 0 (detectron2's
"random" default would make runs unrepeatable). The state to checkpoint is just the iteration.
"""
import logging
from typing import Dict, List, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..utils.logger import log_once
from ..utils.signals import loader_context, loader_worker_signals
from .catalog import get_dataset_spec
from .coco import CocoDataset, check_same_categories
from .errors import DatasetError
from .keypoints import check_keypoints, visible_keypoints_per_image
from .samplers import BatchStream, sample_generator
from .transforms import DatasetMapper

logger = logging.getLogger(__name__)


def data_seed(cfg) -> int:
    if cfg.SEED >= 0:
        return int(cfg.SEED)
    log_once(logger, "seed", logging.INFO, "cfg.SEED = %s < 0: the data order and augmentation use seed 0", cfg.SEED)
    return 0


def get_dataset(name: str, verify_images: bool = False) -> CocoDataset:
    """The named dataset (catalog lookup + columnar annotation cache)."""
    spec = get_dataset_spec(name)
    return CocoDataset(name, spec.json_file, spec.image_root, verify_images=verify_images)


class TrainingSet:
    """The images of DATASETS.TRAIN that are trained on: global index i -> (dataset, image row).
    `num_keypoints` (MODEL.KEYPOINT_ON): each set must have that many keypoints per annotation, and images with
    fewer than `min_keypoints` labelled ones are skipped (ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE)."""

    def __init__(self, names, filter_empty: bool = True, verify_images: bool = False, min_keypoints: int = 0,
                 num_keypoints: Optional[int] = None):
        if not names:
            raise ValueError("DATASETS.TRAIN is empty")
        self.datasets = [get_dataset(n, verify_images) for n in names]
        check_same_categories(self.datasets)
        ds_of, rows, groups = [], [], []
        for d, ds in enumerate(self.datasets):
            r = np.arange(len(ds), dtype=np.int64)
            if filter_empty:
                usable = ds.index.usable_mask()
                skipped = int((~usable).sum())
                if skipped:
                    log_once(logger, ("filter", ds.name, ds.index.sha256), logging.INFO,
                             "%s: skipping %d of %d images without usable non-crowd instances "
                             "(DATALOADER.FILTER_EMPTY_ANNOTATIONS)", ds.name, skipped, len(ds))
                r = r[usable]
            if num_keypoints is not None:
                check_keypoints(ds, num_keypoints)
            if num_keypoints is not None and min_keypoints > 0:
                enough = visible_keypoints_per_image(ds.index)[r] >= min_keypoints
                if not enough.all():
                    log_once(logger, ("keypoints", ds.name, ds.index.sha256, min_keypoints), logging.INFO,
                             "%s: skipping %d of %d images with fewer than %d labelled keypoints "
                             "(MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE)", ds.name, int((~enough).sum()),
                             len(r), min_keypoints)
                r = r[enough]
            a = ds.index.a
            groups.append((np.asarray(a["width"])[r] <= np.asarray(a["height"])[r]).astype(np.uint8))
            ds_of.append(np.full(len(r), d, dtype=np.int64))
            rows.append(r)
        self.ds_of, self.rows, self.group_ids = np.concatenate(ds_of), np.concatenate(rows), np.concatenate(groups)
        if len(self.rows) == 0:
            what = "; ".join(f"{d.name} ({d.json_file}): {d.describe_annotations()}" for d in self.datasets)
            raise DatasetError(f"DATASETS.TRAIN {list(names)}: no image with a usable non-crowd instance to train on: "
                               f"{what}")

    def __len__(self) -> int:
        return len(self.rows)

    def locate(self, i: int):
        return self.datasets[int(self.ds_of[i])], int(self.rows[i])

    @property
    def label_to_cat_id(self) -> Dict[int, int]:
        return self.datasets[0].label_to_cat_id


class _TrainMapDataset(Dataset):
    def __init__(self, train_set: TrainingSet, mapper: DatasetMapper, seed: int):
        self.train_set, self.mapper, self.seed = train_set, mapper, seed

    def __len__(self):
        return len(self.train_set)

    def __getitem__(self, key):
        i, pos = key
        ds, row = self.train_set.locate(i)
        sample = self.mapper(ds, row, sample_generator(self.seed, pos))
        sample["position"] = int(pos)
        return sample


class _RankBatchSampler:
    """This rank's slots of each global batch, from iteration `start` on (infinite)."""

    def __init__(self, stream: BatchStream, start: int, rank: int, per_rank: int):
        self.stream, self.start, self.rank, self.per_rank = stream, start, rank, per_rank

    def __iter__(self):
        a, b = self.rank * self.per_rank, (self.rank + 1) * self.per_rank
        for _, idx, pos in self.stream.iter_from(self.start):
            yield list(zip(idx[a:b].tolist(), pos[a:b].tolist()))


def trivial_collate(batch):
    return batch


def _worker_init(_):
    """Loader workers: one thread each, and deaf to the signals SLURM sends every process of a job step
    (USR2 before a timeout, TERM on preemption): the trainer process handles them, not the workers
    (utils.signals.loader_worker_signals: their rank can still end them)."""
    torch.set_num_threads(1)
    loader_worker_signals()


class TrainLoader:
    """Infinite iterator of this rank's per-iteration sample lists. ``iteration`` is the number of
    batches consumed so far (start_iter + yielded); resume with ``start_iter=iteration``."""

    def __init__(self, cfg, rank: int, world_size: int, start_iter: int = 0, verify_images: bool = False,
                 seed: Optional[int] = None):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad rank {rank} for world size {world_size}")
        B = int(cfg.SOLVER.IMS_PER_BATCH)
        if B % world_size:
            raise ValueError(f"SOLVER.IMS_PER_BATCH = {B} is not divisible by the world size {world_size}")
        if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
            raise ValueError(f"DATALOADER.SAMPLER_TRAIN {cfg.DATALOADER.SAMPLER_TRAIN!r} is not implemented "
                             f"(only 'TrainingSampler')")
        self.seed = data_seed(cfg) if seed is None else int(seed)
        self.rank, self.world_size, self.ims_per_batch, self.per_rank = rank, world_size, B, B // world_size
        self.num_workers = int(cfg.DATALOADER.NUM_WORKERS)
        # pinned batches let the trainer's non_blocking copies to the GPU overlap with compute
        self.pin_memory = str(cfg.MODEL.DEVICE).startswith("cuda") and torch.cuda.is_available()
        k = cfg.MODEL.ROI_KEYPOINT_HEAD
        self.train_set = TrainingSet(list(cfg.DATASETS.TRAIN), bool(cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS),
                                     verify_images, k.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0,
                                     k.NUM_KEYPOINTS if cfg.MODEL.KEYPOINT_ON else None)
        self.stream = BatchStream(len(self.train_set), B, self.seed,
                                  self.train_set.group_ids if cfg.DATALOADER.ASPECT_RATIO_GROUPING else None)
        self.mapper = DatasetMapper(cfg, is_train=True)
        self.iteration = int(start_iter)
        self.label_to_cat_id = self.train_set.label_to_cat_id

    def _dataloader(self, start: int) -> DataLoader:
        kw = dict(num_workers=self.num_workers, collate_fn=trivial_collate, worker_init_fn=_worker_init,
                  pin_memory=self.pin_memory)
        if self.num_workers > 0:
            kw.update(prefetch_factor=2, multiprocessing_context=loader_context())
        return DataLoader(_TrainMapDataset(self.train_set, self.mapper, self.seed),
                          batch_sampler=_RankBatchSampler(self.stream, start, self.rank, self.per_rank), **kw)

    def __iter__(self):
        for batch in self._dataloader(self.iteration):
            self.iteration += 1
            yield batch

    def batch_keys(self, start_iter: int, num: int) -> List[List[tuple]]:
        """(dataset index, stream position) of this rank's samples for `num` iterations from
        `start_iter`, without loading anything (for inspection and tests)."""
        sampler = iter(_RankBatchSampler(self.stream, start_iter, self.rank, self.per_rank))
        return [next(sampler) for _ in range(num)]


def build_train_loader(cfg, rank: int = 0, world_size: int = 1, start_iter: int = 0,
                       seed: Optional[int] = None) -> TrainLoader:
    """The training loader of this rank (see the module doc); `seed` overrides cfg.SEED (PreciseBN
    draws its batches from a stream of its own)."""
    return TrainLoader(cfg, rank, world_size, start_iter, seed=seed)


class _TestMapDataset(Dataset):
    def __init__(self, dataset: CocoDataset, mapper: DatasetMapper):
        self.dataset, self.mapper = dataset, mapper

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        return self.mapper(self.dataset, int(i))


def shard_range(total: int, rank: int, world_size: int) -> range:
    """Contiguous, balanced shard of `total` items for `rank` (sizes differ by at most one)."""
    sizes = [total // world_size + int(r < total % world_size) for r in range(world_size)]
    begin = sum(sizes[:rank])
    return range(begin, begin + sizes[rank])


class TestLoader:
    """This rank's contiguous shard of a test dataset (every image), batch size 1: yields [sample]."""

    def __init__(self, cfg, dataset_name: str, rank: int = 0, world_size: int = 1):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad rank {rank} for world size {world_size}")
        self.dataset = get_dataset(dataset_name)
        self.dataset_name = dataset_name
        self.json_file = self.dataset.json_file
        self.label_to_cat_id = self.dataset.label_to_cat_id
        self.indices = shard_range(len(self.dataset), rank, world_size)
        self.mapper = DatasetMapper(cfg, is_train=False)
        self.num_workers = int(cfg.DATALOADER.NUM_WORKERS)

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self):
        kw = dict(num_workers=self.num_workers, collate_fn=trivial_collate, worker_init_fn=_worker_init,
                  multiprocessing_context=loader_context() if self.num_workers > 0 else None)
        return iter(DataLoader(_TestMapDataset(self.dataset, self.mapper), batch_size=1,
                               sampler=list(self.indices), **kw))


def build_test_loader(cfg, dataset_name: str, rank: int = 0, world_size: int = 1) -> TestLoader:
    return TestLoader(cfg, dataset_name, rank, world_size)
