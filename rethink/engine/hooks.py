"""Hooks that give the training loop its behaviour (detectron2's design): timing, LR schedule,
checkpoints, PreciseBN, periodic evaluation and metric writers. The loop itself is trainer.py."""
import logging
import time

import torch

from ..utils.rundir import FINAL_CHECKPOINT, RunDir, checkpoint_name
from . import comm
from .events import JSONWriter, TensorboardWriter, format_eta
from .solver import lr_at, set_lr

logger = logging.getLogger(__name__)


class HookBase:
    """Called by the trainer around training and each step. `self.trainer.iter` is the 0-based step
    index; `self.trainer.completed` the number of iterations done after that step."""

    trainer = None

    def before_train(self):
        pass

    def after_train(self):
        pass

    def before_step(self):
        pass

    def after_step(self):
        pass


class IterationTimer(HookBase):
    """Each step's time into the storage; the first `announce` steps also logged at once (with the
    ETA they imply), so a slow machine shows progress long before the first metrics line."""

    def __init__(self, announce: int = 3):
        self.announce = announce

    def before_train(self):
        self._start = time.perf_counter()
        self._first_iter = self.trainer.start_iter

    def before_step(self):
        self._step_start = time.perf_counter()

    def after_step(self):
        took = time.perf_counter() - self._step_start
        self.trainer.storage.put_scalar("time", took)
        t = self.trainer
        if t.completed - self._first_iter <= self.announce:
            logger.info("iteration %d/%d took %.2f s; at that pace the rest takes %s", t.completed, t.max_iter, took,
                        format_eta(took * (t.max_iter - t.completed)))

    def after_train(self):
        done = self.trainer.completed - self._first_iter
        total = time.perf_counter() - self._start
        if done > 0:
            logger.info("Trained %d iterations in %s (%.3f s/iter)", done, format_eta(total), total / done)


class LRScheduler(HookBase):
    """Sets the LR of each step from the iteration alone: `lr_fn(iteration)` if given, else the
    config's schedule (`lr_at(trainer.cfg, iteration)`: warm-up, then x GAMMA at each STEP)."""

    def __init__(self, lr_fn=None):
        self.lr_fn = lr_fn

    def before_step(self):
        it = self.trainer.iter
        lr = self.lr_fn(it) if self.lr_fn is not None else lr_at(self.trainer.cfg, it)
        set_lr(self.trainer.optimizer, lr)
        self.trainer.storage.put_scalar("lr", lr, smoothing=False)


class PeriodicCheckpointer(HookBase):
    """`model_XXXXXXX.pth` every `period` completed iterations (and at any of `extra_iters`),
    `model_final.pth` at the end."""

    def __init__(self, checkpointer, period: int, extra_iters=()):
        self.checkpointer, self.period, self.extra_iters = checkpointer, period, set(extra_iters)

    def after_step(self):
        done, t = self.trainer.completed, self.trainer
        if done >= t.max_iter:
            self.checkpointer.save(FINAL_CHECKPOINT, done, seed=t.cfg.SEED)
        elif (self.period > 0 and done % self.period == 0) or done in self.extra_iters:
            self.checkpointer.save(checkpoint_name(done), done, seed=t.cfg.SEED)


class EvalHook(HookBase):
    """Runs `eval_fn()` every `period` completed iterations and at the end, puts its flat
    {"bbox/AP": ...} results into the storage at that iteration. An evaluation stopped by a signal
    (EvaluationStopped, out of eval_fn) puts nothing: the training saves that iteration and stops, and
    the resumed run evaluates it first (before_train)."""

    def __init__(self, period: int, eval_fn):
        self.period, self.eval_fn = period, eval_fn
        self._last = None

    def before_train(self):
        """A run resumed (or forked) at an evaluation iteration whose AP never reached metrics.jsonl
        (preempted during that evaluation) evaluates it first; MetricsWriter.before_train logs it."""
        t = self.trainer
        done = t.start_iter
        if done == 0 or not (done >= t.max_iter or (self.period > 0 and done % self.period == 0)):
            return
        if not comm.broadcast(comm.is_main_process() and RunDir(t.cfg.OUTPUT_DIR).ap_logged_at(done)):
            self._do_eval()

    def _do_eval(self):
        results = self.eval_fn()
        if results:
            self.trainer.storage.put_scalars(smoothing=False, **results)
        self._last = self.trainer.completed
        comm.synchronize()

    def after_step(self):
        done = self.trainer.completed
        if done >= self.trainer.max_iter or (self.period > 0 and done % self.period == 0):
            self._do_eval()

    def after_train(self):
        t = self.trainer
        if self._last != t.completed and t.completed >= t.max_iter and not t.stop_agreed:
            self._do_eval()


