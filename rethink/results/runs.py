"""Finished or running runs on disk, for curves and tables.

A run directory holds a ``config.yaml`` and its metrics, in one of two layouts:

* **rethink**: ``metrics.jsonl``, iterations are counts of *completed* iterations (an entry at ``N`` was logged after
  ``N`` optimizer steps; the first step would log as 1);
* **detectron2**: ``metrics.json`` (also one JSON object per line), iterations as detectron2 writes them: the 0-based
  index of the step just run (``N - 1`` after ``N`` steps), except what detectron2 writes after training (its final
  evaluation), which it logs at ``MAX_ITER``.

Every entry of :attr:`Run.metrics` uses rethink's convention, so both plot on one axis: a detectron2 iteration ``i``
becomes ``i + 1`` when ``i < MAX_ITER`` and stays ``i`` otherwise (detectron2's evaluation after 5000 of 90000
steps, logged at 4999, and rethink's, logged at 5000, both land on 5000; both final evaluations on 90000).

Runs are grouped by their settings (:data:`AXES`), read *leniently* from the raw YAML of ``config.yaml``, its values
by the config loader's rules (a string that is a Python literal is that literal, as yacs decodes it: detectron2's
hand-written ``STEPS: (4000, 5000)`` is a tuple of two ints, ``TRAIN: ("coco_2017_train",)`` one name): only the
keys behind the axes and the schedule are read, anything missing takes detectron2's default (:data:`D2_DEFAULTS`),
unknown keys are ignored, so a config written by an older or newer rethink, or by detectron2, still plots. What
cannot be read (a key of the wrong type, a bad or truncated metrics line, an unreadable config) is a warning
naming the file, never an error; the config is never validated as a training config. The file names and the
metrics readers are :mod:`rethink.utils.rundir`'s (:meth:`RunDir.metrics` with ``lenient=True``).
"""
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import yaml

from ..config import CfgNode
from ..utils.rundir import CONFIG, DETECTRON2_METRICS, METRICS, RunDir

logger = logging.getLogger(__name__)

#: the settings runs are grouped by; ``source`` (rethink or detectron2) keeps the two apart when both are plotted
AXES = ("init", "norm", "depth", "train", "schedule", "freeze_at", "source", "seed")
#: iterations of the paper's "1x" at 16 images per batch
UNIT_1X = 90000
REFERENCE_BATCH = 16

#: detectron2's defaults (detectron2/config/defaults.py) for the keys read here, plus rethink's own keys
#: (rethink/config/project_keys.py) that change how the schedule is read
D2_DEFAULTS: Dict[str, Any] = {
    "MODEL.WEIGHTS": "",
    "MODEL.RESNETS.NORM": "FrozenBN",
    "MODEL.RESNETS.DEPTH": 50,
    "MODEL.BACKBONE.FREEZE_AT": 2,
    "DATASETS.TRAIN": [],
    "SEED": -1,
    "SOLVER.MAX_ITER": 40000,
    "SOLVER.STEPS": [30000],
    "SOLVER.IMS_PER_BATCH": 16,
    # rethink keys (absent from detectron2 configs)
    "SOLVER.SCHEDULE": "",
    "SOLVER.SCHEDULE_UNIT": None,  # None: UNIT_1X scaled to IMS_PER_BATCH by the linear scaling rule
    "SOLVER.REFERENCE_IMS_PER_BATCH": 0,
}


@dataclass
class RunSettings:
    """What a run is, as far as curves and tables care."""

    init: str  # "scratch" (MODEL.WEIGHTS empty) or "pretrained"
    norm: str  # MODEL.RESNETS.NORM ("none" when empty)
    depth: Any  # MODEL.RESNETS.DEPTH (int unless the file says otherwise)
    train: str  # "+".join(DATASETS.TRAIN), "none" when empty
    freeze_at: Any
    seed: Any
    max_iter: int
    steps: List[int]
    unit: float  # iterations of "1x" at this run's batch size
    ims_per_batch: int


