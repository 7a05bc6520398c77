"""Stop signals: SIGTERM (preemption, scancel) and SIGUSR2 (SLURM's warning before the time limit,
submitit's `--signal USR2@<delay>`). While a training runs, a stop signal only records itself; the
ranks agree on it at the next step boundary (in the step's one reduction, train_loop.check_finite),
every rank stops after the same iteration, rank 0 saves a checkpoint there and the training raises
:class:`TrainingStopped`. Whoever started the training then exits (tools/train.py) or requeues
(rethink.cluster.jobs: submitit's own handler, restored by then, does the requeue on SIGUSR2).

An evaluation (engine.trainer.inference_on_dataset) reads the StopRequest installed around it
(:func:`current_stop_request`: the training's, or the one main_worker installs for --eval-only) after
every batch; the ranks agree there too, and every rank raises :class:`EvaluationStopped` after the
same batch: no metrics are written, the training saves its iteration and exits as above, and the
resumed run redoes that evaluation first.
"""
import copy
import logging
import multiprocessing
import os
import signal
import threading
from typing import Dict, List, Optional, Tuple

logger = logging.getLogger(__name__)
STOP_SIGNALS = (signal.SIGUSR2, signal.SIGTERM)  # by precedence: USR2 asks for a requeue (submitit sends
# it after TERM when it simulates a preemption), TERM alone leaves the requeue to SLURM


class TrainingStopped(Exception):
    """Training ended early on a stop signal, after saving `checkpoint` at `iteration` (rank 0's path;
    None on the other ranks, or when nothing had to be saved). `received`: the stop signals this
    process got, up to the end of training (a USR2 may follow the TERM that stopped it)."""

    def __init__(self, signum: int, iteration: Optional[int] = None, checkpoint: Optional[str] = None,
                 received: Tuple[int, ...] = ()):
        self.signum, self.iteration, self.checkpoint = int(signum), iteration, checkpoint
        self.received = tuple(received) or (self.signum,)
        at = f" after iteration {iteration}" if iteration is not None else ""
        saved = f"; checkpoint {checkpoint}" if checkpoint else ""
        super().__init__(f"training stopped by {signal.Signals(self.signum).name}{at}{saved}")

    @property
    def handled_as(self) -> int:
        """The signal whose handling the process owes: USR2 if it came at all, else the stopping one."""
        return next((s for s in STOP_SIGNALS if s in self.received), self.signum)

    @property
    def exit_code(self) -> int:
        """What a process stopped by this signal exits with (the shell's 128 + signal number)."""
        return 128 + self.signum


class EvaluationStopped(TrainingStopped):
    """An evaluation ended by a stop signal after `batches` of its `total` batches, on every rank at
    the same batch; nothing was evaluated or written. Out of a training, TrainerBase turns it into
    TrainingStopped after saving the iteration; out of --eval-only it ends the run as it is."""

    def __init__(self, signum: int, batches: int = 0, total: int = 0, received: Tuple[int, ...] = ()):
        super().__init__(signum, received=received)
        self.batches, self.total = batches, total
        self.args = (f"evaluation stopped by {signal.Signals(self.signum).name} after {batches} of {total} "
                     "batches; no results written",)


_INSTALLED: List["StopRequest"] = []  # the StopRequests installed now, innermost last


def current_stop_request() -> Optional["StopRequest"]:
    """The innermost StopRequest installed now (None: stop signals act as usual)."""
    return _INSTALLED[-1] if _INSTALLED else None


class StopRequest:
    """Records stop signals while installed (`with StopRequest() as stop: ... stop.signum`). Only the
    main thread can install signal handlers; elsewhere it records nothing. `action`: what the
    warning on a signal says will happen."""

    def __init__(self, action: str = "stopping after the step or evaluation batch in progress, with a checkpoint"):
        self.received: List[int] = []
        self.action = action
        self._previous: Dict[int, object] = {}

    @property
    def signum(self) -> int:
        """The stop signal to act on (by STOP_SIGNALS' precedence), 0 for none."""
        return next((s for s in STOP_SIGNALS if s in self.received), 0)

    def _handle(self, signum, frame) -> None:
        if signum not in self.received:
            self.received.append(signum)
            logger.warning("Received %s: %s", signal.Signals(signum).name, self.action)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for s in STOP_SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
            _INSTALLED.append(self)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous:
            _INSTALLED.remove(self)
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}


def loader_worker_signals() -> None:
    """For a data loader worker (its worker_init_fn; the worker started from :func:`loader_context`):
    stop signals are its rank's business. SIGUSR2 is ignored; SIGTERM too, except from the worker's
    parent: multiprocessing ends daemonic workers with SIGTERM when the rank exits (a worker deaf to it
    would hang that exit), while SLURM's SIGTERM to every process of a preempted job comes from
    elsewhere and must not kill the worker mid-step (the rank would fail on the lost worker instead of
    saving). The worker was forked with SIGTERM blocked, so every thread has it blocked; one thread
    takes it with its sender."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    parent = os.getppid()

    def wait() -> None:
        while True:
            info = signal.sigwaitinfo({signal.SIGTERM})
            if info.si_pid == parent or os.getppid() != parent:
                os._exit(0)  # as torch's own worker handler does for its parent's SIGTERM

    threading.Thread(target=wait, name="loader-worker-sigterm", daemon=True).start()


def loader_context():
    """The multiprocessing context for data loader workers (DataLoader(multiprocessing_context=...)):
    the default one, whose processes start with SIGTERM blocked (see loader_worker_signals)."""
    base = multiprocessing.get_context()

    class Process(base.Process):
        def start(self):
            previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
            try:
                super().start()
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    context = copy.copy(base)
    context.Process = Process
    return context