class PreciseBN(HookBase):
    """Recompute BatchNorm statistics over `num_iter` training batches before each evaluation
    (TEST.PRECISE_BN), with fvcore's update_bn_stats. Skipped when the model has no BatchNorm."""

    def __init__(self, period: int, model, data_loader_fn, num_iter: int):
        from fvcore.nn.precise_bn import get_bn_modules

        self.period, self.model, self.data_loader_fn, self.num_iter = period, model, data_loader_fn, num_iter
        self.enabled = len(get_bn_modules(model)) > 0
        if not self.enabled:
            logger.info("PreciseBN is disabled: the model has no trainable BatchNorm")

    def after_step(self):
        done = self.trainer.completed
        if self.enabled and (done >= self.trainer.max_iter or (self.period > 0 and done % self.period == 0)):
            self.update_stats()

    def update_stats(self):
        from fvcore.nn.precise_bn import update_bn_stats

        logger.info("Recomputing BatchNorm statistics over %d iterations (PreciseBN)", self.num_iter)
        with torch.no_grad():
            update_bn_stats(self.model, self.data_loader_fn(self.trainer.completed), self.num_iter)


class MetricsWriter(HookBase):
    """Every `period` iterations, at evaluations and at the end: one line to metrics.jsonl, scalars
    to TensorBoard, and a console line with losses, lr, s/iter, data time and ETA. Rank 0 only."""

    def __init__(self, output_dir: str, period: int = 20, tensorboard: bool = True):
        run = RunDir(output_dir)
        self.period = period
        self.json = JSONWriter(run.metrics_file)
        self.tb = TensorboardWriter(run.tensorboard_dir) if tensorboard else None
        self._written = None

    def before_train(self):
        """What hooks put before the first step (an evaluation redone at the start iteration: EvalHook),
        one line; once, also when no step follows (after_train sees it written)."""
        if self.trainer.storage.scalars_at(self.trainer.completed):
            self.write()

    def after_step(self):
        done = self.trainer.completed
        evaluated = any(k.endswith("/AP") for k in self.trainer.storage.scalars_at(done))
        if done % self.period == 0 or done >= self.trainer.max_iter or evaluated:
            self.write()

    def write(self):
        storage, done = self.trainer.storage, self.trainer.completed
        scalars = storage.scalars_at(done)
        if "time" in storage.history and len(storage.history["time"]):
            remaining = self.trainer.max_iter - done
            scalars["eta_seconds"] = round(storage.median("time") * remaining, 1)
        self.json.write(done, scalars)
        images = storage.pop_images()
        if self.tb:
            self.tb.write(done, scalars)
            self.tb.write_images(images)  # an evaluation's predictions (Trainer.test)
        self._written = done
        losses = "  ".join(f"{k}: {v:.4g}" for k, v in scalars.items() if "loss" in k)
        aps = "  ".join(f"{k}: {v:.2f}" for k, v in scalars.items() if k.endswith("/AP"))
        timing = ""
        if "time" in scalars:
            timing = f"  time: {scalars['time']:.3f}  data_time: {scalars.get('data_time', 0):.3f}"
        eta = f"eta: {format_eta(scalars['eta_seconds'])}  " if "eta_seconds" in scalars else ""
        lr = f"  lr: {scalars['lr']:.5g}" if "lr" in scalars else ""
        logger.info("%siter: %d/%d  %s%s%s  %s", eta, done, self.trainer.max_iter, losses, timing, lr, aps)

    def after_train(self):
        if self._written != self.trainer.completed and self.trainer.storage.scalars_at(self.trainer.completed):
            self.write()
        if self.tb:
            self.tb.close()