@dataclass
class Run:
    path: str
    settings: RunSettings
    metrics: List[dict] = field(default_factory=list)
    #: "rethink" (metrics.jsonl) or "detectron2" (metrics.json)
    source: str = "rethink"
    #: the config.yaml as read (after _BASE_ merging), for settings not covered here
    raw: Dict[str, Any] = field(default_factory=dict)
    #: what the run is called in legends and tables: its path relative to the folder searched (find_runs)
    name: str = ""

    @property
    def axes(self) -> Dict[str, object]:
        s = self.settings
        return {"init": s.init, "norm": s.norm, "depth": s.depth, "train": s.train, "schedule": self.schedule_label,
                "freeze_at": s.freeze_at, "source": self.source, "seed": s.seed}

    @property
    def unit(self) -> float:
        """Iterations of one "1x" at this run's batch size."""
        return self.settings.unit

    @property
    def schedule_x(self) -> float:
        return self.settings.max_iter / self.unit

    @property
    def schedule_label(self) -> str:
        return f"{round(self.schedule_x, 4):g}x"

    @property
    def max_iter(self) -> int:
        return self.settings.max_iter

    @property
    def steps(self) -> List[int]:
        return list(self.settings.steps)

    @property
    def train_images(self) -> Optional[int]:
        """The paper's less-data subsets by image count (35k/10k/1k), None for full train2017."""
        m = re.search(r"_(\d+(?:\.\d+)?)k_s\d+$", self.settings.train)
        return int(float(m.group(1)) * 1000) if m else None

    def evals(self, key: str = "bbox/AP") -> List[dict]:
        return [m for m in self.metrics if m.get(key) is not None]

    @property
    def last_iteration(self) -> int:
        return max((int(m["iteration"]) for m in self.metrics), default=0)

    def gpu_hours(self) -> Optional[float]:
        """Sum over logged intervals of (median s/iter x iterations) x ranks. None for detectron2 runs: its
        metrics do not say how many GPUs ran."""
        if self.source == "detectron2":
            return None
        total, prev = 0.0, 0
        for m in self.metrics:
            it = int(m["iteration"])
            if isinstance(m.get("time"), (int, float)):
                total += m["time"] * (it - prev) * m.get("world_size", 1)
                prev = it
        return total / 3600.0


# --------------------------------------------------------------------------------------------------------------------
# config.yaml, leniently
# --------------------------------------------------------------------------------------------------------------------
class _LenientLoader(yaml.SafeLoader):
    """safe_load, plus the ``!!python/tuple`` that old yaml dumps of tuples carry (read as a list)."""


_LenientLoader.add_constructor("tag:yaml.org,2002:python/tuple", lambda loader, node: loader.construct_sequence(node))


def decode_values(node):
    """A config mapping with every string value decoded as the config loader decodes it (yacs'
    ``_decode_cfg_value``: a Python literal becomes that literal, anything else stays a string)."""
    if isinstance(node, dict):
        return {k: decode_values(v) for k, v in node.items()}
    if isinstance(node, list):
        return [decode_values(v) for v in node]
    return CfgNode._decode_cfg_value(node) if isinstance(node, str) else node


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_config_yaml(path: str, _chain: Tuple[str, ...] = ()) -> Dict[str, Any]:
    """The mapping in a config.yaml, with detectron2's ``_BASE_`` merged in when that file exists (a missing or
    unreadable base is a warning). Raises ValueError naming the file when the file itself is not a YAML mapping."""
    try:
        with open(path) as f:
            data = yaml.load(f, Loader=_LenientLoader)
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    base = data.pop("_BASE_", None)
    data = decode_values(data)
    if isinstance(base, str) and base:
        base_path = os.path.normpath(os.path.join(os.path.dirname(path), os.path.expanduser(base)))
        if base_path in _chain or len(_chain) > 16:
            logger.warning("%s: _BASE_ cycle through %s; ignoring the base", path, base_path)
        elif not os.path.isfile(base_path):
            logger.warning("%s: _BASE_ %s not found; its keys take detectron2's defaults", path, base_path)
        else:
            try:
                data = _merge(read_config_yaml(base_path, _chain + (path,)), data)
            except (OSError, ValueError) as e:
                logger.warning("%s: _BASE_ %s unreadable (%s); its keys take detectron2's defaults", path, base_path, e)
    return data


_MISSING = object()


def _lookup(raw: dict, key: str):
    node: Any = raw
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _value(raw: dict, key: str, default=None):
    value = _lookup(raw, key)
    return default if value is _MISSING else value


