"""The classification trainer of backbone pre-training, on the engine's TrainerBase and hooks.

    trainer = ClassificationTrainer(args, cfg)  # data, model (DDP / SyncBN as the engine wraps it), SGD
    trainer.resume_or_start()                   # --resume: continue from OUTPUT.state.pth if it exists
    trainer.train()                             # epochs x iterations_per_epoch steps
    trainer.write_output()                      # rank 0: OUTPUT.pth + OUTPUT.json

A step is one global batch and `trainer.iter` counts the steps of all epochs (epoch = iter //
iterations_per_epoch), so the LR is :func:`lr_at` of the iteration alone, set by the engine's
LRScheduler. Hooks, in order: IterationTimer; LRScheduler; the engine's EvalHook at the end of every
epoch (train loss / top-1 over all ranks, val top-1 -> the history); MetricsWriter (metrics.jsonl,
TensorBoard, the console) in ``OUTPUT.logs/`` (:func:`log_dir`, with log.txt); :class:`StateCheckpointer`
(the training state at every epoch end, after its evaluation, and every --checkpoint-period
iterations); for tests :class:`StopAfter`. A step checks its loss with the engine's
:func:`rethink.engine.train_loop.check_finite` (all ranks stop at the same step, before the update).
"""
import argparse
import json
import logging
import math
import os
import time
from functools import partial, reduce
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..engine import comm
from ..engine.checkpoint import unwrap
from ..engine.hooks import EvalHook, HookBase, IterationTimer, LRScheduler, MetricsWriter
from ..engine.solver import build_optimizer
from ..engine.train_loop import TrainerBase, check_finite
from ..engine.worker import create_ddp_model, rank_device, set_num_threads
from ..modeling.classifier import ResNetClassifier
from ..utils.atomic import atomic_torch_save, atomic_write_text
from ..utils.logger import setup_logging
from ..weights import sidecar_path, state_path
from .data import VAL_RESIZE_RATIO, build_loaders

logger = logging.getLogger(__name__)

MOMENTUM = 0.9
WARMUP_FACTOR = 0.1  # the LR ramps linearly from WARMUP_FACTOR x LR to LR
STEP_FRACTIONS = (1 / 3, 2 / 3, 8 / 9)  # default step schedule: epochs 30, 60, 80 of 90
STEP_GAMMA = 0.1
STATE_FORMAT = "rethink.pretrain.state"
STATE_VERSION = 1


class ResumeMismatchError(ValueError):
    """--resume with a state file written by a run with other settings."""


class PretrainStopped(RuntimeError):
    """Raised by every rank at --stop-after-iteration (a simulated preemption, for tests)."""


def log_dir(output: str) -> str:
    """Where a run's log.txt, metrics.jsonl and TensorBoard events go: ``r50_gn.pth`` -> ``r50_gn.logs/``."""
    stem, ext = os.path.splitext(output)
    return (stem if ext == ".pth" else output) + ".logs"


def _floats(values) -> List[float]:
    return [float(v) for v in values]


# the body's architecture and input convention: (name in the metadata, detector config key, type)
SPEC_KEYS = (
    ("depth", "MODEL.RESNETS.DEPTH", int), ("norm", "MODEL.RESNETS.NORM", str),
    ("stride_in_1x1", "MODEL.RESNETS.STRIDE_IN_1X1", bool),
    ("stem_out_channels", "MODEL.RESNETS.STEM_OUT_CHANNELS", int),
    ("res2_out_channels", "MODEL.RESNETS.RES2_OUT_CHANNELS", int), ("num_groups", "MODEL.RESNETS.NUM_GROUPS", int),
    ("width_per_group", "MODEL.RESNETS.WIDTH_PER_GROUP", int), ("input_format", "INPUT.FORMAT", str),
    ("pixel_mean", "MODEL.PIXEL_MEAN", _floats), ("pixel_std", "MODEL.PIXEL_STD", _floats),
)


