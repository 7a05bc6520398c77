"""What is checked before a sweep is submitted, and by --dry-run: what depends on this machine and on
what is on disk, not on the sweep file alone (that is rethink.cluster.sweep's expansion).

* Datasets: every DATASETS.TRAIN / DATASETS.TEST name of every run is known to the catalog and its
  files are there (a subset is drawn on first use, so only its source must exist; the synthetic set is
  generated on first use; a subset of an unregistered name must have been written by
  tools/make_subsets.py; a json path must exist). Each run's DATASETS.REGISTER is registered first.
  Nothing is created or parsed here: the training's start-up check (rethink.data.preflight) reads the
  files.
* Weights: every run's MODEL.WEIGHTS is there (rethink.weights.resolve_weights_path: a file path, or a
  detectron2:// / catalog:// name under $RETHINK_WEIGHTS), so a pretrained run of an array does not
  fail at its start after the array has queued.
* Run directories: a run dir that recorded another run's fingerprint (utils.fingerprint: a different
  resolved config) is refused: resuming there would continue that run's checkpoint under these
  settings, and its files would be reported as this run's. A dir without a fingerprint (new, from
  before fingerprints, a detectron2 run dir) is accepted as it is.

Errors name the sweep file, the runs, the entry of the sweep that set the value, and the keys.
"""
import ast
import logging
import os
from typing import Dict, List, Tuple

from ..data.catalog import SUBSET_RE, SYNTHETIC_NAMES, get_dataset_spec, list_datasets, register_config_datasets
from ..data.errors import DatasetError
from ..data.subsets import Selection
from ..data.user_datasets import is_json_path
from ..utils.fingerprint import fingerprint_diff
from ..utils.rundir import RunDir
from ..weights import WeightsError, resolve_weights_path
from .sweep import RunSpec, Sweep, SweepError

logger = logging.getLogger(__name__)

MAX_LISTED = 5  # runs / keys named per problem, then a count


def run_dir_conflict(run: RunSpec) -> List[str]:
    """"KEY: recorded -> this sweep's" for each key in which the fingerprint recorded in the run's
    dir differs from the run's resolved config; [] when it has none or the same. A SEED drawn at the
    first start (the sweep's SEED < 0) is the run's own, not a difference."""
    recorded = RunDir(run.output_dir).read_fingerprint()
    if recorded is None or run.fingerprint is None or recorded.get("sha256") == run.fingerprint["sha256"]:
        return []
    mine = run.fingerprint
    if run.seed < 0 and "SEED" in recorded.get("config", {}):
        mine = {**mine, "config": {**mine["config"], "SEED": recorded["config"]["SEED"]}}
    return fingerprint_diff(recorded, mine)


def _listed(items: List[str]) -> str:
    more = len(items) - MAX_LISTED
    return ", ".join(items[:MAX_LISTED]) + (f" and {more} more" if more > 0 else "")


def _entry(sweep: Sweep, run: RunSpec, key: str) -> str:
    """The entry of the sweep file that set `key` (DATASETS.TRAIN / DATASETS.TEST / MODEL.WEIGHTS) for `run`."""
    if key == "DATASETS.TRAIN" and "subset" in run.axes:
        extra = (f"train_dataset {sweep.source['train_dataset']!r}" if "train_dataset" in sweep.source
                 else "the default train_dataset 'coco_2017_train'")
        return f"axes.subset {run.axes['subset']!r} with {extra}"
    if key in run.axes:
        return f"axes.{key} {run.axes[key]!r}"
    overrides = [str(x) for x in sweep.source.get("overrides") or []]
    if key in overrides[0::2]:
        return f"overrides {key}"
    return f"{key} of config {os.path.relpath(run.config)}"


def dataset_problem(name: str) -> str:
    """Why dataset `name` cannot be used here, or "" (see the module doc: nothing is created)."""
    m = None if is_json_path(name) else SUBSET_RE.match(name)
    if m:
        try:
            Selection.parse(m.group("sel"))
        except ValueError as e:
            return f"not a subset that can be drawn: {e}"
    base = m.group("base") if m else name
    if base in SYNTHETIC_NAMES:
        return ""  # generated on first use
    try:
        if m and base not in list_datasets():  # a subset tools/make_subsets.py wrote, found by its name
            get_dataset_spec(name, create=False)
        else:
            get_dataset_spec(base, create=False)
    except DatasetError as e:
        return str(e)
    return ""


def dataset_problems(sweep: Sweep, source: str) -> List[str]:
    """One message per (dataset, sweep entry) that cannot be used, naming the runs."""
    uses: Dict[Tuple[str, str, str, str], List[str]] = {}
    for run in sweep.runs:
        cfg = {k: v for k, v in (run.fingerprint or {}).get("config", {}).items() if k.startswith("DATASETS.")}
        registered = repr(cfg.get("DATASETS.REGISTER", []))
        for key in ("DATASETS.TRAIN", "DATASETS.TEST"):
            for name in cfg.get(key, []):
                uses.setdefault((name, key, _entry(sweep, run, key), registered), []).append(run.name)
    problems, seen = [], {}
    for (name, key, entry, registered), runs in uses.items():
        if (name, registered) not in seen:
            try:
                register_config_datasets(ast.literal_eval(registered))  # this run's DATASETS.REGISTER
                seen[(name, registered)] = dataset_problem(name)
            except DatasetError as e:
                seen[(name, registered)] = str(e)
        why = seen[(name, registered)]
        if why:
            problems.append(f"{source}: {entry}: {key} {name!r} (run(s) {_listed(runs)}): {why}")
    return problems


def weights_problems(sweep: Sweep, source: str) -> List[str]:
    """One message per (MODEL.WEIGHTS, sweep entry) whose file is not there, naming the runs."""
    uses: Dict[Tuple[str, str], List[str]] = {}
    for run in sweep.runs:
        weights = (run.fingerprint or {}).get("config", {}).get("MODEL.WEIGHTS", "")
        if weights:
            uses.setdefault((weights, _entry(sweep, run, "MODEL.WEIGHTS")), []).append(run.name)
    problems = []
    for (weights, entry), runs in uses.items():
        try:
            resolve_weights_path(weights)
        except (WeightsError, FileNotFoundError) as e:
            problems.append(f"{source}: {entry} (run(s) {_listed(runs)}): {e}")
    return problems


def run_dir_problems(sweep: Sweep, source: str) -> List[str]:
    problems = []
    for run in sweep.runs:
        try:
            diff = run_dir_conflict(run)
        except ValueError as e:  # an unreadable fingerprint.json
            problems.append(f"{source}: run {run.name}: {e}")
            continue
        if diff:
            problems.append(f"{source}: run {run.name}: {run.output_dir} belongs to another run (its "
                            f"{os.path.basename(RunDir(run.output_dir).fingerprint_file)} records a different "
                            f"config): {'; '.join(diff[:MAX_LISTED])}" +
                            (f" and {len(diff) - MAX_LISTED} more keys" if len(diff) > MAX_LISTED else ""))
    if problems:
        problems.append("Resuming there would continue those runs' checkpoints under these settings, and their "
                        "files would be reported as these runs'. Submit under another sweep name or root, or move "
                        "the old run dirs away.")
    return problems


def check_submission(sweep: Sweep, source: str) -> None:
    """Raise SweepError listing every problem (datasets, weights, run dirs) of submitting `sweep` here."""
    problems = dataset_problems(sweep, source) + weights_problems(sweep, source) + run_dir_problems(sweep, source)
    if problems:
        raise SweepError("refusing to submit:\n" + "\n".join(problems))
