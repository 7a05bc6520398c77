"""The command line of tools/pretrain_backbone.py: options, their checks before any rank starts, and
the launch of the ranks (the engine's launch: NCCL on CUDA, gloo on CPU).

    result = main(["--data", "imagenet/", "--output", "r50_gn.pth", "--num-gpus", "8"])
"""
import argparse
import json
import logging
import os
import sys
from typing import Dict, Optional, Sequence

import torch

from ..config import load_config
from ..engine.launch import launch
from ..utils.logger import setup_logging
from ..utils.signals import TrainingStopped
from ..weights import sidecar_path, state_path
from .data import class_dirs
from .trainer import SPEC_KEYS, backbone_spec, check_resumable, read_state, run_settings, train_worker

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = "configs/scratch_gn_r50.yaml"
# detector config keys that may be overridden on the command line: those that shape the body or its input
OVERRIDABLE = tuple(key for _, key, _ in SPEC_KEYS)
TRAINABLE_NORMS = ("GN", "BN", "SyncBN")


def build_argument_parser(description: Optional[str] = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description or "Pre-train the detector's ResNet on an ImageFolder",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, metavar="DIR", help="ImageFolder root with train/ and val/ subfolders")
    p.add_argument("--output", required=True, metavar="FILE.pth",
                   help="state dict to write (metadata goes to FILE.json next to it, logs and metrics to FILE.logs/)")
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
    p.add_argument("--log-period", type=int, default=100, metavar="ITERS",
                   help="log training (console, FILE.logs/metrics.jsonl, TensorBoard) every ITERS iterations, "
                        "besides every epoch end (0: epoch ends only)")
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


def resolve(args: argparse.Namespace):
    """Check the command line before any rank starts; returns the detector config the body and its
    input come from. Errors name the option, key or folder at fault."""
    opts = list(args.opts or [])
    if opts and opts[0] == "--":
        opts = opts[1:]
    if len(opts) % 2:
        raise ValueError(f"config overrides come as KEY VALUE pairs, got an odd number: {opts}")
    for key in opts[0::2]:
        if key not in OVERRIDABLE:
            raise ValueError(f"override {key}: only the keys that shape the backbone or its input may be set here "
                             f"({', '.join(OVERRIDABLE)}); other detector keys do not affect pre-training")
    cfg = load_config(args.config, opts)
    spec = backbone_spec(cfg)
    if spec["norm"] not in TRAINABLE_NORMS:
        raise ValueError(f"MODEL.RESNETS.NORM {spec['norm']!r} cannot be pre-trained here: use one of "
                         f"{', '.join(TRAINABLE_NORMS)} (detectors with FrozenBN load BN-pretrained weights)")
    for split in ("train", "val"):
        d = os.path.join(args.data, split)
        if not os.path.isdir(d):
            raise FileNotFoundError(f"--data {args.data}: no {split}/ folder ({d}); expected the ImageFolder layout "
                                    f"{split}/<class>/<image> (ImageNet's val images sorted into class folders)")
    train_classes, val_classes = (class_dirs(os.path.join(args.data, s)) for s in ("train", "val"))
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
    for name in ("checkpoint_period", "stop_after_iteration", "log_period"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 0, got {getattr(args, name)}")
    if args.resume and os.path.isfile(state_path(args.output)):
        # the settings known without reading the whole train/ tree: refused here, before any rank starts
        check_resumable(read_state(state_path(args.output), mmap=True), run_settings(args, spec, train_classes),
                        state_path(args.output))
    return cfg


def pretrain(args: argparse.Namespace, cfg=None) -> Dict[str, object]:
    """Check the arguments (unless `cfg`, :func:`resolve`'s answer, is given), run every rank
    (spawning `--num-gpus` processes if asked) and return the result: the metadata written next to
    the checkpoint."""
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if cfg is None:
        cfg = resolve(args)
    if args.workers is None:
        args.workers = 0 if args.device == "cpu" else min(8, max(1, (os.cpu_count() or 1) // args.num_gpus))
    result = launch(train_worker, num_processes=args.num_gpus, device=args.device, args=(args, cfg))
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
        cfg = resolve(args)
    except (ValueError, OSError, RuntimeError) as e:
        parser.error(str(e))
    try:
        return pretrain(args, cfg)
    except TrainingStopped as e:  # SIGTERM / SIGUSR2: the state is saved at the step the ranks stopped after
        logger.warning("%s; continue with --resume", e)
        sys.exit(e.exit_code)
