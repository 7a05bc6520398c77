"""Pre-training data: an ImageFolder tree (``DATA/train/<class>/*``, ``DATA/val/<class>/*``) given to the
network as the detector gets its images (INPUT.FORMAT channel order, 0..255, MODEL.PIXEL_MEAN/STD).

Training: RandomResizedCrop(size) + a horizontal flip, each image's drawn from (seed, epoch, index)
alone (:class:`SeededAugmentation`), in the order of a DistributedSampler seeded by (seed, epoch)
(:class:`EpochSampler`). So a resumed run, even mid-epoch and with another number of loader
processes, trains on the batches an uninterrupted one does. Validation: a resize to size / 0.875
and a center crop, each rank a strided shard.
"""
import itertools
import logging
import os
from typing import List, NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, DistributedSampler, Subset
from torchvision import transforms as T
from torchvision.datasets import ImageFolder

from ..data.images import read_rgb
from ..utils.signals import loader_context, loader_worker_signals

logger = logging.getLogger(__name__)
VAL_RESIZE_RATIO = 0.875  # val: resize the short side to size / 0.875, center crop size


def class_dirs(root: str) -> List[str]:
    return sorted(e.name for e in os.scandir(root) if e.is_dir())


def load_rgb(path: str) -> Image.Image:
    """8-bit RGB PIL image with EXIF orientation applied, converted as the detector's images are
    (rethink.data.images: 16-bit as its high byte, float refused; errors name the file)."""
    return read_rgb(path, os.path.basename(path), f"ImageFolder {os.path.dirname(os.path.dirname(path))}")


class ToDetectorInput:
    """PIL RGB image -> float CHW tensor in `fmt` channel order on the 0..255 scale, normalized with
    the detector's PIXEL_MEAN / PIXEL_STD (given in `fmt` order)."""

    def __init__(self, fmt: str, mean: Sequence[float], std: Sequence[float]):
        if fmt not in ("BGR", "RGB"):
            raise ValueError(f"INPUT.FORMAT must be 'BGR' or 'RGB', got {fmt!r}")
        self.fmt = fmt
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        arr = np.asarray(img, dtype=np.uint8)
        if self.fmt == "BGR":
            arr = arr[:, :, ::-1]
        x = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).float()
        return (x - self.mean) / self.std


def build_transform(spec: dict, size: int, train: bool, min_scale: float = 0.08):
    to_input = ToDetectorInput(spec["input_format"], spec["pixel_mean"], spec["pixel_std"])
    if train:
        return T.Compose([T.RandomResizedCrop(size, scale=(min_scale, 1.0)), T.RandomHorizontalFlip(), to_input])
    return T.Compose([T.Resize(int(round(size / VAL_RESIZE_RATIO))), T.CenterCrop(size), to_input])


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of the augmentation of training image `index` in `epoch` (a 32-bit value: all of
    what the torch CPU generator's Mersenne Twister uses)."""
    return int(np.random.SeedSequence((seed % 2 ** 64, epoch, index)).generate_state(1)[0])


class SeededAugmentation(torch.utils.data.Dataset):
    """``dataset[(epoch, index)]`` is ``base[index]`` with its random augmentation drawn from a torch
    CPU generator seeded by :func:`sample_seed` (the process's generator state is put back after):
    not a function of the rank, the loading process or what was loaded before."""

    def __init__(self, base, seed: int):
        self.base, self.seed = base, seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key):
        epoch, index = key
        saved = torch.get_rng_state()
        torch.default_generator.manual_seed(sample_seed(self.seed, epoch, index))
        try:
            return self.base[index]
        finally:
            torch.set_rng_state(saved)


class EpochSampler(torch.utils.data.Sampler):
    """A DistributedSampler's indices (this rank's share of the shuffle seeded by seed + epoch) as
    ``(epoch, index)`` keys for :class:`SeededAugmentation`; ``set_epoch(epoch, skip)`` drops the
    first `skip` of them (a mid-epoch resume)."""

    def __init__(self, base):
        self.base, self.epoch, self.skip = base, 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.base.set_epoch(epoch)
        self.epoch, self.skip = epoch, skip

    def __iter__(self):
        return ((self.epoch, i) for i in itertools.islice(iter(self.base), self.skip, None))

    def __len__(self) -> int:
        return max(len(self.base) - self.skip, 0)


class Loaders(NamedTuple):
    train: DataLoader  # this rank's batches of an epoch (sampler.set_epoch first)
    val: DataLoader  # this rank's shard of val: every image counted once over the ranks
    sampler: EpochSampler
    classes: List[str]
    num_train: int
    num_val: int
    batch: int  # the global batch: --batch-size, or the training set size (a multiple of the ranks) if smaller
    per_rank: int


def _worker_init(_):
    """Loader workers leave SIGTERM / SIGUSR2 to their rank, which stops at a step boundary with a state."""
    loader_worker_signals()


def build_loaders(args, spec: dict, rank: int, world: int) -> Loaders:
    """The loaders of `--data` for this rank: train shuffled per epoch (seeded), drop_last."""
    train_set = ImageFolder(os.path.join(args.data, "train"), build_transform(spec, args.size, True, args.min_scale),
                            loader=load_rgb)
    val_set = ImageFolder(os.path.join(args.data, "val"), build_transform(spec, args.size, False), loader=load_rgb)
    batch = args.batch_size
    if len(train_set) < batch:
        batch = len(train_set) // world * world
        if batch < world:
            raise ValueError(f"{args.data}/train has {len(train_set)} images, fewer than the {world} ranks")
        if rank == 0:
            logger.warning("--batch-size %d is larger than the training set (%d images): using %d",
                           args.batch_size, len(train_set), batch)
    per_rank = batch // world
    sampler = EpochSampler(DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=args.seed,
                                              drop_last=True))
    common = dict(num_workers=args.workers, persistent_workers=args.workers > 0, pin_memory=args.device == "cuda",
                  worker_init_fn=_worker_init, multiprocessing_context=loader_context() if args.workers > 0 else None)
    train = DataLoader(SeededAugmentation(train_set, args.seed), per_rank, sampler=sampler, drop_last=True,
                       generator=torch.Generator().manual_seed(args.seed + 1000 * rank), **common)
    val = DataLoader(Subset(val_set, list(range(rank, len(val_set), world))), per_rank, shuffle=False, **common)
    return Loaders(train, val, sampler, train_set.classes, len(train_set), len(val_set), batch, per_rank)
