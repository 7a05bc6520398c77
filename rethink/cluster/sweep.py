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
      recipe:                        # a named bundle: {value: [KEY, VALUE, ...]} applies those overrides,
        plain: []                    #   {value: "text"} fills {recipe} in the config template with the text
        retuned: [SOLVER.BASE_LR, 0.04]
    exclude: [{init: pretrained, schedule: 6x}]   # drop combinations
    overrides: [TEST.EVAL_PERIOD, 10000]         # for every run
    datasets: [[mine, /data/mine/train.json, /data/mine/images]]  # your own: DATASETS.REGISTER of every run
    train_dataset: mine                          # what axes.subset draws from (default coco_2017_train)
    resources: {nodes: 1, gpus_per_node: 8, time: "72:00:00", partition: learnfair, array_parallelism: 16}

A sweep of several grids lists them under `grids:` (each with its own `config`, `axes`, `exclude` and extra
`overrides`; everything else is the sweep's); run names must differ across grids. `fork_schedules: true`
branches the shorter schedules of a group off its longest run, `cascade_switch: {axis: heads, last_iters:
270000, only: {init: scratch}}` trains a cascade run's final iterations only, as a branch of its
standard-head twin (rethink.cluster.branches).

`datasets` lists your own COCO-format datasets as [name, json, image_root] (image_root may be left out:
found beside the json); they reach every job as the runs' DATASETS.REGISTER (replacing the config's),
so DATASETS.TRAIN / TEST, `train_dataset` and the subsets (``mine_1of10_s0``) can name them. Relative
paths are taken from the current directory, else from the sweep file's, and recorded absolute.

Every run's config is loaded and validated at expansion time, so a bad key fails before anything
is submitted; so do an axis or an `exclude` entry naming no axis of the sweep, an exclude entry that
matches no run, an axis without values and a subset that cannot be drawn (1of0, half). Errors name the
sweep file and the entry. What needs the machine (datasets present, run dirs free) is checked when
submitting and by --dry-run (rethink.cluster.preflight).
"""
import dataclasses
import difflib
import itertools
import json
import os
import re
import socket
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import yaml

from ..config import describe_schedule, load_config
from ..data.catalog import SUBSET_RE
from ..data.errors import DatasetError
from ..data.subsets import Selection
from ..data.user_datasets import REGISTER_KEY, config_registrations, is_json_path
from ..utils.fingerprint import config_fingerprint
from ..utils.usererrors import UserError
from .branches import plan_cascade_switch, plan_forks
from .resources import Resources

NAMED_AXES = {"init": None, "norm": None, "depth": None, "schedule": "SOLVER.SCHEDULE", "subset": "DATASETS.TRAIN",
              "freeze_at": "MODEL.BACKBONE.FREEZE_AT", "seed": "SEED"}
SWEEP_KEYS = {"name", "root", "config", "axes", "exclude", "overrides", "resources", "train_dataset", "subset_seed",
              "fork_schedules", "single", "grids", "cascade_switch", "datasets"}
GRID_KEYS = {"config", "axes", "exclude", "overrides"}
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Rough seconds per iteration of R-FPN Mask R-CNN at 16 images/batch on 8 V100s, for GPU-hour estimates.
SEC_PER_ITER = {18: 0.25, 34: 0.30, 50: 0.40, 101: 0.55, 152: 0.70}
# ResNeXt bodies (depth, groups x width per group): rough, from their FLOPs (the paper: X152-32x8d ~4x R101's)
SEC_PER_ITER_RESNEXT = {(101, 256): 1.00, (152, 256): 1.60}
# Cascade R-CNN: two more 4conv1fc box heads and 2000 training proposals per image (rough)
CASCADE_TIME_FACTOR = 1.2


class SweepError(ValueError, UserError):
    """A sweep file, or what it asks for, cannot be submitted; the message names the file and the entry."""


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
    evaluates: bool = True  # DATASETS.TEST is not empty: the run ends with an evaluation
    device: str = "cuda"  # MODEL.DEVICE
    fingerprint: Optional[dict] = None  # utils.fingerprint.config_fingerprint of the resolved config
    base_lr: float = 0.0
    roi_heads: str = "StandardROIHeads"  # MODEL.ROI_HEADS.NAME
    body_width: int = 0  # NUM_GROUPS x WIDTH_PER_GROUP of a ResNeXt body, 0 for a ResNet
    tta: str = ""  # the final evaluation's test-time augmentation (TEST.AUG), "" when off
    grid: int = 0  # index of the sweep's grid it comes from

    def sec_per_iter(self, res: Resources) -> float:
        if res.sec_per_iter:
            return res.sec_per_iter
        spi = SEC_PER_ITER_RESNEXT.get((self.depth, self.body_width)) or SEC_PER_ITER.get(self.depth, 0.4)
        return spi * (CASCADE_TIME_FACTOR if self.roi_heads == "CascadeROIHeads" else 1.0)

    def gpu_hours(self, res: Resources) -> float:
        return self.iterations * self.sec_per_iter(res) * 8 * (self.ims_per_batch / 16) / 3600

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
    if axis in ("init", "schedule", "subset") or _is_bundle_value(value):
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


class _Bundle(str):
    """A value of a bundle axis ({value: overrides or template text}): the value's name, with what it stands for."""

    def __new__(cls, name: str, meaning):
        obj = super().__new__(cls, name)
        obj.meaning = meaning
        return obj


