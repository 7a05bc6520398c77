"""The run directory (OUTPUT_DIR): the one place that names its files and answers what is asked of it.

    config.yaml                 the resolved, frozen config (atomic)                     RunDir.config_file
    log.txt, log.txt.rankN      the log of rank 0 / of rank N                            RunDir.log_file(rank)
    metrics.jsonl               one JSON object per line, iterations = completed ones    RunDir.metrics_file
    events.out.tfevents.*       TensorBoard, in the directory itself                     RunDir.tensorboard_dir
    model_XXXXXXX.pth           checkpoint after XXXXXXX completed iterations (atomic)   RunDir.checkpoint(k)
    model_final.pth             checkpoint at the end (atomic)                           RunDir.final_checkpoint
    last_checkpoint             the file name of the checkpoint a resume starts from     RunDir.last_checkpoint()
    eval_results.json           what --eval-only writes: {"bbox/AP": ..., ...}           RunDir.eval_results_file
    coco_instances_results.json the last evaluation's detections, COCO results format    RunDir.coco_results_file()
      (.<test set>.json with several DATASETS.TEST; _TTA: test-time augmentation's)     RunDir.coco_results_files()
    per_category_ap.json, .md   the last evaluation's AP per category (table in .md)     RunDir.per_category_ap_file()
    fork.json                   a schedule-fork branch's submission marker               RunDir.fork_marker
    fingerprint.json            the config values that define the run (utils/fingerprint) RunDir.fingerprint_file
    run.lock                    held (flock) by the training that writes here             RunDir.lock_file
    retries.json                requeues after transient errors so far                   RunDir.retries_file
    .<name>.<random>.tmp        an atomic write in progress (removed at start if left)    RunDir.temp_files()
    metrics.json                (detectron2's run directories: its metrics file)         RunDir.detectron2_metrics_file

Metrics are appended, and a requeued run appends again from its last checkpoint, so a file can hold an
iteration twice: readers keep the last entry per iteration, merging the keys written for it.
:func:`read_metrics` reads rethink's own file (the engine, status, branches); :func:`read_metrics_lenient`
is for curves (non-finite numbers become None, detectron2's 0-based iterations become completed ones).
Both skip a damaged line anywhere with a warning naming file and line.
"""
import json
import logging
import math
import os
import re
from typing import Dict, List, Optional, Tuple

from .atomic import atomic_write_text

logger = logging.getLogger(__name__)

CONFIG = "config.yaml"
LOG = "log.txt"
METRICS = "metrics.jsonl"
DETECTRON2_METRICS = "metrics.json"
LAST_CHECKPOINT = "last_checkpoint"
EVAL_RESULTS = "eval_results.json"
COCO_RESULTS = "coco_instances_results"  # + [_TTA] + [.<test set>] + .json (detectron2's file name)
PER_CATEGORY_AP = "per_category_ap"  # + .json / .md
FORK_MARKER = "fork.json"
FINGERPRINT = "fingerprint.json"
LOCK = "run.lock"
RETRIES = "retries.json"
CHECKPOINT_EXT = ".pth"
FINAL_CHECKPOINT = "model_final"  # checkpoint names are file stems, as detectron2's Checkpointer.save(name) takes
_PERIODIC = re.compile(r"^model_(\d{7,})\.pth$")
_TEMP = re.compile(r"^\..+\.tmp$")  # utils.atomic's temporary files
_COCO_RESULTS = re.compile(r"^coco_instances_results(_TTA)?(?:\.(.+))?\.json$")


def checkpoint_name(iteration: int) -> str:
    """The name (file stem) of the checkpoint after `iteration` completed iterations: "model_0005000"."""
    return f"model_{int(iteration):07d}"


def _has_ap(entry: dict) -> bool:
    return any(k.endswith("/AP") for k in entry)


