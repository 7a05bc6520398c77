"""Classification pre-training of the detector's own ResNet ("ImageNet pre-training", made here).

    result = pretrain(build_argument_parser().parse_args(["--data", "imagenet/", "--output", "r50_gn.pth"]))

The network is exactly the detector's body, :class:`rethink.modeling.backbone.ResNet`, built from the
MODEL.RESNETS keys of a detector config (DEPTH, NORM, STRIDE_IN_1X1, STEM_OUT_CHANNELS,
RES2_OUT_CHANNELS, NUM_GROUPS, WIDTH_PER_GROUP), nothing frozen, plus global average pooling and an
``fc`` classifier. Images are given to it as the detector gets them: INPUT.FORMAT channel order
(BGR by default), 0..255 scale, normalized with MODEL.PIXEL_MEAN / MODEL.PIXEL_STD of that config.

Data: an ImageNet-layout folder (torchvision ImageFolder): ``DATA/train/<class>/*`` and
``DATA/val/<class>/*`` with the same class folders. Training crops are RandomResizedCrop(size) + a
horizontal flip; validation is a resize to size/0.875 and a center crop.

Optimization: SGD (momentum 0.9, weight decay 1e-4, none on norm parameters), linear warm-up then a
cosine or step schedule, cross-entropy. ``--batch-size`` and ``--lr`` are global (all ranks
together); the default LR is 0.1 x batch / 256 (Goyal et al.); the last norm of every residual block
starts at 0. Ranks: ``--num-gpus N`` processes via :func:`rethink.engine.launch.launch` (NCCL on
CUDA, gloo on CPU) with DistributedDataParallel; SyncBN all-reduces its statistics over gloo on CPU and is torch's
nn.SyncBatchNorm on CUDA.

Output (rank 0 only, each file written atomically):
  - ``OUTPUT.pth``: a plain torchvision-style ResNet state dict (``conv1.weight``, ``bn1.*``,
    ``layer1.0.conv1.weight``, ..., ``fc.weight``, ``fc.bias``), which :func:`rethink.weights.load_weights`
    reads as "torchvision" format: the body goes to ``backbone.body.*``, ``fc.*`` is dropped. So a
    detector uses it with ``MODEL.WEIGHTS OUTPUT.pth`` and the same MODEL.RESNETS keys.
  - ``OUTPUT.json``: what was trained and how (architecture, norm, classes, input format / mean / std,
    schedule, per-epoch history, final val top-1, and ``detector_overrides``: the KEY VALUE pairs that
    give a detector this body and input convention); see :func:`sidecar_path`.

Resuming (preemptible clusters): rank 0 writes ``OUTPUT.state.pth`` (:func:`state_path`, atomically)
at the end of every epoch and, with ``--checkpoint-period N``, every N iterations; it holds the
weights, the optimizer, the position (epochs, batches, iterations: the LR schedule's), the history and
the settings (format: :func:`save_state`). ``--resume`` continues from it on every rank if it exists,
else starts from scratch (and says so); it is refused, naming the file and each differing setting,
if that run had another architecture, input, data, batch, epochs, schedule or seed. A resumed run
trains on the same batches with the same augmentations as an uninterrupted one (the data order is a
function of (seed, epoch), each image's crop and flip of (seed, epoch, index): :class:`EpochSampler`,
:class:`SeededAugmentation`), so it ends with the same weights (bit for bit on CPU; another
``--num-gpus`` gives each iteration the same images). The state file is kept at the end: ``--resume``
on a finished run rewrites the output without training; delete it once done.

Pre-train with the config you will fine-tune with (or give the detector ``detector_overrides``):
channel order and PIXEL_MEAN must agree; PIXEL_STD too with BN (a GN body, whose stem conv has no
bias, is invariant to the input scale).
"""
import argparse
import itertools
import json
import logging
import math
import os
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageOps

from .config import load_config
from .engine import comm
from .engine.checkpoint import unwrap
from .engine.launch import launch
from .modeling.backbone import ResNet
from .modeling.norm import to_torch_syncbn
from .utils.atomic import atomic_torch_save, atomic_write_text
from .utils.logger import setup_logging
from .weights import sidecar_path, state_path

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = "configs/scratch_gn_r50.yaml"
# detector config keys that may be overridden on the command line: they shape the body or its input
OVERRIDABLE = (
    "MODEL.RESNETS.DEPTH", "MODEL.RESNETS.NORM", "MODEL.RESNETS.STRIDE_IN_1X1", "MODEL.RESNETS.STEM_OUT_CHANNELS",
    "MODEL.RESNETS.RES2_OUT_CHANNELS", "MODEL.RESNETS.NUM_GROUPS", "MODEL.RESNETS.WIDTH_PER_GROUP",
    "MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD", "INPUT.FORMAT",
)
TRAINABLE_NORMS = ("GN", "BN", "SyncBN")
MOMENTUM = 0.9
WARMUP_FACTOR = 0.1  # the LR ramps linearly from WARMUP_FACTOR x LR to LR
STEP_FRACTIONS = (1 / 3, 2 / 3, 8 / 9)  # default step schedule: epochs 30, 60, 80 of 90
STEP_GAMMA = 0.1
VAL_RESIZE_RATIO = 0.875  # val: resize the short side to size / 0.875, center crop size
_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)