def _is_bundle_value(value) -> bool:
    return isinstance(value, _Bundle)


def _axis_overrides(axis: str, value, sweep: dict) -> List[str]:
    if _is_bundle_value(value):
        return [str(x) for x in value.meaning] if isinstance(value.meaning, list) else []
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


def _template_value(axis: str, value) -> str:
    if _is_bundle_value(value):
        return value.meaning if isinstance(value.meaning, str) else str(value)
    return str(value).lower() if axis == "norm" else value


def load_sweep(path: str, root: Optional[str] = None) -> Sweep:
    with open(path) as f:
        spec = yaml.safe_load(f) or {}
    unknown = set(spec) - SWEEP_KEYS
    if unknown:
        raise SweepError(f"{path}: unknown sweep key(s) {sorted(unknown)}; known: {sorted(SWEEP_KEYS)}")
    return expand(spec, path, root)


def _grids(spec: dict, source: str) -> List[dict]:
    """The sweep's grids: `grids` entries on top of the sweep's own keys (their overrides after the sweep's),
    or the sweep itself as one grid."""
    raw = spec.get("grids")
    if raw is None:
        return [spec]
    if not isinstance(raw, list) or not raw or not all(isinstance(g, dict) for g in raw):
        raise SweepError(f"{source}: grids: a list of {{config, axes, exclude, overrides}} mappings is required")
    if "config" in spec or "axes" in spec or "exclude" in spec:
        raise SweepError(f"{source}: with grids, config/axes/exclude belong to each grid, not to the sweep")
    out = []
    for i, g in enumerate(raw):
        unknown = set(g) - GRID_KEYS
        if unknown:
            raise SweepError(f"{source}: grids[{i}]: unknown key(s) {sorted(unknown)}; known: {sorted(GRID_KEYS)}")
        out.append({**spec, **g, "overrides": list(spec.get("overrides") or []) + list(g.get("overrides") or [])})
    return out


def _datasets(spec: dict, source: str) -> dict:
    """`spec` with its `datasets` entries checked and their paths made absolute (from the current
    directory, else the sweep file's), so the recorded sweep.yaml means the same from anywhere."""
    raw = spec.get("datasets")
    if raw is None:
        return spec
    if not isinstance(raw, list):
        raise SweepError(f"{source}: datasets: a list of [name, json, image_root] is required, not {raw!r}")
    sweep_dir = os.path.dirname(os.path.abspath(source)) if os.path.isfile(source) else os.getcwd()

    def where(path: str) -> str:
        if not path or os.path.isabs(os.path.expanduser(path)) or os.path.exists(path):
            return path
        beside = os.path.join(sweep_dir, path)
        return beside if os.path.exists(beside) else path
    try:
        entries = config_registrations([[x if i == 0 else where(x) for i, x in enumerate(e)]
                                        if isinstance(e, list) else e for e in raw], key="datasets")
    except DatasetError as e:
        raise SweepError(f"{source}: {e}") from None
    return {**spec, "datasets": [[n, j, r] if r else [n, j] for n, j, r in entries]}


def expand(spec: dict, source: str = "<sweep>", root: Optional[str] = None) -> Sweep:
    spec = _datasets(spec, source)
    name = spec.get("name") or os.path.splitext(os.path.basename(source))[0]
    root = os.path.abspath(root or spec.get("root", "output/sweeps"))
    resources = Resources.from_dict(spec.get("resources"))
    runs, names = [], set()
    grids = _grids(spec, source)
    for i, grid in enumerate(grids):
        where = f"{source}: grids[{i}]" if len(grids) > 1 or "grids" in spec else source
        for run in _expand_grid(grid, where, name, root):
            if run.name in names:
                raise SweepError(f"{source}: two runs are both named {run.name}")
            names.add(run.name)
            run.grid = i
            runs.append(run)
    try:
        if spec.get("fork_schedules"):
            plan_forks(runs)
        if spec.get("cascade_switch"):
            plan_cascade_switch(runs, spec["cascade_switch"])
    except ValueError as e:
        raise SweepError(f"{source}: {e}") from None
    return Sweep(name, root, runs, resources, spec)