def backbone_spec(cfg) -> Dict[str, object]:
    """{name: value} of SPEC_KEYS, from a detector config."""
    return {name: kind(reduce(getattr, key.split("."), cfg)) for name, key, kind in SPEC_KEYS}


# ------------------------------------------------------------------------------------------------
# optimization: the engine's SGD and parameter groups, a cosine or step LR as a function of the iteration
# ------------------------------------------------------------------------------------------------


def solver_config(cfg, base_lr: float, weight_decay: float):
    """`cfg` with the SOLVER keys of pre-training, for the engine's build_optimizer: SGD with
    momentum 0.9, `weight_decay` on every parameter but those of norm layers."""
    cfg = cfg.clone()
    cfg.defrost()
    s = cfg.SOLVER
    s.BASE_LR, s.MOMENTUM, s.NESTEROV, s.WEIGHT_DECAY = base_lr, MOMENTUM, False, weight_decay
    s.WEIGHT_DECAY_NORM, s.BIAS_LR_FACTOR, s.WEIGHT_DECAY_BIAS = 0.0, 1.0, None
    cfg.freeze()
    return cfg


def step_epochs(args: argparse.Namespace) -> List[int]:
    return list(args.lr_steps) if args.lr_steps else [int(round(args.epochs * f)) for f in STEP_FRACTIONS]


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
    was_training = model.training
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
    model.train(was_training)
    sums = _all_reduce_sum(sums)
    count = max(sums[2].item(), 1.0)
    return {"top1": 100.0 * sums[1].item() / count, "loss": sums[0].item() / count, "images": int(sums[2].item())}


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over the ranks of `t` (left as it is), as a float64 CPU tensor (counts stay exact)."""
    t = t.detach().to("cpu", torch.float64, copy=True)
    if comm.get_world_size() > 1:
        device = torch.device("cuda", torch.cuda.current_device()) if torch.distributed.get_backend() == "nccl" \
            else torch.device("cpu")
        t = t.to(device)
        torch.distributed.all_reduce(t)
        t = t.cpu()
    return t


# ------------------------------------------------------------------------------------------------
# the training state (--resume)
# ------------------------------------------------------------------------------------------------


def run_settings(args: argparse.Namespace, spec: Dict[str, object], classes: Sequence[str],
                 data: Optional[Dict[str, object]] = None) -> Dict[str, object]:
    """What a resumed run must share with the one that wrote the state, named as the user sets it
    (config key or option). `data` adds what is known once the train/ tree has been read (image
    counts, the global batch actually used, iterations per epoch)."""
    settings = {key: spec[name] for name, key, _ in SPEC_KEYS}
    settings.update({
        "--zero-init-residual": bool(args.zero_init_residual), "--size": args.size, "--min-scale": args.min_scale,
        "--epochs": args.epochs, "--batch-size": args.batch_size,
        "--lr": args.lr if args.lr is not None else 0.1 * args.batch_size / 256,
        "--weight-decay": args.weight_decay, "--schedule": args.schedule,
        "--lr-steps": step_epochs(args) if args.schedule == "step" else None,
        "--warmup-epochs": args.warmup_epochs, "--seed": args.seed, "--amp": bool(args.amp),
        "--limit-batches": args.limit_batches, "classes (--data train/ folders)": list(classes),
    })
    settings.update(data or {})
    return settings


def read_state(path: str, mmap: bool = False) -> Dict[str, object]:
    """A training-state file (see :meth:`ClassificationTrainer.save_state`), checked to be one; tensors on the CPU."""
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


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


# ------------------------------------------------------------------------------------------------
# hooks of pre-training (beside the engine's)
# ------------------------------------------------------------------------------------------------


class EpochEval(EvalHook):
    """The engine's EvalHook every epoch (period = iterations per epoch), without its resume rules:
    the state of an epoch end is written after that epoch's evaluation, so a resumed run owes none."""

    def before_train(self):
        pass

    def after_train(self):
        pass


class EpochMetricsWriter(MetricsWriter):
    """The engine's MetricsWriter when the trainer logs: every --log-period iterations, every epoch end."""

    def after_step(self):
        if self.trainer.log_due(self.trainer.completed):
            self.write()