# ------------------------------------------------------------------------------------------------
# command line and what it resolves to
# ------------------------------------------------------------------------------------------------


def build_argument_parser(description: Optional[str] = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description or "Pre-train the detector's ResNet on an ImageFolder",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, metavar="DIR", help="ImageFolder root with train/ and val/ subfolders")
    p.add_argument("--output", required=True, metavar="FILE.pth",
                   help="state dict to write (metadata goes to FILE.json next to it)")
    p.add_argument("--config", default=DEFAULT_CONFIG, metavar="FILE",
                   help=f"detector config giving MODEL.RESNETS.*, INPUT.FORMAT, MODEL.PIXEL_MEAN/STD "
                        f"(default {DEFAULT_CONFIG})")
    p.add_argument("--size", type=int, default=224, help="crop size in pixels (default 224)")
    p.add_argument("--min-scale", type=float, default=0.08,
                   help="smallest area fraction of RandomResizedCrop (default 0.08)")
    p.add_argument("--epochs", type=int, default=90)
    p.add_argument("--batch-size", type=int, default=256, help="global batch size, all ranks together (default 256)")
    p.add_argument("--lr", type=float, default=None, help="base LR for the global batch (default 0.1 x batch / 256)")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="weight decay; norm parameters get none")
    p.add_argument("--schedule", choices=("cosine", "step"), default="cosine")
    p.add_argument("--lr-steps", type=int, nargs="*", default=None, metavar="EPOCH",
                   help="epochs where the step schedule multiplies the LR by 0.1 (default 1/3, 2/3, 8/9 of --epochs)")
    p.add_argument("--zero-init-residual", action=argparse.BooleanOptionalAction, default=True,
                   help="start the last norm of each residual block at weight 0 (Goyal et al.; default on)")
    p.add_argument("--warmup-epochs", type=float, default=1.0, help="linear warm-up length in epochs (default 1)")
    p.add_argument("--workers", type=int, default=None,
                   help="data loading processes per rank (default: 0 on CPU, where the model needs every core; "
                        "min(8, cores per rank) on CUDA)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available, else cpu")
    p.add_argument("--num-gpus", type=int, default=1,
                   help="ranks: one per GPU, or CPU processes (gloo) with --device cpu")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    p.add_argument("--limit-batches", type=int, default=0, metavar="N",
                   help="at most N train and N val batches per epoch (smoke runs; 0 = all)")
    p.add_argument("--log-period", type=int, default=100, metavar="ITERS", help="log training every ITERS iterations")
    p.add_argument("--resume", action="store_true",
                   help="continue the run saved in OUTPUT.state.pth (written at the end of every epoch) if it exists, "
                        "else start from scratch; refused if that run had other settings (architecture, input, data, "
                        "batch, epochs, schedule, seed)")
    p.add_argument("--checkpoint-period", type=int, default=0, metavar="ITERS",
                   help="also write OUTPUT.state.pth every ITERS iterations within an epoch (default 0: at the end of "
                        "every epoch only); --resume continues mid-epoch, with the batches an uninterrupted run sees")
    # tests: behave as if preempted after iteration N (after writing any state due at N), raising PretrainStopped
    p.add_argument("--stop-after-iteration", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                   help=f"detector config overrides, only these keys: {', '.join(OVERRIDABLE)}")
    return p


def backbone_spec(cfg) -> Dict[str, object]:
    """The body's architecture and input convention, from a detector config."""
    r = cfg.MODEL.RESNETS
    return {
        "depth": int(r.DEPTH), "norm": r.NORM, "stride_in_1x1": bool(r.STRIDE_IN_1X1),
        "stem_out_channels": int(r.STEM_OUT_CHANNELS), "res2_out_channels": int(r.RES2_OUT_CHANNELS),
        "num_groups": int(r.NUM_GROUPS), "width_per_group": int(r.WIDTH_PER_GROUP),
        "input_format": cfg.INPUT.FORMAT, "pixel_mean": [float(v) for v in cfg.MODEL.PIXEL_MEAN],
        "pixel_std": [float(v) for v in cfg.MODEL.PIXEL_STD],
    }