def config_settings(raw: Dict[str, Any]) -> Dict[str, Any]:
    """lookup()'s cascade / train_aug / recipe / resnext for a run, from its config mapping (a run dir's
    config.yaml as read leniently, detectron2's defaults where a key is missing): cascade = CascadeROIHeads;
    train_aug = the training short side drawn from several sizes or a range; recipe "retuned" = Sec. 5.2's
    BASE_LR 0.04 at 16 images/batch (scaled linearly) with GAMMA 0.02, "plain" otherwise; resnext =
    "<groups>x<width>d" when NUM_GROUPS > 1. test_aug is the caller's: the same run has plain and *_TTA metrics."""
    sizes = _value(raw, "INPUT.MIN_SIZE_TRAIN", [800])
    sizes = [sizes] if isinstance(sizes, (int, float)) else list(sizes or [])
    sampling = _value(raw, "INPUT.MIN_SIZE_TRAIN_SAMPLING", "choice")
    ims = _value(raw, "SOLVER.IMS_PER_BATCH", 16) or 16
    ref = _value(raw, "SOLVER.REFERENCE_IMS_PER_BATCH", 0) or ims  # not yet scaled: LR is at the reference batch
    lr16 = float(_value(raw, "SOLVER.BASE_LR", 0.02)) * 16 / ref
    retuned = abs(lr16 - 0.04) < 1e-9 and abs(float(_value(raw, "SOLVER.GAMMA", 0.1)) - 0.02) < 1e-9
    groups = int(_value(raw, "MODEL.RESNETS.NUM_GROUPS", 1))
    width = int(_value(raw, "MODEL.RESNETS.WIDTH_PER_GROUP", 64))
    return {"cascade": _value(raw, "MODEL.ROI_HEADS.NAME", "Res5ROIHeads") == "CascadeROIHeads",
            "train_aug": len(set(sizes)) > 1 or (sampling == "range" and len(sizes) == 2 and sizes[0] != sizes[1]),
            "recipe": "retuned" if retuned else "plain",
            "resnext": f"{groups}x{width}d" if groups > 1 else ""}


class _Reader:
    """Typed reads of dotted keys with detectron2's defaults; a bad value warns (naming file and key) and falls back
    to the default."""

    def __init__(self, raw: dict, path: str):
        self.raw, self.path = raw, path

    def has(self, key: str) -> bool:
        return _lookup(self.raw, key) is not _MISSING

    def get(self, key: str, kind=None):
        value = _lookup(self.raw, key)
        default = D2_DEFAULTS[key]
        if value is _MISSING or value is None and default is not None:
            return default
        if kind is None:
            return value
        try:
            return kind(value)
        except (TypeError, ValueError):
            logger.warning("%s: cannot read %s = %r (%s expected); using %r", self.path, key, value,
                           getattr(kind, "__name__", kind), default)
            return default


def _int(value) -> int:
    if isinstance(value, bool):
        raise TypeError("bool")
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(value)
    return int(value)


def _int_list(value) -> List[int]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise TypeError(type(value).__name__)
    return [_int(v) for v in value]


def _str_list(value) -> List[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, (list, tuple)):
        raise TypeError(type(value).__name__)
    return [str(v) for v in value]


