"""Metrics of a run: collected per iteration in an EventStorage, written by rank 0 as one JSON object
per line to `OUTPUT_DIR/metrics.jsonl` (and TensorBoard events beside it), printed to the log.

Iterations in metrics are counts of completed iterations (the first step logs as iteration 1 when
logged). A requeued run appends again from its last checkpoint, so a file can hold an iteration
twice: `read_metrics` keeps the last entry per iteration (merging the keys written for it).
"""
import datetime
import json
import logging
import os
import statistics
import time
from collections import defaultdict, deque
from typing import Dict, List

logger = logging.getLogger(__name__)
METRICS_FILE = "metrics.jsonl"


class EventStorage:
    """Scalars by name for the current iteration, with a window of recent values for smoothing."""

    def __init__(self, start_iter: int = 0, window: int = 20):
        self.iter = start_iter  # completed iterations
        self.window = window
        self.history: Dict[str, deque] = defaultdict(lambda: deque(maxlen=window))
        self.latest: Dict[str, tuple] = {}  # name -> (value, iteration)
        self.smoothing: Dict[str, bool] = {}

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
        with open(self.path, "a") as f:
            f.write(json.dumps(record, sort_keys=False) + "\n")
            f.flush()


class TensorboardWriter:
    def __init__(self, log_dir: str):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir)

    def write(self, iteration: int, scalars: Dict[str, float]) -> None:
        for k, v in scalars.items():
            self.writer.add_scalar(k, v, iteration)
        self.writer.flush()

    def close(self):
        self.writer.close()


def format_eta(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(seconds)))


def read_metrics(path: str) -> List[dict]:
    """Entries of a metrics.jsonl sorted by iteration, one per iteration: later lines for the same
    iteration (a requeued run repeating it) replace earlier values key by key. A truncated last line
    (a crash mid-write) is skipped with a warning; any other bad line is an error naming file and line."""
    merged: Dict[int, dict] = {}
    with open(path) as f:
        lines = f.readlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            if n == len(lines) and not line.endswith("\n"):
                logger.warning("%s: ignoring truncated last line %d", path, n)
                continue
            raise ValueError(f"{path}:{n}: not a JSON object: {e}") from None
        if "iteration" not in entry:
            raise ValueError(f"{path}:{n}: entry without 'iteration'")
        merged.setdefault(int(entry["iteration"]), {}).update(entry)
    return [merged[k] for k in sorted(merged)]