class RunDir:
    """One run's OUTPUT_DIR. Paths are attributes; the questions (which checkpoint resumes, is AP
    logged at iteration k, is the run done) read the files each time they are asked."""

    def __init__(self, path):
        self.path = os.fspath(path)

    def __repr__(self) -> str:
        return f"RunDir({self.path!r})"

    def __fspath__(self) -> str:
        return self.path

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    # -- paths ------------------------------------------------------------------------------------
    @property
    def config_file(self) -> str:
        return self.file(CONFIG)

    def log_file(self, rank: int = 0) -> str:
        return self.file(LOG if rank == 0 else f"{LOG}.rank{rank}")

    @property
    def metrics_file(self) -> str:
        return self.file(METRICS)

    @property
    def detectron2_metrics_file(self) -> str:
        return self.file(DETECTRON2_METRICS)

    @property
    def tensorboard_dir(self) -> str:
        return self.path

    @property
    def eval_results_file(self) -> str:
        return self.file(EVAL_RESULTS)

    def coco_results_file(self, dataset: Optional[str] = None, tta: bool = False) -> str:
        """Where an evaluation writes its detections (COCO results format): coco_instances_results.json for
        the one test set (`dataset` None), coco_instances_results.<dataset>.json for each of several;
        "_TTA" before the dot for the test-time-augmented model's. A dataset named by a path keeps only
        letters, digits and ._- (others become _)."""
        tail = "" if dataset is None else "." + re.sub(r"[^A-Za-z0-9._-]", "_", dataset)
        return self.file(f"{COCO_RESULTS}{'_TTA' if tta else ''}{tail}.json")

    def coco_results_files(self) -> List[Tuple[Optional[str], bool, str]]:
        """(test set as in the file name or None, TTA?, path) of the results files present, sorted by name."""
        if not os.path.isdir(self.path):
            return []
        found = [(m.group(2), bool(m.group(1)), self.file(n))
                 for n, m in ((n, _COCO_RESULTS.match(n)) for n in sorted(os.listdir(self.path))) if m]
        return found

    def per_category_ap_file(self, ext: str = "json") -> str:
        """The last evaluation's AP per category: "json" ({test set: {task: {category: AP}}}) or "md"."""
        return self.file(f"{PER_CATEGORY_AP}.{ext}")

    @property
    def fork_marker(self) -> str:
        return self.file(FORK_MARKER)

    @property
    def fingerprint_file(self) -> str:
        return self.file(FINGERPRINT)

    @property
    def lock_file(self) -> str:
        return self.file(LOCK)

    @property
    def retries_file(self) -> str:
        return self.file(RETRIES)

    def read_fingerprint(self) -> Optional[dict]:
        """The run's recorded fingerprint (utils.fingerprint.config_fingerprint); None when the directory
        has none (a new directory, a run from before fingerprints, a detectron2 run directory)."""
        if not os.path.isfile(self.fingerprint_file):
            return None
        with open(self.fingerprint_file) as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{self.fingerprint_file}: not valid JSON ({e})") from None
        if not isinstance(data, dict) or "config" not in data:
            raise ValueError(f"{self.fingerprint_file}: not a run fingerprint (no 'config')")
        return data

    def write_fingerprint(self, fingerprint: dict) -> None:
        atomic_write_text(self.fingerprint_file, json.dumps(fingerprint, indent=1, sort_keys=True, default=repr))

    def temp_files(self) -> List[str]:
        """Temporary files of atomic writes (left behind only by a process killed mid-write)."""
        if not os.path.isdir(self.path):
            return []
        return sorted(self.file(n) for n in os.listdir(self.path) if _TEMP.match(n))

    def has_started(self) -> bool:
        """Whether a training wrote here already (a checkpoint, its pointer or metrics)."""
        return self.has_last_checkpoint() or bool(self.checkpoints()) or os.path.isfile(self.final_checkpoint) \
            or os.path.isfile(self.metrics_file)

    @property
    def last_checkpoint_file(self) -> str:
        """The pointer file (its text is the file name of the checkpoint a resume starts from)."""
        return self.file(LAST_CHECKPOINT)

    # -- checkpoints ------------------------------------------------------------------------------
    def checkpoint_file(self, name: str) -> str:
        """The path of checkpoint `name` (a file stem: checkpoint_name(k), FINAL_CHECKPOINT, ...)."""
        return self.file(name + CHECKPOINT_EXT)

    def checkpoint(self, iteration: int) -> str:
        return self.checkpoint_file(checkpoint_name(iteration))

    @property
    def final_checkpoint(self) -> str:
        return self.checkpoint_file(FINAL_CHECKPOINT)

    def checkpoints(self) -> List[Tuple[int, str]]:
        """(iteration, path) of the periodic checkpoints present, sorted by iteration (read from the
        names; the final checkpoint is not among them)."""
        if not os.path.isdir(self.path):
            return []
        found = [(int(m.group(1)), self.file(m.group(0))) for m in map(_PERIODIC.match, os.listdir(self.path)) if m]
        return sorted(found)

    def has_last_checkpoint(self) -> bool:
        return os.path.isfile(self.last_checkpoint_file)

    def last_checkpoint(self) -> Optional[str]:
        """The checkpoint a resume starts from: the one `last_checkpoint` names; None without that file.
        A name whose file is missing is an error (the pointer is written after its checkpoint)."""
        if not self.has_last_checkpoint():
            return None
        with open(self.last_checkpoint_file) as f:
            path = self.file(f.read().strip())
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{self.last_checkpoint_file} names {path}, which does not exist")
        return path

    def set_last_checkpoint(self, path: str) -> None:
        """Point `last_checkpoint` at `path` (a checkpoint in this directory), atomically."""
        atomic_write_text(self.last_checkpoint_file, os.path.basename(path))

    # -- metrics ----------------------------------------------------------------------------------
    def metrics_source(self) -> Optional[str]:
        """"rethink" (metrics.jsonl), "detectron2" (only metrics.json) or None (no metrics yet)."""
        if os.path.isfile(self.metrics_file):
            return "rethink"
        if os.path.isfile(self.detectron2_metrics_file):
            return "detectron2"
        return None

    def metrics(self, lenient: bool = False, max_iter: Optional[int] = None) -> List[dict]:
        """The run's metrics, one entry per iteration, sorted; [] when none were written yet.
        Strict (default): rethink's metrics.jsonl through :func:`read_metrics`. `lenient`: through
        :func:`read_metrics_lenient`, and a detectron2 run's metrics.json when there is no
        metrics.jsonl (its iterations converted with `max_iter`, its SOLVER.MAX_ITER)."""
        if not lenient:
            return read_metrics(self.metrics_file) if os.path.isfile(self.metrics_file) else []
        source = self.metrics_source()
        if source is None:
            return []
        path = self.metrics_file if source == "rethink" else self.detectron2_metrics_file
        return read_metrics_lenient(path, source, max_iter)

    def ap_logged_at(self, iteration: int) -> bool:
        """Whether an evaluation result (a "*/AP" key) is logged at `iteration` in metrics.jsonl."""
        return any(m["iteration"] == iteration and _has_ap(m) for m in self.metrics())

    def is_done(self, max_iter: int, metrics: Optional[List[dict]] = None) -> bool:
        """Trained to the end and evaluated there: the final checkpoint exists and AP is logged at an
        iteration >= max_iter. `metrics`: this run's metrics when already read."""
        if not os.path.isfile(self.final_checkpoint):
            return False
        metrics = self.metrics() if metrics is None else metrics
        return any(m["iteration"] >= max_iter and _has_ap(m) for m in metrics)