def resolve(args: argparse.Namespace) -> Dict[str, object]:
    """Check the command line before any rank starts; returns the backbone spec. Errors name the
    option, key or folder at fault."""
    opts = list(args.opts or [])
    if opts and opts[0] == "--":
        opts = opts[1:]
    if len(opts) % 2:
        raise ValueError(f"config overrides come as KEY VALUE pairs, got an odd number: {opts}")
    for key in opts[0::2]:
        if key not in OVERRIDABLE:
            raise ValueError(f"override {key}: only the keys that shape the backbone or its input may be set here "
                             f"({', '.join(OVERRIDABLE)}); other detector keys do not affect pre-training")
    spec = backbone_spec(load_config(args.config, opts))
    if spec["norm"] not in TRAINABLE_NORMS:
        raise ValueError(f"MODEL.RESNETS.NORM {spec['norm']!r} cannot be pre-trained here: use one of "
                         f"{', '.join(TRAINABLE_NORMS)} (detectors with FrozenBN load BN-pretrained weights)")
    for split in ("train", "val"):
        d = os.path.join(args.data, split)
        if not os.path.isdir(d):
            raise FileNotFoundError(f"--data {args.data}: no {split}/ folder ({d}); expected the ImageFolder layout "
                                    f"{split}/<class>/<image> (ImageNet's val images sorted into class folders)")
    train_classes, val_classes = (_class_dirs(os.path.join(args.data, s)) for s in ("train", "val"))
    if train_classes != val_classes:
        only = sorted(set(train_classes) ^ set(val_classes))
        raise ValueError(f"--data {args.data}: train/ and val/ must have the same class folders; "
                         f"{len(only)} differ: {only[:10]}")
    for name in ("size", "epochs", "batch_size", "num_gpus"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.batch_size % args.num_gpus:
        raise ValueError(f"--batch-size {args.batch_size} is global: it must be divisible by --num-gpus "
                         f"{args.num_gpus}")
    if not 0 < args.min_scale <= 1:
        raise ValueError(f"--min-scale must be in (0, 1], got {args.min_scale}")
    if (args.device or "") == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda but CUDA is not available; use --device cpu")
    if (args.device or "cpu") == "cuda" and args.num_gpus > torch.cuda.device_count():
        raise RuntimeError(f"--num-gpus {args.num_gpus} but only {torch.cuda.device_count()} CUDA devices are visible")
    for name in ("checkpoint_period", "stop_after_iteration"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 0, got {getattr(args, name)}")
    if args.resume and os.path.isfile(state_path(args.output)):
        # the settings known without reading the whole train/ tree: refused here, before any rank starts
        check_resumable(read_state(state_path(args.output), mmap=True), run_settings(args, spec, train_classes),
                        state_path(args.output))
    return spec


def _class_dirs(root: str) -> List[str]:
    return sorted(e.name for e in os.scandir(root) if e.is_dir())


# ------------------------------------------------------------------------------------------------
# training state (--resume)
# ------------------------------------------------------------------------------------------------

STATE_FORMAT = "rethink.pretrain.state"
STATE_VERSION = 1


class ResumeMismatchError(ValueError):
    """--resume with a state file written by a run with other settings."""


class PretrainStopped(RuntimeError):
    """Raised by every rank at --stop-after-iteration (a simulated preemption, for tests)."""


def run_settings(args: argparse.Namespace, spec: Dict[str, object], classes: Sequence[str],
                 data: Optional[Dict[str, object]] = None) -> Dict[str, object]:
    """What a resumed run must share with the one that wrote the state, named as the user sets it
    (config key or option). `data` adds what is known once the train/ tree has been read (image
    counts, the global batch actually used, iterations per epoch)."""
    settings = {key: spec[name] for key, name in (
        ("MODEL.RESNETS.DEPTH", "depth"), ("MODEL.RESNETS.NORM", "norm"), ("MODEL.RESNETS.STRIDE_IN_1X1", "stride_in_1x1"),
        ("MODEL.RESNETS.STEM_OUT_CHANNELS", "stem_out_channels"),
        ("MODEL.RESNETS.RES2_OUT_CHANNELS", "res2_out_channels"), ("MODEL.RESNETS.NUM_GROUPS", "num_groups"),
        ("MODEL.RESNETS.WIDTH_PER_GROUP", "width_per_group"), ("INPUT.FORMAT", "input_format"),
        ("MODEL.PIXEL_MEAN", "pixel_mean"), ("MODEL.PIXEL_STD", "pixel_std"))}
    settings.update({
        "--zero-init-residual": bool(args.zero_init_residual), "--size": args.size, "--min-scale": args.min_scale,
        "--epochs": args.epochs, "--batch-size": args.batch_size,
        "--lr": args.lr if args.lr is not None else 0.1 * args.batch_size / 256,
        "--weight-decay": args.weight_decay, "--schedule": args.schedule,
        "--lr-steps": _step_epochs(args) if args.schedule == "step" else None,
        "--warmup-epochs": args.warmup_epochs, "--seed": args.seed, "--amp": bool(args.amp),
        "--limit-batches": args.limit_batches, "classes (--data train/ folders)": list(classes),
    })
    settings.update(data or {})
    return settings


def _step_epochs(args: argparse.Namespace) -> List[int]:
    return list(args.lr_steps) if args.lr_steps else [int(round(args.epochs * f)) for f in STEP_FRACTIONS]


def read_state(path: str, mmap: bool = False) -> Dict[str, object]:
    """A training-state file (see :func:`save_state`), checked to be one; tensors on the CPU."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # any unreadable file gets the same explanation
        raise ValueError(f"--resume: cannot read the training state {path}: {e}") from e
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"--resume: {path} is not a training state of rethink.pretrain (no format "
                         f"{STATE_FORMAT!r}); move it away or choose another --output")
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"--resume: {path} has state version {state.get('version')}, this code reads "
                         f"{STATE_VERSION}; start over with another --output")
    return state


def check_resumable(state: Dict[str, object], settings: Dict[str, object], path: str) -> None:
    """Raise :class:`ResumeMismatchError` naming every setting in `settings` that differs from the
    state's (a setting the state lacks counts as differing)."""
    saved = state["settings"]
    missing = object()
    diff = [f"{key} (state: {saved.get(key, missing)!r}, now: {value!r})" if key in saved else
            f"{key} (not in the state, now: {value!r})"
            for key, value in settings.items() if saved.get(key, missing) != value]
    if diff:
        raise ResumeMismatchError(
            f"--resume: {path} was written by a run with other settings, so this run cannot continue it; "
            f"differing: {'; '.join(diff)}. Resume with that run's settings, or start over with another --output "
            f"(or delete {path})")


# ------------------------------------------------------------------------------------------------
# model and data
# ------------------------------------------------------------------------------------------------


class ResNetClassifier(ResNet):
    """The detector's ResNet body + global average pooling + ``fc``. Subclassing keeps the state-dict
    names exactly torchvision's (``conv1.weight``, ``layer1.0.bn1.weight``, ``fc.weight``)."""

    def __init__(self, num_classes: int, depth=50, norm="GN", stem_out=64, res2_out=256, groups=1,
                 width_per_group=64, stride_in_1x1=False, zero_init_residual=True):
        super().__init__(depth=depth, norm=norm, stem_out=stem_out, res2_out=res2_out, groups=groups,
                         width_per_group=width_per_group, stride_in_1x1=stride_in_1x1, freeze_at=0)
        self.fc = nn.Linear(self.out_channels[-1], num_classes)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)
        if zero_init_residual:  # every block starts as the identity: stable training from scratch
            last = "bn2" if depth in (18, 34) else "bn3"
            for name, module in self.named_modules():
                if name.endswith("." + last) and isinstance(module, _NORM_TYPES) and module.weight is not None:
                    nn.init.zeros_(module.weight)

    @classmethod
    def from_spec(cls, spec: Dict[str, object], num_classes: int, zero_init_residual: bool = True):
        return cls(num_classes, depth=spec["depth"], norm=spec["norm"], stem_out=spec["stem_out_channels"],
                   res2_out=spec["res2_out_channels"], groups=spec["num_groups"],
                   width_per_group=spec["width_per_group"], stride_in_1x1=spec["stride_in_1x1"],
                   zero_init_residual=zero_init_residual)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res5 = super().forward(x)["3"]
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(res5, 1), 1))