def _schedule_x(text) -> float:
    m = re.match(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*x\s*$", str(text))
    if not m or float(m.group(1)) <= 0:
        raise ValueError(text)
    return float(m.group(1))


def _paper_steps(max_iter: int, unit: float) -> List[int]:
    """The paper's LR drops (the last 60k and 20k iterations of a 90k unit), as rethink.config.schedule puts them."""
    return [max_iter - min(round(unit * 2 / 3), round(max_iter / 3)),
            max_iter - min(round(unit * 2 / 9), round(max_iter / 9))]


def settings_from_config(raw: dict, path: str = CONFIG) -> RunSettings:
    """The axes and the schedule of a run from its config mapping (see the module docstring)."""
    r = _Reader(raw, path)
    weights = r.get("MODEL.WEIGHTS", str)
    norm = r.get("MODEL.RESNETS.NORM", str)
    depth = _lookup(raw, "MODEL.RESNETS.DEPTH")
    if depth is _MISSING or depth is None:
        depth = D2_DEFAULTS["MODEL.RESNETS.DEPTH"]
    else:
        try:
            depth = _int(depth)
        except (TypeError, ValueError):
            logger.warning("%s: MODEL.RESNETS.DEPTH = %r is not a number; grouping by it as written", path, depth)
    train = r.get("DATASETS.TRAIN", _str_list)

    ims = r.get("SOLVER.IMS_PER_BATCH", _int) or REFERENCE_BATCH
    ref = r.get("SOLVER.REFERENCE_IMS_PER_BATCH", _int)
    unit = r.get("SOLVER.SCHEDULE_UNIT", _int) if r.has("SOLVER.SCHEDULE_UNIT") else None
    schedule = r.get("SOLVER.SCHEDULE", str)
    x = None
    if schedule:
        try:
            x = _schedule_x(schedule)
        except ValueError:
            logger.warning("%s: cannot read SOLVER.SCHEDULE = %r ('6x' expected); using SOLVER.MAX_ITER",
                           path, schedule)
    if r.has("SOLVER.MAX_ITER") or x is None:
        max_iter = r.get("SOLVER.MAX_ITER", _int)
        steps = r.get("SOLVER.STEPS", _int_list) if r.has("SOLVER.STEPS") or x is None else None
    else:  # an unresolved rethink config: MAX_ITER from the schedule, as rethink would resolve it
        max_iter = int(round(x * (unit or UNIT_1X)))
        steps = r.get("SOLVER.STEPS", _int_list) if r.has("SOLVER.STEPS") else None
    if steps is None:
        steps = _paper_steps(max_iter, unit or UNIT_1X)
    if ref > 0 and ref != ims:
        # written at the reference batch and not resolved yet: rethink's linear scaling rule
        factor = ims / ref
        max_iter = int(round(max_iter / factor))
        steps = [int(round(s / factor)) for s in steps]
        unit = (unit or UNIT_1X) / factor
    if not unit:
        # detectron2 (or a rethink config without the key): the paper's 1x, 90k iterations at 16 images per batch
        unit = UNIT_1X * REFERENCE_BATCH / ims
    return RunSettings(
        init="pretrained" if weights else "scratch",
        norm=norm or "none",
        depth=depth,
        train="+".join(train) or "none",
        freeze_at=r.get("MODEL.BACKBONE.FREEZE_AT", _int),
        seed=r.get("SEED", _int),
        max_iter=max_iter,
        steps=steps,
        unit=unit,
        ims_per_batch=ims,
    )


# --------------------------------------------------------------------------------------------------------------------
# finding runs
# --------------------------------------------------------------------------------------------------------------------
def find_runs(paths: List[str]) -> List[Run]:
    """Runs in ``paths``: each a run directory or a directory searched recursively for directories with a
    config.yaml. A run that cannot be read at all is skipped with a warning; no run at all is an error."""
    found = []
    for p in paths:
        if not os.path.isdir(p):
            raise FileNotFoundError(f"{p}: no such directory")
        for root, dirs, files in os.walk(p):
            dirs.sort()
            if CONFIG in files:
                run = load_run(root)
                if run is not None:
                    found.append(run)
    if not found:
        raise FileNotFoundError(f"no readable runs (directories with {CONFIG}) under {', '.join(paths)}")
    name_runs(found)
    return found


def name_runs(runs: List[Run]) -> None:
    """Each run's name: its path relative to the deepest folder holding them all (a sweep's runs are named by
    their folders in it), the folder's own name for a single run."""
    paths = [os.path.abspath(r.path) for r in runs]
    common = os.path.commonpath(paths) if len(paths) > 1 else os.path.dirname(paths[0])
    for r, p in zip(runs, paths):
        r.name = os.path.relpath(p, common) if p != common else os.path.basename(p)


def load_run(path: str) -> Optional[Run]:
    """The run in directory ``path`` (rethink or detectron2 layout), or None (with a warning) when its config.yaml
    cannot be read."""
    run = RunDir(path)
    config_path = run.config_file
    try:
        raw = read_config_yaml(config_path)
    except (OSError, ValueError) as e:
        logger.warning("skipping run %s: %s", path, e)
        return None
    settings = settings_from_config(raw, config_path)
    source = run.metrics_source() or "rethink"
    metrics = run.metrics(lenient=True, max_iter=settings.max_iter)
    if not metrics:
        logger.warning("%s: no metrics yet (%s or %s)", path, METRICS, DETECTRON2_METRICS)
    return Run(path, settings, metrics, source, raw, name=os.path.basename(os.path.abspath(path)))