def _expand_grid(spec: dict, source: str, name: str, root: str) -> List[RunSpec]:
    axes = _check_axes(spec.get("axes"), spec, source)
    template = spec.get("config")
    if not template:
        raise SweepError(f"{source}: 'config' (a file or a template like "
                         "configs/{init}_{norm}_r{depth}.yaml) is required")
    excludes = _check_excludes(spec.get("exclude"), axes, source)
    common = [str(x) for x in (spec.get("overrides") or [])]
    if spec.get("datasets"):  # before the sweep's overrides: a DATASETS.REGISTER there wins
        common = [REGISTER_KEY, repr(tuple(tuple(e) for e in spec["datasets"]))] + common
    base_dir = os.path.dirname(os.path.abspath(source.split(": ")[0])) if os.path.isfile(source.split(": ")[0]) \
        else os.getcwd()
    runs = []
    for combo in itertools.product(*axes.values()) if axes else [()]:
        values = dict(zip(axes.keys(), combo))
        if any(all(values.get(k) == v for k, v in ex.items()) for ex in excludes):
            continue
        try:
            config = template.format(**{k: _template_value(k, v) for k, v in values.items()})
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
        output_dir = os.path.join(root, name) if spec.get("single") else os.path.join(root, name, run_name)
        try:
            resolution = {}
            cfg = load_config(config, overrides + ["OUTPUT_DIR", output_dir], resolution=resolution)
        except Exception as e:
            entry = next((f" (axes.{a}: {v!r})" for a, v in values.items() if "." in a and a in str(e)), "")
            raise SweepError(f"{source}: run {run_name}{entry}: {e}") from None
        r = cfg.MODEL.RESNETS
        runs.append(RunSpec(run_name, config, overrides, output_dir, {a: str(v) if _is_bundle_value(v) else v
                                                                      for a, v in values.items()},
                            cfg.SOLVER.MAX_ITER, cfg.SOLVER.IMS_PER_BATCH, r.DEPTH, tuple(cfg.SOLVER.STEPS),
                            cfg.SOLVER.WARMUP_ITERS, cfg.SEED, schedule=describe_schedule(cfg, resolution),
                            evaluates=bool(cfg.DATASETS.TEST), device=cfg.MODEL.DEVICE,
                            fingerprint=config_fingerprint(cfg), base_lr=cfg.SOLVER.BASE_LR,
                            roi_heads=cfg.MODEL.ROI_HEADS.NAME,
                            body_width=r.NUM_GROUPS * r.WIDTH_PER_GROUP if r.NUM_GROUPS > 1 else 0,
                            tta=_describe_tta(cfg)))
    if not runs:
        raise SweepError(f"{source}: exclude {excludes} leaves no run")
    return runs


def _describe_tta(cfg) -> str:
    aug = cfg.TEST.AUG
    if not aug.ENABLED or not cfg.DATASETS.TEST:
        return ""
    return (f"final evaluation also with test-time augmentation (short side {tuple(aug.MIN_SIZES)}, max "
            f"{aug.MAX_SIZE}{', + flip' if aug.FLIP else ''}): *_TTA metrics")


def _unknown(kind: str, name, known, source: str, where: str) -> SweepError:
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=2)
    hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
    return SweepError(f"{source}: {where}: unknown {kind} {name!r}{hint}; known: {sorted(map(str, known))}")


