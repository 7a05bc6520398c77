"""Checkpoints in the run directory (rethink.utils.rundir names them: one per checkpoint iteration,
a final one, and the pointer naming the one a resume starts from), all written atomically (temp file,
then rename), so a crash never leaves a truncated checkpoint or a pointer to a missing one.

A checkpoint holds the model (without DDP's "module." prefix), the optimizer, the number of
completed iterations, the seed, and the RNG states of this rank.
"""
import logging
import os
import random
from typing import Optional

import numpy as np
import torch

from ..utils.atomic import atomic_torch_save
from ..utils.rundir import RunDir
from ..weights import load_weights

logger = logging.getLogger(__name__)


def unwrap(model):
    return model.module if hasattr(model, "module") else model


def rng_state() -> dict:
    """RNG states as tensors and ints only, so checkpoints load with torch.load(weights_only=True)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": (torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
             "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class Checkpointer:
    """Saves and loads the run's checkpoints. With `keep` > 0, each periodic save removes the older
    periodic checkpoints beyond the newest `keep`, except those at `protected` iterations (the fork
    points that shorter schedules branch from, SOLVER.CHECKPOINT_ITERS); the final one is never removed."""

    def __init__(self, model, output_dir: str, optimizer=None, save_to_disk: bool = True, scaler=None,
                 keep: int = 0, protected=()):
        self.model, self.optimizer, self.output_dir, self.save_to_disk = model, optimizer, output_dir, save_to_disk
        self.scaler = scaler  # AMP GradScaler: its scale must survive a resume too
        self.keep, self.protected = int(keep), {int(k) for k in protected}
        self.run = RunDir(output_dir)

    def path(self, name: str) -> str:
        return self.run.checkpoint_file(name)

    def save(self, name: str, iteration: int, **extra) -> Optional[str]:
        """Write checkpoint `name` (a file stem: rundir.checkpoint_name(k), rundir.FINAL_CHECKPOINT)
        holding `iteration` completed iterations, and point the resume pointer at it."""
        if not self.save_to_disk:
            return None
        data = {"model": unwrap(self.model).state_dict(), "iteration": iteration, "rng": rng_state(), **extra}
        if self.optimizer is not None:
            data["optimizer"] = self.optimizer.state_dict()
        if self.scaler is not None:
            data["scaler"] = self.scaler.state_dict()
        path = self.path(name)
        atomic_torch_save(data, path)
        self.run.set_last_checkpoint(path)
        logger.info("Saved checkpoint %s (iteration %d)", path, iteration)
        if self.keep > 0:
            self._prune(path)
        return path

    def _prune(self, newest: str) -> None:
        """Remove periodic checkpoints beyond the newest `keep` (fork points and `newest` stay)."""
        periodic = [(k, p) for k, p in self.run.checkpoints() if k not in self.protected]
        for k, p in periodic[:-self.keep]:
            if p != newest:
                os.remove(p)
                logger.info("Removed checkpoint %s (SOLVER.CHECKPOINT_KEEP %d)", p, self.keep)

    def last_checkpoint(self) -> Optional[str]:
        """The checkpoint a resume starts from (None when there is none); see RunDir.last_checkpoint."""
        return self.run.last_checkpoint()

    def load_checkpoint(self, path: str) -> dict:
        """Restore model (strict), optimizer and RNG from one of our checkpoints; returns its dict."""
        data = torch.load(path, map_location="cpu", weights_only=True)
        unwrap(self.model).load_state_dict(data["model"])
        if self.optimizer is not None and "optimizer" in data:
            self.optimizer.load_state_dict(data["optimizer"])
        if self.scaler is not None and "scaler" in data:
            self.scaler.load_state_dict(data["scaler"])
        if "rng" in data:
            set_rng_state(data["rng"])
        logger.info("Resumed from %s (iteration %d)", path, data.get("iteration", 0))
        return data

    def resume_or_load(self, weights: str, resume: bool) -> int:
        """With `resume` and a checkpoint in output_dir: restore it and return its iteration.
        Otherwise load `weights` (MODEL.WEIGHTS; any format rethink.weights reads) and return 0."""
        if resume:
            last = self.last_checkpoint()
            if last:
                return int(self.load_checkpoint(last).get("iteration", 0))
            logger.info("No checkpoint in %s: starting from MODEL.WEIGHTS", self.output_dir)
        if weights:
            load_weights(unwrap(self.model), weights)
        return 0