class StateCheckpointer(HookBase):
    """The training state (:meth:`ClassificationTrainer.save_state`) at the end of every epoch and
    every `period` iterations (0: none within an epoch)."""

    def __init__(self, period: int, iters_per_epoch: int):
        self.period, self.iters_per_epoch = period, iters_per_epoch

    def after_step(self):
        done = self.trainer.completed
        if done % self.iters_per_epoch == 0 or (self.period and done % self.period == 0):
            self.trainer.save_state()


class StopAfter(HookBase):
    """Behave as if preempted after `iteration` (after any state due then was written)."""

    def __init__(self, iteration: int):
        self.iteration = iteration

    def after_step(self):
        done = self.trainer.completed
        if done >= self.iteration:
            if comm.is_main_process():
                logger.warning("Stopping after iteration %d as asked by --stop-after-iteration; %s holds the last "
                               "saved state", done, self.trainer.state_file)
            raise PretrainStopped(f"stopped after iteration {done} (--stop-after-iteration {self.iteration})")


# ------------------------------------------------------------------------------------------------
# the trainer
# ------------------------------------------------------------------------------------------------


class ClassificationTrainer(TrainerBase):
    """Trains ResNetClassifier.from_config(cfg) on --data with the options of tools/pretrain_backbone.py."""

    def __init__(self, args: argparse.Namespace, cfg):
        super().__init__()
        self.args, self.cfg, self.spec = args, cfg, backbone_spec(cfg)
        self.rank, self.world_size = comm.get_rank(), comm.get_world_size()
        self.device = rank_device(args.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.data = d = build_loaders(args, self.spec, self.rank, self.world_size)
        self.iters_per_epoch = min(len(d.train), args.limit_batches) if args.limit_batches else len(d.train)
        self.max_iter = self.iters_per_epoch * args.epochs
        self.settings = run_settings(args, self.spec, d.classes, {
            "training images (--data train/)": d.num_train, "validation images (--data val/)": d.num_val,
            "global batch used": d.batch, "iterations per epoch (with --num-gpus)": self.iters_per_epoch})
        self.state_file = state_path(args.output)

        torch.manual_seed(args.seed)  # the same initial weights on every rank
        model = ResNetClassifier.from_config(cfg, len(d.classes), args.zero_init_residual).to(self.device)
        self.model = create_ddp_model(model, self.device)
        self.base_lr = args.lr if args.lr is not None else 0.1 * d.batch / 256
        self.optimizer = build_optimizer(solver_config(cfg, self.base_lr, args.weight_decay), unwrap(self.model))
        self.warmup = int(round(args.warmup_epochs * self.iters_per_epoch))
        self.lr_steps = step_epochs(args)
        self.lr_fn = partial(lr_at, total=self.max_iter, base_lr=self.base_lr, warmup=self.warmup,
                             schedule=args.schedule, steps=[e * self.iters_per_epoch for e in self.lr_steps])
        # the per-epoch rows of the metadata; this rank's [loss sum, correct, images] of the current epoch
        self.history: List[dict] = []
        self.sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        self.time0 = self.epoch_time0 = 0.0  # seconds trained before this process, in the epoch and in all
        self._data = None

    def resume_or_start(self) -> int:
        """With --resume and a state file: load it (every rank) after checking its settings, and
        return its iteration; otherwise 0."""
        args, state_file = self.args, self.state_file
        main = comm.is_main_process()
        if not (args.resume and os.path.isfile(state_file)):
            if args.resume and main:
                logger.info("--resume: no training state %s: starting from scratch", state_file)
            elif main and os.path.isfile(state_file):
                logger.warning("%s (an earlier run's training state) will be overwritten at the end of the first "
                               "epoch; pass --resume to continue that run instead", state_file)
            return 0
        state = read_state(state_file)
        check_resumable(state, self.settings, state_file)
        unwrap(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.start_iter, self.history = int(state["iteration"]), list(state["history"])
        self.time0, self.epoch_time0 = float(state["time_s"]), float(state["epoch_time_s"])
        if main:  # the batches before a mid-epoch state, summed over all ranks
            self.sums += state["epoch_sums"].double().to(self.device)
            for name, was, now in (("--data", state["data"], os.path.abspath(args.data)),
                                   ("--num-gpus (world size)", state["world_size"], self.world_size)):
                if was != now:
                    logger.warning("--resume: %s was %s, now %s (allowed: every iteration gets the same images; "
                                   "with per-GPU BN the statistics are over other numbers of images)", name, was, now)
            logger.info("Resuming from %s: %d/%d epochs and %d batches done, iteration %d", state_file,
                        state["epoch"], args.epochs, state["batch"], self.start_iter)
        return self.start_iter

    def build_hooks(self) -> List[HookBase]:
        args, per_epoch = self.args, self.iters_per_epoch
        hooks = [IterationTimer(), LRScheduler(self.lr_fn), EpochEval(per_epoch, self.end_epoch)]
        if comm.is_main_process():
            hooks.append(EpochMetricsWriter(log_dir(args.output), args.log_period))
        hooks.append(StateCheckpointer(args.checkpoint_period, per_epoch))
        if args.stop_after_iteration:
            hooks.append(StopAfter(args.stop_after_iteration))
        return hooks

    def train(self) -> None:
        self._start = time.perf_counter()
        self._epoch_start = self._start - self.epoch_time0
        if self.rank == 0:
            self._log_plan()
        if self.start_iter >= self.max_iter:
            if self.rank == 0:
                logger.info("%s holds a finished run (%d epochs): writing the output from it without training",
                            self.state_file, self.args.epochs)
            return
        if not self.hooks:
            self.register_hooks(self.build_hooks())
        self.model.train()
        super().train(self.start_iter, self.max_iter)

    def run_step(self) -> None:
        epoch, batch = divmod(self.iter, self.iters_per_epoch)
        if batch == 0 or self._data is None:  # an epoch starts, or resumes after `batch` batches
            self.data.sampler.set_epoch(epoch, batch * self.data.per_rank)
            self._data = iter(self.data.train)
            if batch == 0:
                self._epoch_start = time.perf_counter()
        t0 = time.perf_counter()
        images, labels = next(self._data)
        images, labels = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
        data_time = time.perf_counter() - t0
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.args.amp):
            logits = self.model(images)
        loss = F.cross_entropy(logits.float(), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.stop_agreed = check_finite({"loss": loss}, self.iter + 1, f"{self.state_file} holds the last saved state; "
                                        "lower --lr or lengthen --warmup-epochs", stop=self.stop_request.signum)
        self.optimizer.step()
        with torch.no_grad():
            correct = (logits.argmax(1) == labels).sum()
            self.sums += torch.stack([loss.detach() * labels.numel(), correct,
                                      torch.tensor(labels.numel(), device=self.device)]).double()
        if self.log_due(self.completed):  # this step's loss and top-1 (%), averaged over the ranks
            reduced = comm.reduce_mean({"loss": loss, "top1": correct * (100.0 / labels.numel())})
            self.storage.put_scalars(smoothing=False, **reduced)
        self.storage.put_scalar("data_time", data_time)

    def save_for_stop(self):
        """On a stop signal (SIGTERM / SIGUSR2, agreed by the ranks): the training state at this
        iteration, for --resume; every rank calls it (save_state reduces this epoch's sums)."""
        self.save_state()
        return self.state_file if self.rank == 0 else None

    def log_due(self, done: int) -> bool:
        """Whether metrics are written after `done` iterations: every --log-period, every epoch end."""
        period = self.args.log_period
        return (period > 0 and done % period == 0) or done % self.iters_per_epoch == 0

    def end_epoch(self) -> Dict[str, float]:
        """EvalHook's eval_fn: the epoch's training sums over all ranks, the val top-1, a history row."""
        train = _all_reduce_sum(self.sums)
        self.sums.zero_()
        count = max(train[2].item(), 1.0)
        val = evaluate(unwrap(self.model), self.data.val, self.device, self.args.limit_batches, self.args.amp)
        row = {"epoch": self.completed // self.iters_per_epoch, "iterations": self.completed,
               "loss": train[0].item() / count, "train_top1": 100.0 * train[1].item() / count,
               "val_top1": val["top1"], "val_loss": val["loss"], "lr": self.lr_fn(self.iter),
               "time_s": time.perf_counter() - self._epoch_start}
        self.history.append(row)
        if self.rank == 0:
            logger.info("epoch %d/%d: loss %.4f, train top-1 %.2f%%, val top-1 %.2f%% (val loss %.4f, %d images), "
                        "lr %.4g, %.1f s", row["epoch"], self.args.epochs, row["loss"], row["train_top1"],
                        row["val_top1"], row["val_loss"], val["images"], row["lr"], row["time_s"])
        return {"epoch": row["epoch"], "train_loss": row["loss"], "train_top1": row["train_top1"],
                "val_top1": row["val_top1"], "val_loss": row["val_loss"]}

    def save_state(self) -> None:
        """The training state after `completed` iterations to OUTPUT.state.pth, atomically, for --resume.
        Mid-epoch this rank's sums are all-reduced, so every rank calls this; rank 0 writes. Only tensors,
        dicts, lists, strings, numbers, booleans and None, so ``torch.load(path, weights_only=True)`` reads it:

        - ``format`` ("rethink.pretrain.state"), ``version`` (1)
        - ``settings``: what a resumed run must match (:func:`run_settings`: architecture, input, data,
          batch, epochs, schedule, seed), keyed by the config key or option that sets it
        - ``model``: the classifier's state dict (torchvision names, as the final output), CPU tensors
        - ``optimizer``: SGD's state dict (momentum buffers, param groups)
        - ``epoch``: epochs completed; ``batch``: batches done in the next one (0 at the end of an epoch)
        - ``iteration``: iterations done (epoch x iterations per epoch + batch), the LR schedule's
          position (the next LR is ``lr_at(iteration, ...)`` of the settings); ``lr``: the last LR used
        - ``history``: the per-epoch rows of the sidecar JSON so far
        - ``epoch_sums``: float64 [loss sum, correct, images] of the unfinished epoch over all ranks,
          ``epoch_time_s`` its time so far; ``time_s``: training time so far
        - ``world_size``, ``data`` (absolute --data), ``torch``: informative, may differ on resume

        No RNG state is needed: the data order is a function of (seed, epoch) and each image's
        augmentation of (seed, epoch, index) (:mod:`rethink.pretrain.data`)."""
        done = self.completed
        epoch, batch = divmod(done, self.iters_per_epoch)
        sums = _all_reduce_sum(self.sums) if batch else torch.zeros(3, dtype=torch.float64)
        if self.rank != 0:
            return
        now = time.perf_counter()
        atomic_torch_save({
            "format": STATE_FORMAT, "version": STATE_VERSION, "settings": self.settings,
            "model": {k: v.detach().cpu() for k, v in unwrap(self.model).state_dict().items()},
            "optimizer": _to_cpu(self.optimizer.state_dict()),
            "epoch": epoch, "batch": batch, "iteration": done, "lr": self.lr_fn(done - 1),
            "history": list(self.history),
            "epoch_sums": sums, "epoch_time_s": now - self._epoch_start if batch else 0.0,
            "time_s": self.time0 + now - self._start, "world_size": self.world_size,
            "data": os.path.abspath(self.args.data), "torch": str(torch.__version__),
        }, self.state_file)
        logger.info("Saved the training state %s (%d epochs + %d batches, iteration %d)", self.state_file, epoch, batch,
                    done)

    def _log_plan(self) -> None:
        args, spec, d = self.args, self.spec, self.data
        logger.info("Pre-training ResNet-%d (%s, stride_in_1x1 %s, stem %d, res2 %d) on %s: %d classes, %d train / %d "
                    "val images, %d px crops, %s input (0..255) with mean %s, std %s", spec["depth"], spec["norm"],
                    spec["stride_in_1x1"], spec["stem_out_channels"], spec["res2_out_channels"], args.data,
                    len(d.classes), d.num_train, d.num_val, args.size, spec["input_format"], spec["pixel_mean"],
                    spec["pixel_std"])
        logger.info("%d epochs x %d iterations, global batch %d on %d rank(s) (%s), LR %g, %s schedule%s, warm-up %d "
                    "iterations, weight decay %g (not on norms), seed %d; logs and metrics in %s", args.epochs,
                    self.iters_per_epoch, d.batch, self.world_size, self.device.type, self.base_lr, args.schedule,
                    f" (x0.1 at epochs {self.lr_steps})" if args.schedule == "step" else "", self.warmup,
                    args.weight_decay, args.seed, log_dir(args.output))

    def result(self) -> Dict[str, object]:
        """The metadata of the finished run (the sidecar JSON)."""
        args, spec, history = self.args, self.spec, self.history
        output = os.path.abspath(args.output)
        return {
            "format": "torchvision",
            "arch": f"resnet{spec['depth']}",
            **{k: spec[k] for k in ("depth", "norm", "stride_in_1x1", "stem_out_channels", "res2_out_channels",
                                    "num_groups", "width_per_group")},
            "num_classes": len(self.data.classes), "classes": list(self.data.classes),
            "input": {"format": spec["input_format"], "scale": "0..255", "pixel_mean": spec["pixel_mean"],
                      "pixel_std": spec["pixel_std"], "size": args.size, "min_scale": args.min_scale,
                      "val_resize": int(round(args.size / VAL_RESIZE_RATIO))},
            "epochs": args.epochs, "iterations": self.max_iter, "batch_size": self.data.batch, "lr": self.base_lr,
            "schedule": args.schedule, "lr_steps": self.lr_steps if args.schedule == "step" else None,
            "warmup_iters": self.warmup, "zero_init_residual": bool(args.zero_init_residual),
            "weight_decay": args.weight_decay, "seed": args.seed, "world_size": self.world_size,
            "device": self.device.type, "amp": bool(args.amp), "limit_batches": args.limit_batches,
            "config": os.path.abspath(args.config), "data": os.path.abspath(args.data),
            "val_top1": history[-1]["val_top1"], "best_val_top1": max(h["val_top1"] for h in history),
            "train_top1": history[-1]["train_top1"], "loss": history[-1]["loss"], "history": history,
            "time_s": self.time0 + time.perf_counter() - self._start, "torch": torch.__version__,
            "checkpoint": output,
            "detector_overrides": ["MODEL.WEIGHTS", output,
                                   *(s for name, key, _ in SPEC_KEYS for s in (key, str(spec[name])))],
        }

    def write_output(self) -> Dict[str, object]:
        """Rank 0 writes the torchvision-named state dict to --output and the metadata next to it
        (both atomically); returns the metadata."""
        meta = self.result()
        if self.rank == 0:
            save(unwrap(self.model), meta, self.args.output)
            logger.info("Kept the training state %s: --resume with it rewrites %s without training; delete it once "
                        "done", self.state_file, self.args.output)
        return meta


def save(model: nn.Module, meta: Dict[str, object], output: str) -> None:
    """The plain torchvision-named state dict to `output`, `meta` to its sidecar JSON; both atomic."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_torch_save(state, output)
    atomic_write_text(sidecar_path(output), json.dumps(meta, indent=1) + "\n")
    logger.info("Saved %s (%d tensors, val top-1 %.2f%%) and %s; use it in a detector with %s", output, len(state),
                meta["val_top1"], sidecar_path(output), " ".join(meta["detector_overrides"]))


def train_worker(args: argparse.Namespace, cfg) -> Dict[str, object]:
    """What every rank runs (the engine's launch starts it); returns the metadata."""
    setup_logging(log_dir(args.output), comm.get_rank())
    set_num_threads()
    trainer = ClassificationTrainer(args, cfg)
    trainer.resume_or_start()
    trainer.train()
    result = trainer.write_output()
    comm.synchronize()
    return result
