"""The one training loop every training in rethink runs (detectron2's TrainerBase): hooks around
training and around each step, an EventStorage for the step's scalars, and `run_step()` left to the
subclass (the detection trainer, the classification pre-trainer).

    trainer.register_hooks([IterationTimer(), LRScheduler(lr_fn), ...])
    trainer.train(start_iter, max_iter)

`trainer.iter` is the 0-based index of the step being run; `trainer.completed` the number of
iterations done after it (what checkpoints, metrics and schedules count). `check_finite` is the
step's one agreement among the ranks, after backward and before the update: are the losses finite
everywhere, and has any rank received a stop signal (utils.signals)? A stop agreed there ends the
loop after that step: `save_for_stop()` (the subclass's checkpoint), then TrainingStopped. An
evaluation run by a hook stops on the same signals after its batch in progress (`agree_on_stop`,
EvaluationStopped): the loop saves the iteration whose evaluation was abandoned and stops the same
way; the resumed run redoes that evaluation (hooks.EvalHook.before_train).
"""
import logging
from contextlib import nullcontext
from typing import Dict, List, Tuple

import torch

from ..utils.signals import STOP_SIGNALS, EvaluationStopped, StopRequest, TrainingStopped
from . import comm
from .events import EventStorage

logger = logging.getLogger(__name__)
LOG_PERIOD = 20


def check_finite(losses: Dict[str, torch.Tensor], iteration: int, note: str = "", stop: int = 0) -> int:
    """The step's agreement, on every rank after backward and before the update: one reduction of a
    few flags (not finite; each stop signal), one sync, no reduction of the losses themselves. Raises
    FloatingPointError on every rank when the losses of the step that completes `iteration` are NaN or
    inf on any rank (then, only to name the terms in the message, their means over the ranks; `note`
    ends the message: what is kept, what to try). `stop`: the stop signal this rank received (0:
    none); returns the one to act on over all ranks (STOP_SIGNALS' precedence), 0 for none."""
    total = sum(v.detach() for v in losses.values())
    wanted = torch.tensor([int(stop == s) for s in STOP_SIGNALS], device=total.device)
    flags = comm.all_max(torch.cat([(~torch.isfinite(total)).to(torch.int64).view(1), wanted])).tolist()
    if not flags[0]:
        return next((s for s, f in zip(STOP_SIGNALS, flags[1:]) if f), 0)
    terms = ", ".join(f"{k}={v:.4g}" for k, v in comm.reduce_mean(losses).items())
    raise FloatingPointError(f"Loss became non-finite at iteration {iteration}: {terms}. {note}".rstrip())


def agree_on_stop(stop: int, device, *values: int) -> Tuple[int, List[int]]:
    """Outside the step (an evaluation's batches): one all-max over the ranks of this rank's stop
    flags and a few integers `values`; returns the stop signal to act on over all ranks (STOP_SIGNALS'
    precedence, 0 for none) and the maxima of `values`. A collective: every rank calls it equally
    often. On one process, no collective. `device`: where the backend reduces (cuda for NCCL)."""
    flags = [int(stop == s) for s in STOP_SIGNALS] + [int(v) for v in values]
    if comm.get_world_size() > 1:
        flags = comm.all_max(torch.tensor(flags, dtype=torch.int64, device=device)).tolist()
    return next((s for s, f in zip(STOP_SIGNALS, flags) if f), 0), flags[len(STOP_SIGNALS):]


class TrainerBase:
    def __init__(self):
        self.hooks: List = []
        self.start_iter = self.iter = self.max_iter = 0
        self.storage = EventStorage(0, window=LOG_PERIOD)
        self.stop_request = StopRequest()  # what this rank received; installed while train() runs
        self.stop_agreed = 0  # the signal all ranks agreed to stop on (run_step sets it via check_finite)

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
        self.stop_agreed = 0
        stoppable = type(self).save_for_stop is not TrainerBase.save_for_stop  # else signals act as usual
        evaluation_stopped = False
        with self.stop_request if stoppable else nullcontext():
            try:
                self.before_train()
            except EvaluationStopped as e:  # the redone evaluation of a resumed run: nothing trained, nothing to save
                raise TrainingStopped(e.signum, self.completed, None, tuple(self.stop_request.received)) from e
            try:
                for self.iter in range(start_iter, max_iter):
                    self.storage.iter = self.iter + 1
                    self.before_step()
                    self.run_step()
                    self.after_step()
                    if self.stop_agreed and self.completed < max_iter:
                        break
            except EvaluationStopped as e:  # abandoned on every rank at the same batch; nothing of it was logged
                self.stop_agreed, evaluation_stopped = e.signum, True
                logger.warning("The evaluation at iteration %d was stopped (%s); --resume redoes it",
                               self.completed, e)
            finally:
                self.after_train()
            stopped = evaluation_stopped or (bool(self.stop_agreed) and self.completed < max_iter)
            if stopped:  # saved while later stop signals are still only recorded
                path = self.save_for_stop()
                comm.synchronize()  # no rank exits (and gets the job step killed) while rank 0 still writes
        if stopped:
            raise TrainingStopped(self.stop_agreed, self.completed, path, tuple(self.stop_request.received))

    def save_for_stop(self):
        """Save what a resume needs after `completed` iterations (the ranks agreed to stop); returns the
        path rank 0 wrote, or None."""
        raise NotImplementedError

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