def load_rgb(path: str) -> Image.Image:
    """RGB PIL image with EXIF orientation applied (as the detector's read_image)."""
    with Image.open(path) as im:
        return ImageOps.exif_transpose(im).convert("RGB")


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


def build_transform(spec: Dict[str, object], size: int, train: bool, min_scale: float = 0.08):
    from torchvision import transforms as T

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
    CPU generator seeded by :func:`sample_seed` (the process's generator state is put back after).
    So an image's crop and flip in an epoch depend on (seed, epoch, index) only: not on the rank,
    the loading process (--workers) or what was loaded before it, and a resumed run (even
    mid-epoch) draws what an uninterrupted one draws."""

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


def build_loaders(args, spec, rank: int, world: int):
    """Train loader (:class:`EpochSampler` over a DistributedSampler: shuffled per epoch, seeded,
    drop_last; augmentations seeded per image by :class:`SeededAugmentation`) and this rank's
    shard of val (every image counted once over the ranks); also the classes, the number of val
    images and the global batch size (--batch-size, or the training set size if that is smaller)."""
    from torch.utils.data import DataLoader, DistributedSampler, Subset
    from torchvision.datasets import ImageFolder

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
    common = dict(num_workers=args.workers, persistent_workers=args.workers > 0, pin_memory=args.device == "cuda")
    train = DataLoader(SeededAugmentation(train_set, args.seed), per_rank, sampler=sampler, drop_last=True,
                       generator=torch.Generator().manual_seed(args.seed + 1000 * rank), **common)
    val = DataLoader(Subset(val_set, list(range(rank, len(val_set), world))), per_rank, shuffle=False, **common)
    return train, val, sampler, train_set.classes, len(val_set), batch


# ------------------------------------------------------------------------------------------------
# optimization
# ------------------------------------------------------------------------------------------------


def param_groups(model: nn.Module, weight_decay: float) -> List[dict]:
    """Two groups: norm parameters without weight decay, everything else with it."""
    norm_params, other = [], []
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if p.requires_grad:
                (norm_params if isinstance(module, _NORM_TYPES) else other).append(p)
    return [{"params": other, "weight_decay": weight_decay}, {"params": norm_params, "weight_decay": 0.0}]


def lr_at(it: int, total: int, base_lr: float, warmup: int, schedule: str, steps: Sequence[int] = ()) -> float:
    """LR of 0-based iteration `it` of `total`: cosine to 0, or x0.1 at each of the iteration `steps`;
    multiplied during the first `warmup` iterations by a linear ramp from WARMUP_FACTOR to 1."""
    if schedule == "cosine":
        factor = 0.5 * (1 + math.cos(math.pi * it / max(total, 1)))
    else:
        factor = STEP_GAMMA ** sum(it >= s for s in steps)
    if it < warmup:
        alpha = it / warmup
        factor *= WARMUP_FACTOR * (1 - alpha) + alpha
    return base_lr * factor


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, limit: int = 0, amp: bool = False) -> Dict[str, float]:
    """Top-1 (%) and mean cross-entropy over the val set, summed over all ranks."""
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, count
    for i, (images, labels) in enumerate(loader):
        if limit and i >= limit:
            break
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(images)
        sums += torch.stack([F.cross_entropy(logits.float(), labels, reduction="sum"),
                             (logits.argmax(1) == labels).sum(), torch.tensor(labels.numel())]).double().cpu()
    sums = _all_reduce_sum(sums)
    count = max(sums[2].item(), 1.0)
    return {"top1": 100.0 * sums[1].item() / count, "loss": sums[0].item() / count, "images": int(sums[2].item())}


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if comm.get_world_size() > 1:
        device = torch.device("cuda", torch.cuda.current_device()) if torch.distributed.get_backend() == "nccl" \
            else torch.device("cpu")
        t = t.to(device)
        torch.distributed.all_reduce(t)
        t = t.cpu()
    return t


# ------------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------------


def train_worker(args: argparse.Namespace, spec: Dict[str, object]) -> Dict[str, object]:
    """What every rank runs; rank 0 writes the checkpoint and its metadata and returns the result."""
    rank, world = comm.get_rank(), comm.get_world_size()
    if world > 1:  # a fresh process per rank: rank 0 logs INFO, the others warnings only
        setup_logging(rank=rank)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if world > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    if args.device == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())  # set per rank by launch
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    else:
        device = torch.device("cpu")

    train_loader, val_loader, sampler, classes, num_val, batch = build_loaders(args, spec, rank, world)
    per_rank = batch // world
    iters_per_epoch = len(train_loader) if not args.limit_batches else min(len(train_loader), args.limit_batches)
    settings = run_settings(args, spec, classes, {
        "training images (--data train/)": len(train_loader.dataset), "validation images (--data val/)": num_val,
        "global batch used": batch, "iterations per epoch (with --num-gpus)": iters_per_epoch})
    state_file = state_path(args.output)
    state = None
    if args.resume and os.path.isfile(state_file):
        state = read_state(state_file)  # every rank reads it: same weights, optimizer and position everywhere
        check_resumable(state, settings, state_file)
    elif args.resume and rank == 0:
        logger.info("--resume: no training state %s: starting from scratch", state_file)
    elif rank == 0 and os.path.isfile(state_file):
        logger.warning("%s (an earlier run's training state) will be overwritten at the end of the first epoch; "
                       "pass --resume to continue that run instead", state_file)

    torch.manual_seed(args.seed)  # same initial weights on every rank (DDP broadcasts rank 0's anyway)
    model = ResNetClassifier.from_spec(spec, len(classes), args.zero_init_residual).to(device)
    if world > 1 and device.type == "cuda":
        model = to_torch_syncbn(model)  # NCCL SyncBN; ours all-reduces over gloo on CPU
    base_lr = args.lr if args.lr is not None else 0.1 * batch / 256
    optimizer = torch.optim.SGD(param_groups(model, args.weight_decay), lr=base_lr, momentum=MOMENTUM)
    # where the run stands: epochs done, batches done in the next epoch, iterations done (the LR
    # schedule's position), per-epoch history, and the partial epoch's sums and time
    epoch0, batch0, it, history, partial, epoch_time0, time0 = 0, 0, 0, [], torch.zeros(3, dtype=torch.float64), 0.0, 0.0
    lr = base_lr
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        epoch0, batch0, it, history = int(state["epoch"]), int(state["batch"]), int(state["iteration"]), \
            list(state["history"])
        partial, epoch_time0, time0, lr = state["epoch_sums"].double(), float(state["epoch_time_s"]), \
            float(state["time_s"]), float(state["lr"])
        if rank == 0:
            for name, was, now in (("--data", state["data"], os.path.abspath(args.data)),
                                   ("--num-gpus (world size)", state["world_size"], world)):
                if was != now:
                    logger.warning("--resume: %s was %s, now %s (allowed: every iteration gets the same images; "
                                   "with per-GPU BN the statistics are over other numbers of images)", name, was, now)
            logger.info("Resuming from %s: %d/%d epochs and %d batches done, iteration %d", state_file, epoch0,
                        args.epochs, batch0, it)
        del state
    net = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    total = iters_per_epoch * args.epochs
    warmup = int(round(args.warmup_epochs * iters_per_epoch))
    step_epochs = _step_epochs(args)
    steps = [e * iters_per_epoch for e in step_epochs]
    if rank == 0:
        logger.info("Pre-training ResNet-%d (%s, stride_in_1x1 %s, stem %d, res2 %d) on %s: %d classes, %d train / %d "
                    "val images, %d px crops, %s input (0..255) with mean %s, std %s", spec["depth"], spec["norm"],
                    spec["stride_in_1x1"], spec["stem_out_channels"], spec["res2_out_channels"], args.data,
                    len(classes), len(train_loader.dataset), num_val, args.size, spec["input_format"],
                    spec["pixel_mean"], spec["pixel_std"])
        logger.info("%d epochs x %d iterations, global batch %d on %d rank(s) (%s), LR %g, %s schedule%s, warm-up %d "
                    "iterations, weight decay %g (not on norms), seed %d", args.epochs, iters_per_epoch,
                    batch, world, device.type, base_lr, args.schedule,
                    f" (x0.1 at epochs {step_epochs})" if args.schedule == "step" else "", warmup,
                    args.weight_decay, args.seed)

    def checkpoint(epoch: int, done: int, sums: Optional[torch.Tensor], epoch_time: float) -> None:
        """The training state after `done` batches of 0-based `epoch` (done == 0: `epoch` epochs
        complete). `sums` (this rank's partial-epoch sums) is all-reduced, so every rank calls this."""
        sums = _all_reduce_sum(sums.cpu()) if sums is not None else torch.zeros(3, dtype=torch.float64)
        if rank == 0:
            save_state(state_file, model=unwrap(net), optimizer=optimizer, settings=settings, epoch=epoch, batch=done,
                       iteration=it, lr=lr, history=history, epoch_sums=sums, epoch_time_s=epoch_time,
                       time_s=time0 + time.perf_counter() - start, world_size=world, data=os.path.abspath(args.data))

    def stop(where: str) -> None:
        if args.stop_after_iteration and it >= args.stop_after_iteration:
            if rank == 0:
                logger.warning("Stopping after iteration %d (%s) as asked by --stop-after-iteration; %s holds the "
                               "last saved state", it, where, state_file)
            raise PretrainStopped(f"stopped after iteration {it} (--stop-after-iteration {args.stop_after_iteration})")

    it0, start = it, time.perf_counter()
    if epoch0 >= args.epochs and rank == 0:
        logger.info("%s holds a finished run (%d epochs): writing the output from it without training", state_file,
                    epoch0)
    for epoch in range(epoch0, args.epochs):
        skip = batch0 if epoch == epoch0 else 0
        sampler.set_epoch(epoch, skip * per_rank)
        net.train()
        t0 = time.perf_counter() - (epoch_time0 if skip else 0.0)
        sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
        if skip and rank == 0:  # the batches before the mid-epoch state, summed over all ranks
            sums += partial.to(device)
        for i, (images, labels) in enumerate(train_loader, start=skip):
            if i >= iters_per_epoch:
                break
            lr = lr_at(it, total, base_lr, warmup, args.schedule, steps)
            for g in optimizer.param_groups:
                g["lr"] = lr
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
                logits = net(images)
            loss = F.cross_entropy(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                sums += torch.stack([loss.detach() * labels.numel(), (logits.argmax(1) == labels).sum(),
                                     torch.tensor(labels.numel(), device=device)]).double()
            it += 1
            if args.log_period and it % args.log_period == 0:
                _check_finite(loss.item(), f"iteration {it}")
                elapsed = time.perf_counter() - start
                if rank == 0:
                    logger.info("epoch %d/%d iter %d/%d: loss %.4f, lr %.4g, %.1f img/s, eta %s", epoch + 1,
                                args.epochs, it, total, loss.item(), lr, (it - it0) * batch / elapsed,
                                _hms(elapsed / (it - it0) * (total - it)))
            if i + 1 < iters_per_epoch:  # the end of the epoch is saved below, after validation
                if args.checkpoint_period and it % args.checkpoint_period == 0:
                    checkpoint(epoch, i + 1, sums, time.perf_counter() - t0)
                stop(f"epoch {epoch + 1}, batch {i + 1}")
        train = _all_reduce_sum(sums.cpu())
        train_loss = train[0].item() / max(train[2].item(), 1.0)
        _check_finite(train_loss, f"epoch {epoch + 1}")
        val = evaluate(model, val_loader, device, args.limit_batches, args.amp)
        row = {"epoch": epoch + 1, "iterations": it, "loss": train_loss,
               "train_top1": 100.0 * train[1].item() / max(train[2].item(), 1.0), "val_top1": val["top1"],
               "val_loss": val["loss"], "lr": lr, "time_s": time.perf_counter() - t0}
        history.append(row)
        if rank == 0:
            logger.info("epoch %d/%d: loss %.4f, train top-1 %.2f%%, val top-1 %.2f%% (val loss %.4f, %d images), "
                        "lr %.4g, %.1f s", epoch + 1, args.epochs, row["loss"], row["train_top1"], row["val_top1"],
                        row["val_loss"], val["images"], row["lr"], row["time_s"])
        checkpoint(epoch + 1, 0, None, 0.0)
        stop(f"end of epoch {epoch + 1}")

    result = {
        "format": "torchvision",
        "arch": f"resnet{spec['depth']}",
        **{k: spec[k] for k in ("depth", "norm", "stride_in_1x1", "stem_out_channels", "res2_out_channels",
                                "num_groups", "width_per_group")},
        "num_classes": len(classes), "classes": list(classes),
        "input": {"format": spec["input_format"], "scale": "0..255", "pixel_mean": spec["pixel_mean"],
                  "pixel_std": spec["pixel_std"], "size": args.size, "min_scale": args.min_scale,
                  "val_resize": int(round(args.size / VAL_RESIZE_RATIO))},
        "epochs": args.epochs, "iterations": it, "batch_size": batch, "lr": base_lr,
        "schedule": args.schedule, "lr_steps": step_epochs if args.schedule == "step" else None,
        "warmup_iters": warmup, "zero_init_residual": bool(args.zero_init_residual),
        "weight_decay": args.weight_decay, "seed": args.seed, "world_size": world,
        "device": device.type, "amp": bool(args.amp), "limit_batches": args.limit_batches,
        "config": os.path.abspath(args.config), "data": os.path.abspath(args.data),
        "val_top1": history[-1]["val_top1"], "best_val_top1": max(h["val_top1"] for h in history),
        "train_top1": history[-1]["train_top1"], "loss": history[-1]["loss"], "history": history,
        "time_s": time0 + time.perf_counter() - start, "torch": torch.__version__,
        "checkpoint": os.path.abspath(args.output),
        "detector_overrides": ["MODEL.WEIGHTS", os.path.abspath(args.output),
                               "MODEL.RESNETS.DEPTH", str(spec["depth"]), "MODEL.RESNETS.NORM", spec["norm"],
                               "MODEL.RESNETS.STRIDE_IN_1X1", str(spec["stride_in_1x1"]),
                               "MODEL.RESNETS.STEM_OUT_CHANNELS", str(spec["stem_out_channels"]),
                               "MODEL.RESNETS.RES2_OUT_CHANNELS", str(spec["res2_out_channels"]),
                               "MODEL.RESNETS.NUM_GROUPS", str(spec["num_groups"]),
                               "MODEL.RESNETS.WIDTH_PER_GROUP", str(spec["width_per_group"]),
                               "INPUT.FORMAT", spec["input_format"], "MODEL.PIXEL_MEAN", str(spec["pixel_mean"]),
                               "MODEL.PIXEL_STD", str(spec["pixel_std"])],
    }
    if rank == 0:
        save(unwrap(net), result, args.output)
        logger.info("Kept the training state %s: --resume with it rewrites %s without training; delete it once "
                    "done", state_file, args.output)
    comm.synchronize()
    return result


def save_state(path: str, model: nn.Module, optimizer: torch.optim.Optimizer, settings: Dict[str, object],
               epoch: int, batch: int, iteration: int, lr: float, history: List[dict], epoch_sums: torch.Tensor,
               epoch_time_s: float, time_s: float, world_size: int, data: str) -> None:
    """Write the training state for --resume, atomically (rank 0 only). Only tensors, dicts, lists,
    strings, numbers, booleans and None, so ``torch.load(path, weights_only=True)`` reads it:

    - ``format`` ("rethink.pretrain.state"), ``version`` (1)
    - ``settings``: what a resumed run must match (:func:`run_settings`: architecture, input, data,
      batch, epochs, schedule, seed), keyed by the config key or option that sets it
    - ``model``: the classifier's state dict (torchvision names, as the final output), CPU tensors
    - ``optimizer``: SGD's state dict (momentum buffers, param groups)
    - ``epoch``: epochs completed; ``batch``: batches done in the next one (0 at the end of an epoch)
    - ``iteration``: iterations done, the LR schedule's position (the next LR is
      ``lr_at(iteration, ...)`` of the settings); ``lr``: the last LR used
    - ``history``: the per-epoch rows of the sidecar JSON so far
    - ``epoch_sums``: float64 [loss sum, correct, images] of the unfinished epoch over all ranks,
      ``epoch_time_s`` its time so far; ``time_s``: training time so far
    - ``world_size``, ``data`` (absolute --data), ``torch``: informative, may differ on resume

    No RNG state is needed: the data order is a function of (seed, epoch) and each image's
    augmentation of (seed, epoch, index) (:class:`EpochSampler`, :class:`SeededAugmentation`)."""
    atomic_torch_save({
        "format": STATE_FORMAT, "version": STATE_VERSION, "settings": settings,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": _to_cpu(optimizer.state_dict()),
        "epoch": epoch, "batch": batch, "iteration": iteration, "lr": float(lr), "history": list(history),
        "epoch_sums": epoch_sums.detach().double().cpu(), "epoch_time_s": float(epoch_time_s), "time_s": float(time_s),
        "world_size": world_size, "data": data, "torch": str(torch.__version__),
    }, path)
    logger.info("Saved the training state %s (%d epochs + %d batches, iteration %d)", path, epoch, batch, iteration)


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def save(model: nn.Module, meta: Dict[str, object], output: str) -> None:
    """The plain torchvision-named state dict to `output`, `meta` to its sidecar JSON; both atomic."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_torch_save(state, output)
    atomic_write_text(sidecar_path(output), json.dumps(meta, indent=1) + "\n")
    logger.info("Saved %s (%d tensors, val top-1 %.2f%%) and %s; use it in a detector with %s", output, len(state),
                meta["val_top1"], sidecar_path(output), " ".join(meta["detector_overrides"]))


def _check_finite(loss: float, where: str) -> None:
    if not math.isfinite(loss):
        raise FloatingPointError(f"{where}: the training loss is {loss}; lower --lr or lengthen --warmup-epochs")


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def pretrain(args: argparse.Namespace, spec: Optional[Dict[str, object]] = None) -> Dict[str, object]:
    """Check the arguments (unless `spec`, :func:`resolve`'s answer, is given), run every rank
    (spawning `--num-gpus` processes if asked) and return the result: the metadata written next to
    the checkpoint."""
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if spec is None:
        spec = resolve(args)
    if args.workers is None:
        args.workers = 0 if args.device == "cpu" else min(8, max(1, (os.cpu_count() or 1) // args.num_gpus))
    result = launch(train_worker, num_processes=args.num_gpus, device=args.device, args=(args, spec))
    if result is None:  # spawned ranks: rank 0 wrote it
        with open(sidecar_path(args.output)) as f:
            result = json.load(f)
    return result


def main(argv: Optional[Sequence[str]] = None, description: Optional[str] = None) -> Dict[str, object]:
    """Entry point of tools/pretrain_backbone.py: bad arguments are usage errors, then :func:`pretrain`."""
    parser = build_argument_parser(description)
    args = parser.parse_args(argv)
    setup_logging()
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        spec = resolve(args)
    except (ValueError, OSError, RuntimeError) as e:
        parser.error(str(e))
    return pretrain(args, spec)
