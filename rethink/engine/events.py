"""Metrics of a run: collected per iteration in an EventStorage, written by rank 0 as one JSON object
per line to the run directory's metrics file (and TensorBoard events beside it; rethink.utils.rundir
gives both paths), printed to the log.

Iterations in metrics are counts of completed iterations (the first step logs as iteration 1 when
logged). A requeued run appends again from its last checkpoint, so a file can hold an iteration
twice: `read_metrics` (rethink.utils.rundir, re-exported here) keeps the last entry per iteration.
"""
import datetime
import json
import logging
import os
import statistics
import time
from collections import defaultdict, deque
from typing import Any, Dict, List, Tuple

from ..utils.rundir import read_metrics

__all__ = ["EventStorage", "JSONWriter", "TensorboardWriter", "format_eta", "read_metrics"]
logger = logging.getLogger(__name__)


class EventStorage:
    """Scalars by name for the current iteration, with a window of recent values for smoothing; images
    (put_image, as detectron2's) wait for the writer, which takes them (pop_images)."""

    def __init__(self, start_iter: int = 0, window: int = 20):
        self.iter = start_iter  # completed iterations
        self.window = window
        self.history: Dict[str, deque] = defaultdict(lambda: deque(maxlen=window))
        self.latest: Dict[str, tuple] = {}  # name -> (value, iteration)
        self.smoothing: Dict[str, bool] = {}
        self.images: List[Tuple[str, Any, int]] = []  # (name, [H, W, 3] uint8, iteration)

    def put_image(self, name: str, image) -> None:
        """An image ([H, W, 3] uint8) for TensorBoard at the current iteration."""
        self.images.append((name, image, self.iter))

    def pop_images(self) -> List[Tuple[str, Any, int]]:
        images, self.images = self.images, []
        return images

    def put_scalar(self, name: str, value: float, smoothing: bool = True) -> None:
        value = float(value)
        self.history[name].append(value)
        self.latest[name] = (value, self.iter)
        self.smoothing.setdefault(name, smoothing)

    def put_scalars(self, smoothing: bool = True, **kwargs) -> None:
        for k, v in kwargs.items():
            self.put_scalar(k, v, smoothing)

    def median(self, name: str) -> float:
        return statistics.median(self.history[name])

    def scalars_at(self, iteration: int) -> Dict[str, float]:
        """Values put at `iteration`, smoothed (window median) where asked."""
        out = {}
        for name, (value, it) in self.latest.items():
            if it == iteration:
                out[name] = self.median(name) if self.smoothing[name] else value
        return out


class JSONWriter:
    def __init__(self, path: str):
        self.path = path
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)

    def write(self, iteration: int, scalars: Dict[str, float]) -> None:
        if not scalars:
            return
        record = {"iteration": iteration, "wall_time": round(time.time(), 3), **scalars}
        with open(self.path, "a+b") as f:
            f.seek(0, os.SEEK_END)
            # after a crash mid-line, start on a new line: the damaged one stays alone (readers skip it)
            glue = b""
            if f.tell() > 0:
                f.seek(-1, os.SEEK_END)
                glue = b"" if f.read(1) == b"\n" else b"\n"
            f.write(glue + (json.dumps(record, sort_keys=False) + "\n").encode())
            f.flush()


class TensorboardWriter:
    """TensorBoard events beside metrics.jsonl; without the `tensorboard` package (a bare GPU image,
    say) it says so once and writes nothing: metrics.jsonl holds the same scalars."""

    def __init__(self, log_dir: str):
        try:
            from torch.utils.tensorboard import SummaryWriter  # optional: imports the tensorboard package
        except ImportError as e:
            logger.warning("No TensorBoard events (%s); metrics.jsonl has every scalar", e)
            self.writer = None
        else:
            self.writer = SummaryWriter(log_dir)

    def write(self, iteration: int, scalars: Dict[str, float]) -> None:
        if self.writer is None:
            return
        for k, v in scalars.items():
            self.writer.add_scalar(k, v, iteration)
        self.writer.flush()

    def write_images(self, images) -> None:
        """(name, [H, W, 3] uint8, iteration) each, as TensorBoard images."""
        if self.writer is None or not images:
            return
        for name, image, iteration in images:
            self.writer.add_image(name, image, iteration, dataformats="HWC")
        self.writer.flush()

    def close(self):
        if self.writer is not None:
            self.writer.close()


def format_eta(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(seconds)))
