"""The one training loop every training in rethink runs (detectron2's TrainerBase): hooks around
training and around each step, an EventStorage for the step's scalars, and `run_step()` left to the
subclass (the detection trainer, the classification pre-trainer).

    trainer.register_hooks([IterationTimer(), LRScheduler(lr_fn), ...])
    trainer.train(start_iter, max_iter)

`trainer.iter` is the 0-based index of the step being run; `trainer.completed` the number of
iterations done after it (what checkpoints, metrics and schedules count). `check_finite` is the
step's loss check, after backward and before the update.
"""
import logging
from typing import Dict, List

import torch

from . import comm
from .events import EventStorage

logger = logging.getLogger(__name__)
LOG_PERIOD = 20


def check_finite(losses: Dict[str, torch.Tensor], iteration: int, note: str = "") -> None:
    """Raise FloatingPointError on every rank when the losses of the step that completes `iteration`
    are NaN or inf on any rank: one reduced flag (one sync, no reduction of the losses themselves),
    then, only to name the terms in the message, their means over the ranks. `note` ends the message
    (what is kept, what to try). Call it on every rank, after backward and before the update."""
    if comm.all_true(torch.isfinite(sum(v.detach() for v in losses.values()))):
        return
    terms = ", ".join(f"{k}={v:.4g}" for k, v in comm.reduce_mean(losses).items())
    raise FloatingPointError(f"Loss became non-finite at iteration {iteration}: {terms}. {note}".rstrip())


class TrainerBase:
    def __init__(self):
        self.hooks: List = []
        self.start_iter = self.iter = self.max_iter = 0
        self.storage = EventStorage(0, window=LOG_PERIOD)

    @property
    def completed(self) -> int:
        return self.iter + 1

    def register_hooks(self, hooks) -> None:
        for h in hooks:
            if h is not None:
                h.trainer = self
                self.hooks.append(h)

    def train(self, start_iter: int, max_iter: int) -> None:
        logger.info("Training iterations %d..%d", start_iter, max_iter)
        self.start_iter, self.max_iter = start_iter, max_iter
        self.storage = EventStorage(start_iter, window=LOG_PERIOD)
        self.iter = start_iter - 1  # `completed` == start_iter before the first step
        self.before_train()
        try:
            for self.iter in range(start_iter, max_iter):
                self.storage.iter = self.iter + 1
                self.before_step()
                self.run_step()
                self.after_step()
        finally:
            self.after_train()

    def before_train(self):
        for h in self.hooks:
            h.before_train()

    def after_train(self):
        for h in self.hooks:
            h.after_train()

    def before_step(self):
        for h in self.hooks:
            h.before_step()

    def after_step(self):
        for h in self.hooks:
            h.after_step()

    def run_step(self):
        raise NotImplementedError