def read_metrics(path: str) -> List[dict]:
    """Entries of a metrics.jsonl sorted by iteration, one per iteration: later lines for the same
    iteration (a requeued run repeating it) replace earlier values key by key. A damaged line (a crash
    mid-write leaves one, and a resumed run appends after it) is skipped with a warning naming file
    and line, wherever it is."""
    merged: Dict[int, dict] = {}
    with open(path, errors="replace") as f:
        lines = f.readlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            if not isinstance(entry, dict) or not isinstance(entry.get("iteration"), int):
                raise ValueError("not an object with an integer 'iteration'")
        except ValueError as e:
            what = "truncated last line" if n == len(lines) and not line.endswith("\n") else "damaged line"
            logger.warning("%s:%d: skipping a %s (%s)", path, n, what, e)
            continue
        merged.setdefault(int(entry["iteration"]), {}).update(entry)
    return [merged[k] for k in sorted(merged)]


def _finite_or_none(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None  # detectron2 writes NaN for undefined metrics (e.g. APl without large objects)
    return value


def read_metrics_lenient(path: str, source: str = "rethink", max_iter: Optional[int] = None) -> List[dict]:
    """Entries of a metrics file, one per iteration, sorted, in completed iterations.

    ``source="detectron2"``: detectron2 logs the 0-based index of the step just run (``N - 1`` after ``N``
    steps), except after training (its final evaluation), which it logs at ``MAX_ITER``; an iteration ``i``
    becomes ``i + 1`` when ``i < max_iter`` and stays ``i`` otherwise.

    Later lines for an iteration (a requeued or resumed run repeating it) replace earlier values key by key.
    A line that is not a JSON object with an integer ``iteration`` is skipped with a warning naming file and line
    (a truncated last line is the common case: a run killed mid-write). Non-finite numbers become None.
    """
    merged: Dict[int, dict] = {}
    try:
        with open(path, errors="replace") as f:
            lines = f.readlines()
    except OSError as e:
        logger.warning("%s: cannot read metrics (%s)", path, e)
        return []
    skipped = 0
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            skipped += 1
            if n == len(lines) and not line.endswith("\n"):
                logger.warning("%s:%d: ignoring truncated last line (%s)", path, n, e)
            else:
                logger.warning("%s:%d: ignoring a line that is not JSON (%s)", path, n, e)
            continue
        it = entry.get("iteration") if isinstance(entry, dict) else None
        if isinstance(it, float) and it.is_integer():
            it = int(it)
        if not isinstance(it, int) or isinstance(it, bool):
            skipped += 1
            logger.warning("%s:%d: ignoring an entry without an integer 'iteration'", path, n)
            continue
        if source == "detectron2" and (max_iter is None or it < max_iter):
            it += 1
        entry = {k: _finite_or_none(v) for k, v in entry.items()}
        entry["iteration"] = it
        merged.setdefault(it, {}).update(entry)
    if skipped:
        logger.warning("%s: %d of %d lines skipped", path, skipped, len(lines))
    return [merged[k] for k in sorted(merged)]
