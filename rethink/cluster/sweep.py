"""Sweeps: a YAML file of axes expands into runs with deterministic names and output dirs
`<root>/<sweep name>/<run name>`, submitted as ONE job array (a parallelism cap from the resources).

    name: paper
    root: output/sweeps
    config: "configs/{init}_{norm}_r{depth}.yaml"   # filled from the named axes
    axes:
      init: [scratch, pretrained]    # chooses the config file
      norm: [gn, syncbn]
      depth: [50, 101]
      schedule: [2x, 3x, 4x, 5x, 6x] # SOLVER.SCHEDULE
      subset: [full, 1of10]          # DATASETS.TRAIN: <train_dataset>_<subset>_s<subset_seed>
      freeze_at: [0, 2]              # MODEL.BACKBONE.FREEZE_AT
      seed: [0, 1]                   # SEED
      SOLVER.BASE_LR: [0.02, 0.03]   # any config key
    exclude: [{init: pretrained, schedule: 6x}]   # drop combinations
    overrides: [TEST.EVAL_PERIOD, 10000]         # for every run
    resources: {nodes: 1, gpus_per_node: 8, time: "72:00:00", partition: learnfair, array_parallelism: 16}

Every run's config is loaded and validated at expansion time, so a bad key fails before anything
is submitted.
"""
import dataclasses
import itertools
import json
import os
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import yaml

from ..config import describe_schedule, load_config
from .branches import plan_forks
from .resources import Resources

NAMED_AXES = {"init": None, "norm": None, "depth": None, "schedule": "SOLVER.SCHEDULE", "subset": "DATASETS.TRAIN",
              "freeze_at": "MODEL.BACKBONE.FREEZE_AT", "seed": "SEED"}
SWEEP_KEYS = {"name", "root", "config", "axes", "exclude", "overrides", "resources", "train_dataset", "subset_seed",
              "fork_schedules", "single"}
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Rough seconds per iteration of R-FPN Mask R-CNN at 16 images/batch on 8 V100s, for GPU-hour estimates.
SEC_PER_ITER = {18: 0.25, 34: 0.30, 50: 0.40, 101: 0.55, 152: 0.70}


class SweepError(ValueError):
    pass


@dataclass
class RunSpec:
    name: str
    config: str
    overrides: List[str]
    output_dir: str
    axes: Dict[str, object]
    max_iter: int = 0
    ims_per_batch: int = 16
    depth: int = 50
    steps: tuple = ()
    warmup_iters: int = 0
    seed: int = -1
    fork_from: Optional[dict] = None  # {"trunk": run name, "trunk_dir": ..., "iteration": k}
    checkpoint_iters: List[int] = field(default_factory=list)
    schedule: str = ""  # the resolved schedule in one line (rethink.config.describe_schedule)

    def gpu_hours(self, res: Resources) -> float:
        spi = res.sec_per_iter or SEC_PER_ITER.get(self.depth, 0.4)
        start = self.fork_from["iteration"] if self.fork_from else 0
        return (self.max_iter - start) * spi * 8 * (self.ims_per_batch / 16) / 3600

    @property
    def iterations(self) -> int:
        """Iterations this run computes itself (a branch starts at its fork point)."""
        return self.max_iter - (self.fork_from["iteration"] if self.fork_from else 0)


@dataclass
class Sweep:
    name: str
    root: str
    runs: List[RunSpec]
    resources: Resources
    source: dict

    @property
    def dir(self) -> str:
        """Where submissions.jsonl, sweep.yaml and submitit's logs go (a single run: its own dir)."""
        return os.path.join(self.root, self.name)


def _fmt(axis: str, value) -> str:
    if axis in ("init", "schedule", "subset"):
        return str(value)
    if axis == "norm":
        return str(value).lower()
    if axis == "depth":
        return f"r{value}"
    if axis == "freeze_at":
        return f"fz{value}"
    if axis == "seed":
        return f"s{value}"
    short = axis.split(".")[-1].lower().replace("_", "")
    return f"{short}{value}".replace("/", "-").replace(" ", "")


def _axis_overrides(axis: str, value, sweep: dict) -> List[str]:
    key = NAMED_AXES.get(axis, axis)
    if key is None:
        return []
    if axis == "subset":
        train = sweep.get("train_dataset", "coco_2017_train")
        name = train if value == "full" else f"{train}_{value}_s{sweep.get('subset_seed', 0)}"
        return [key, f"('{name}',)"]
    if isinstance(value, (list, tuple)):
        value = repr(tuple(value))
    return [key, str(value)]


def load_sweep(path: str, root: Optional[str] = None) -> Sweep:
    with open(path) as f:
        spec = yaml.safe_load(f) or {}
    unknown = set(spec) - SWEEP_KEYS
    if unknown:
        raise SweepError(f"{path}: unknown sweep key(s) {sorted(unknown)}; known: {sorted(SWEEP_KEYS)}")
    return expand(spec, path, root)


