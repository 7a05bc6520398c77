"""Finished or running runs on disk: a run directory holds config.yaml and metrics.jsonl. Its
settings ("axes": init, norm, depth, train set, schedule, FREEZE_AT, seed) are read from its config,
so curves and tables group runs by what they are, not by how they were launched."""
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from .config import load_config
from .engine.events import METRICS_FILE, read_metrics

logger = logging.getLogger(__name__)
AXES = ("init", "norm", "depth", "train", "schedule", "freeze_at", "seed")


@dataclass
class Run:
    path: str
    cfg: object
    metrics: List[dict] = field(default_factory=list)

    @property
    def axes(self) -> Dict[str, object]:
        c = self.cfg
        return {
            "init": "pretrained" if c.MODEL.WEIGHTS else "scratch",
            "norm": c.MODEL.RESNETS.NORM or "none",
            "depth": c.MODEL.RESNETS.DEPTH,
            "train": "+".join(c.DATASETS.TRAIN),
            "schedule": self.schedule_label,
            "freeze_at": c.MODEL.BACKBONE.FREEZE_AT,
            "seed": c.SEED,
        }

    @property
    def unit(self) -> int:
        """Iterations of one "1x" at this run's batch size."""
        return self.cfg.SOLVER.SCHEDULE_UNIT

    @property
    def schedule_x(self) -> float:
        return self.cfg.SOLVER.MAX_ITER / self.unit

    @property
    def schedule_label(self) -> str:
        x = self.schedule_x
        return f"{x:g}x"

    @property
    def max_iter(self) -> int:
        return self.cfg.SOLVER.MAX_ITER

    @property
    def steps(self) -> List[int]:
        return list(self.cfg.SOLVER.STEPS)

    @property
    def train_images(self) -> Optional[int]:
        """The paper's less-data subsets by image count (35k/10k/1k), None for full train2017."""
        m = re.search(r"_(\d+(?:\.\d+)?)k_s\d+$", self.axes["train"])
        return int(float(m.group(1)) * 1000) if m else None

    def evals(self, key: str = "bbox/AP") -> List[dict]:
        return [m for m in self.metrics if m.get(key) is not None]

    @property
    def last_iteration(self) -> int:
        return max((int(m["iteration"]) for m in self.metrics), default=0)

    def gpu_hours(self) -> float:
        """Sum over logged intervals of (median s/iter x iterations) x ranks."""
        total, prev = 0.0, 0
        for m in self.metrics:
            it = int(m["iteration"])
            if "time" in m:
                total += m["time"] * (it - prev) * m.get("world_size", 1)
                prev = it
        return total / 3600.0


def find_runs(paths: List[str]) -> List[Run]:
    """Runs in `paths`: each a run directory or a directory searched recursively for runs."""
    found = []
    for p in paths:
        if not os.path.isdir(p):
            raise FileNotFoundError(f"{p}: no such directory")
        for root, dirs, files in os.walk(p):
            dirs.sort()
            if "config.yaml" in files:
                found.append(load_run(root))
    if not found:
        raise FileNotFoundError(f"no runs (directories with config.yaml) under {', '.join(paths)}")
    return found


def load_run(path: str) -> Run:
    cfg = load_config(os.path.join(path, "config.yaml"))
    metrics_path = os.path.join(path, METRICS_FILE)
    metrics = read_metrics(metrics_path) if os.path.isfile(metrics_path) else []
    if not metrics:
        logger.warning("%s: no metrics yet", path)
    return Run(path, cfg, metrics)