def _check_axes(raw, spec: dict, source: str) -> Dict[str, list]:
    """The axes as {name: [values]}, each a named axis or a config KEY, each with values; subset values
    are subsets that can be drawn (full, AofB with 0 < A <= B, or an image count)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SweepError(f"{source}: axes: a mapping {{axis: [values]}} is required, not {raw!r}")
    axes: Dict[str, list] = {}
    for axis, values in raw.items():
        if isinstance(values, dict):
            axes[axis] = _check_bundle(axis, values, source)
            continue
        if axis not in NAMED_AXES and "." not in str(axis):
            raise _unknown("axis", axis, list(NAMED_AXES) + ["<any config KEY, e.g. SOLVER.BASE_LR>"], source,
                           f"axes.{axis}")
        values = list(values) if isinstance(values, (list, tuple)) else [values]
        if not values or any(v is None for v in values):
            raise SweepError(f"{source}: axes.{axis}: {raw[axis]!r}: every axis needs a list of values")
        if axis == "subset":
            for v in values:
                _check_subset(v, spec, source)
        axes[axis] = values
    return axes


def _check_bundle(axis, values: dict, source: str) -> list:
    """A bundle axis {value: [KEY, VALUE, ...] or "template text"}: its values, each carrying its meaning."""
    where = f"{source}: axes.{axis}"
    if "." in str(axis) or NAMED_AXES.get(axis) is not None:
        raise SweepError(f"{where}: a mapping {{value: overrides or template text}} names a bundle axis of its own "
                         f"(e.g. recipe, heads); {axis} takes a list of values")
    if not values:
        raise SweepError(f"{where}: every axis needs values")
    out = []
    for name, meaning in values.items():
        if meaning is None:
            meaning = []
        ok = isinstance(meaning, str) or (isinstance(meaning, list) and len(meaning) % 2 == 0)
        if not ok or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.+-]*", str(name)):
            raise SweepError(f"{where}.{name}: {meaning!r}: each value (a name of letters, digits, '.', '+', '-') "
                             "maps to KEY, VALUE pairs (a list) or to the text its {axis} stands for in the config "
                             "template (a string)")
        out.append(_Bundle(str(name), meaning))
    return out


def _check_subset(value, spec: dict, source: str) -> None:
    if value == "full":
        return
    if is_json_path(spec.get("train_dataset")):
        raise SweepError(f"{source}: axes.subset {value!r}: train_dataset {spec['train_dataset']!r} is a json path; "
                         f"subsets are drawn from a named dataset: name it in `datasets` ([name, json, image_root]) "
                         f"and set train_dataset to that name")
    name = f"{spec.get('train_dataset', 'coco_2017_train')}_{value}_s{spec.get('subset_seed', 0)}"
    m = SUBSET_RE.match(name)
    try:
        if not m or m.group("sel") != str(value):
            raise ValueError("use full, a fraction AofB (1of3, 1of10, 1of100) or an image count (35k, 3.5k, 1000)")
        Selection.parse(m.group("sel"))
    except ValueError as e:
        raise SweepError(f"{source}: axes.subset: {value!r} is not a subset that can be drawn: {e}") from None


def _check_excludes(raw, axes: Dict[str, list], source: str) -> List[dict]:
    """`exclude` as a list of {axis: value}: every key an axis of this sweep and every value one of that
    axis's values (anything else is a typo that would exclude nothing)."""
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(ex, dict) and ex for ex in raw):
        raise SweepError(f"{source}: exclude: a list of {{axis: value}} mappings is required, not {raw!r}")
    for i, ex in enumerate(raw):
        where = f"exclude[{i}] {ex}"
        for axis in ex:
            if axis not in axes:
                raise _unknown("axis", axis, list(axes), source, where)
        for axis, value in ex.items():
            if value not in axes[axis]:
                raise SweepError(f"{source}: {where}: {value!r} is not a value of axis {axis!r} "
                                 f"({axes[axis]}): it would exclude nothing")
    return raw


def plan_table(sweep: Sweep, cluster: str = "slurm") -> str:
    """The dry-run table: name, config, overrides, nodes x ranks per node, iterations, estimated GPU-hours."""
    res = sweep.resources
    rows = [("run", "config", "overrides", "nodes x ranks", "iters", "GPU-h (est.)")]
    for r in sweep.runs:
        kind = "cascade branch" if r.fork_from and r.fork_from.get("convert") else "branch"
        fork = f" ({kind} of {r.fork_from['trunk']} at {r.fork_from['iteration']})" if r.fork_from else ""
        ranks = res.ranks_per_node(cluster, r.device.startswith("cuda"))
        rows.append((r.name + fork, os.path.relpath(r.config), " ".join(r.overrides),
                     f"{res.nodes}x{ranks}", str(r.iterations), f"{r.gpu_hours(res):.0f}"))
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
    lines += [f"{r.name.ljust(width)}  {r.schedule}" + (f"; {r.tta}" if r.tta else "") for r in sweep.runs]
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
    """Append {time, cluster, host, run -> job id} to <sweep dir>/submissions.jsonl and save the sweep spec
    (host: where local jobs run, the only machine that can tell whether they still do)."""
    os.makedirs(sweep.dir, exist_ok=True)
    with open(os.path.join(sweep.dir, "sweep.yaml"), "w") as f:
        # flags given at submission (partition, account, ...) are kept, so resubmission asks for the same
        yaml.safe_dump({**sweep.source, "name": sweep.name, "root": sweep.root,
                        "resources": dataclasses.asdict(sweep.resources)}, f, sort_keys=False)
    with open(os.path.join(sweep.dir, "submissions.jsonl"), "a") as f:
        record = {"time": time.time(), "cluster": cluster, "host": socket.gethostname(), "jobs": jobs}
        f.write(json.dumps(record) + "\n")


def submissions(sweep_dir: str) -> List[dict]:
    path = os.path.join(sweep_dir, "submissions.jsonl")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