def expand(spec: dict, source: str = "<sweep>", root: Optional[str] = None) -> Sweep:
    name = spec.get("name") or os.path.splitext(os.path.basename(source))[0]
    root = os.path.abspath(root or spec.get("root", "output/sweeps"))
    axes: Dict[str, list] = {k: list(v) if isinstance(v, (list, tuple)) else [v]
                             for k, v in (spec.get("axes") or {}).items()}
    for axis in axes:
        if axis not in NAMED_AXES and "." not in axis:
            raise SweepError(f"{source}: unknown axis {axis!r}: use one of {sorted(NAMED_AXES)} or a config KEY")
    template = spec.get("config")
    if not template:
        raise SweepError(f"{source}: 'config' (a file or a template like "
                         "configs/{init}_{norm}_r{depth}.yaml) is required")
    excludes = spec.get("exclude") or []
    common = [str(x) for x in (spec.get("overrides") or [])]
    resources = Resources.from_dict(spec.get("resources"))
    base_dir = os.path.dirname(os.path.abspath(source)) if os.path.isfile(source) else os.getcwd()
    runs, names = [], set()
    for combo in itertools.product(*axes.values()) if axes else [()]:
        values = dict(zip(axes.keys(), combo))
        if any(all(values.get(k) == v for k, v in ex.items()) for ex in excludes):
            continue
        try:
            config = template.format(**{k: str(v).lower() if k == "norm" else v for k, v in values.items()})
        except KeyError as e:
            raise SweepError(f"{source}: config template {template!r} needs the axis {e.args[0]!r}") from None
        for where in (base_dir, PROJECT_ROOT):  # relative to the cwd, the sweep file, or this checkout
            if not os.path.isfile(config) and os.path.isfile(os.path.join(where, config)):
                config = os.path.join(where, config)
        config = os.path.abspath(config)
        overrides = list(common)
        for axis, value in values.items():
            overrides += _axis_overrides(axis, value, spec)
        run_name = "_".join(_fmt(a, v) for a, v in values.items()) or name
        if run_name in names:
            raise SweepError(f"{source}: two runs are both named {run_name}")
        names.add(run_name)
        output_dir = os.path.join(root, name) if spec.get("single") else os.path.join(root, name, run_name)
        try:
            resolution = {}
            cfg = load_config(config, overrides + ["OUTPUT_DIR", output_dir], resolution=resolution)
        except Exception as e:
            raise SweepError(f"{source}: run {run_name}: {e}") from None
        runs.append(RunSpec(run_name, config, overrides, output_dir, values, cfg.SOLVER.MAX_ITER,
                            cfg.SOLVER.IMS_PER_BATCH, cfg.MODEL.RESNETS.DEPTH, tuple(cfg.SOLVER.STEPS),
                            cfg.SOLVER.WARMUP_ITERS, cfg.SEED, schedule=describe_schedule(cfg, resolution)))
    if spec.get("fork_schedules"):
        try:
            plan_forks(runs)
        except ValueError as e:
            raise SweepError(f"{source}: {e}") from None
    return Sweep(name, root, runs, resources, spec)


def plan_table(sweep: Sweep) -> str:
    """The dry-run table: name, config, overrides, nodes x GPUs, iterations, estimated GPU-hours."""
    res = sweep.resources
    rows = [("run", "config", "overrides", "nodes x gpus", "iters", "GPU-h (est.)")]
    for r in sweep.runs:
        fork = f" (branch of {r.fork_from['trunk']} at {r.fork_from['iteration']})" if r.fork_from else ""
        rows.append((r.name + fork, os.path.relpath(r.config), " ".join(r.overrides),
                     f"{res.nodes}x{res.gpus_per_node}", str(r.iterations), f"{r.gpu_hours(res):.0f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    total = sum(r.gpu_hours(res) for r in sweep.runs)
    lines.append(f"{len(sweep.runs)} runs in one job array (at most {res.array_parallelism} at once), "
                 f"{sum(r.iterations for r in sweep.runs)} iterations, ~{total:.0f} GPU-hours; output in {sweep.dir}")
    fork = fork_summary(sweep)
    if fork:
        lines.append(fork)
    width = max(len(r.name) for r in sweep.runs)
    lines += [f"{r.name.ljust(width)}  {r.schedule}" for r in sweep.runs]
    return "\n".join(lines)


def fork_summary(sweep: Sweep) -> str:
    """'schedule forking: N iterations computed vs M for separate runs (Kx less compute)', or ''."""
    computed = sum(r.iterations for r in sweep.runs)
    separate = sum(r.max_iter for r in sweep.runs)
    if computed == separate:
        return ""
    return (f"schedule forking: {computed} iterations computed vs {separate} for separate runs "
            f"({separate / computed:.2f}x less compute)")


def record_submission(sweep: Sweep, cluster: str, jobs: Dict[str, str]) -> None:
    """Append {time, cluster, run -> job id} to <sweep dir>/submissions.jsonl and save the sweep spec."""
    os.makedirs(sweep.dir, exist_ok=True)
    with open(os.path.join(sweep.dir, "sweep.yaml"), "w") as f:
        # flags given at submission (partition, account, ...) are kept, so resubmission asks for the same
        yaml.safe_dump({**sweep.source, "name": sweep.name, "root": sweep.root,
                        "resources": dataclasses.asdict(sweep.resources)}, f, sort_keys=False)
    with open(os.path.join(sweep.dir, "submissions.jsonl"), "a") as f:
        f.write(json.dumps({"time": time.time(), "cluster": cluster, "jobs": jobs}) + "\n")


def submissions(sweep_dir: str) -> List[dict]:
    path = os.path.join(sweep_dir, "submissions.jsonl")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
