"""State of a sweep's runs from what is on disk and what the scheduler says: pending, running,
requeued, done, failed (with the tail of its error), stale, last iteration, latest box/mask AP.

* done: the final checkpoint exists and the metrics reach MAX_ITER, with AP logged there when the run
  has a test set (DATASETS.TEST), and the run dir is this run's (no other fingerprint recorded).
* stale: the run dir recorded another run's fingerprint (a different resolved config): whatever is
  in it is not this run's, however far it got.
* failed: the job raised (submitit's error result), or it ended without a result and without
  finishing: on SLURM sacct says so; a local job (`--cluster local`, job id = its controller's pid)
  whose processes are gone without a result was killed by a signal: `failed (killed)`. (Only the
  machine that ran a local job can tell: elsewhere it reads running/pending, as its log says.)

A failed run's error is the job's own exception message, whole (not the traceback's last lines):
the table shows its first line, and the whole message follows the table.

A run directory written by tools/train.py (config.yaml, no sweep.yaml) is reported as a sweep of that
one run: done, running (its lock is held), failed (its log.txt ends with the error that stopped it)
or stopped at its last iteration.
"""
import fcntl
import glob
import json
import logging
import os
import pickle
import re
import socket
import time
from typing import Dict, List, Optional

import yaml

from ..utils.rundir import RunDir
from .local import alive_jobs, job_alive, task_error_tail
from .preflight import run_dir_conflict
from .sweep import RunSpec, Sweep, expand, submissions

logger = logging.getLogger(__name__)


def load_submitted_sweep(sweep_dir: str) -> Sweep:
    """The sweep submitted into `sweep_dir` (its sweep.yaml), or, for a run directory of tools/train.py
    (a config.yaml), a sweep of that one run."""
    path = os.path.join(sweep_dir, "sweep.yaml")
    run = RunDir(sweep_dir)
    if not os.path.isfile(path) and os.path.isfile(run.config_file):
        full = os.path.abspath(sweep_dir)
        return expand({"name": os.path.basename(full), "root": os.path.dirname(full), "config": run.config_file,
                       "single": True, "run_dir": True}, run.config_file)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{sweep_dir}: no sweep.yaml and no config.yaml (not a submitted sweep or a run "
                                f"directory)")
    with open(path) as f:
        spec = yaml.safe_load(f)
    return expand(spec, path, root=spec.get("root"))


def job_ids(sweep: Sweep) -> Dict[str, str]:
    ids: Dict[str, str] = {}
    for sub in submissions(sweep.dir):
        ids.update(sub["jobs"])
    for r in sweep.runs:
        marker = RunDir(r.output_dir).fork_marker
        if r.fork_from and os.path.isfile(marker) and os.path.getsize(marker):
            with open(marker) as f:
                ids.setdefault(r.name, json.load(f)["job_id"])
    return ids


def _result(sweep: Sweep, job_id: str):
    """submitit's result pickle of task 0: ("success", value) or ("error", traceback)."""
    hits = glob.glob(os.path.join(sweep.dir, ".submitit", "*", f"{job_id}_0_result.pkl"))
    if not hits:
        return None
    with open(hits[0], "rb") as f:
        return pickle.load(f)  # written by our own jobs


def _scheduler_state(sweep: Sweep, job_id: str, cluster: str) -> Optional[str]:
    if cluster != "slurm":
        return None
    import submitit

    try:
        return submitit.SlurmJob(os.path.join(sweep.dir, ".submitit", "%j"), job_id).state
    except Exception as e:  # sacct unavailable: say so, don't fail the whole table
        logger.debug("sacct for %s failed: %s", job_id, e)
        return None


def error_message(traceback_text: str) -> str:
    """The exception's own message from a formatted traceback (the last one of a chain), whole, its class
    without its module: 'DatasetError: unknown dataset ...'."""
    lines = str(traceback_text).rstrip().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
    body = lines[starts[-1] + 1:] if starts else lines
    first = next((i for i, line in enumerate(body) if line and not line[0].isspace()), None)
    if first is None:
        return " | ".join(line.strip() for line in lines[-3:])
    message = "\n".join(body[first:]).strip()
    head, sep, rest = message.partition(":")
    if sep and re.fullmatch(r"[\w.]+", head):
        message = head.rsplit(".", 1)[-1] + sep + rest
    return message


def _locked(run: RunDir) -> bool:
    """Whether a training holds the run directory's lock now (utils.runlock)."""
    try:
        fd = os.open(run.lock_file, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def _logged_failure(run: RunDir) -> str:
    """The error a run's log.txt ends with (tools/train.py's 'error: ...', a job's 'Run ... failed: ...'), or ''."""
    log = run.log_file()
    if not os.path.isfile(log):
        return ""
    with open(log, errors="replace") as f:
        lines = f.read().splitlines()
    starts = [i for i, line in enumerate(lines) if re.search(r"\] Run .* world size", line)]
    for i in range(len(lines) - 1, (starts[-1] if starts else -1), -1):
        m = re.search(r"\] (?:error: |Run \S+ failed: )(.*)$", lines[i])
        if m:
            tail = [line for line in lines[i + 1:] if not line.startswith("[") and "RETHINK_TRACEBACK" not in line]
            return "\n".join([m.group(1)] + tail).strip()
    return ""


def _run_dir_state(run: RunDir, row: dict) -> str:
    """State of a run directory that no submission recorded (tools/train.py's)."""
    if _locked(run):
        return "running"
    failure = _logged_failure(run)
    if failure:
        row["error"] = failure
        return "failed"
    return f"stopped at iteration {row['iteration']}" if run.has_started() else "not started"


def _starts(run: RunDir) -> int:
    """How often the run started (first start, requeues): rank 0's "Run ... world size" lines."""
    log = run.log_file()
    if not os.path.isfile(log):
        return 0
    with open(log, errors="replace") as f:
        return sum(1 for line in f if re.search(r"\] Run .* world size", line))


def is_done(run: RunDir, spec: RunSpec, metrics: List[dict]) -> bool:
    """Trained to MAX_ITER (final checkpoint, metrics up to MAX_ITER) and, with a test set, evaluated there."""
    if spec.evaluates:
        return run.is_done(spec.max_iter, metrics)
    return os.path.isfile(run.final_checkpoint) and bool(metrics) and metrics[-1]["iteration"] >= spec.max_iter


def _stale(spec: RunSpec) -> str:
    try:
        diff = run_dir_conflict(spec)
    except ValueError as e:  # an unreadable fingerprint.json
        return f"stale: {e}"
    if not diff:
        return ""
    return f"stale: belongs to another config ({'; '.join(diff[:3])}{' ...' if len(diff) > 3 else ''})"


TERMINAL = ("done", "cancelled", "stale", "failed", "blocked", "not submitted", "stopped", "not started")


def is_terminal(state: str) -> bool:
    """Nothing changes this state without a new submission."""
    return state.startswith(TERMINAL)


def is_resubmittable(state: str) -> bool:
    return state.startswith(("failed", "cancelled", "timeout"))


def run_states(sweep: Sweep) -> List[dict]:
    ids = job_ids(sweep)
    subs = submissions(sweep.dir)
    cluster = subs[-1]["cluster"] if subs else "slurm"
    submitit_dir = os.path.join(sweep.dir, ".submitit")
    alive = alive_jobs(submitit_dir) if cluster == "local" else None
    # local jobs submitted on another machine: their processes are not in this one's process table
    elsewhere = {j for sub in subs if sub.get("host", socket.gethostname()) != socket.gethostname()
                 for j in sub["jobs"].values()}
    rows = []
    for r in sweep.runs:
        run = RunDir(r.output_dir)
        row = {"run": r.name, "job_id": ids.get(r.name, ""), "iteration": 0, "max_iter": r.max_iter,
               "box_AP": None, "mask_AP": None, "starts": _starts(run), "error": "",
               "fork": f"{r.fork_from['trunk']}@{r.fork_from['iteration']}" if r.fork_from else
               ("trunk" if r.checkpoint_iters else "")}
        metrics = run.metrics()
        if metrics:
            row["iteration"] = metrics[-1]["iteration"]
            evals = [m for m in metrics if "bbox/AP" in m]
            if evals:
                row["box_AP"], row["mask_AP"] = evals[-1]["bbox/AP"], evals[-1].get("segm/AP")
        stale = _stale(r)
        done = not stale and is_done(run, r, metrics)
        result = _result(sweep, row["job_id"]) if row["job_id"] else None
        sched = _scheduler_state(sweep, row["job_id"], cluster) if row["job_id"] and not done else None
        local_alive = (job_alive(row["job_id"], submitit_dir, alive)
                       if row["job_id"] and cluster == "local" and row["job_id"] not in elsewhere else None)
        if stale:
            state = stale
        elif done:
            state = "done"
        elif result and result[0] == "error":
            state = "failed"
            row["error"] = error_message(result[1])
        elif not row["job_id"] and sweep.source.get("run_dir"):
            state = _run_dir_state(run, row)
        elif not row["job_id"]:
            state = f"waiting for trunk @{r.fork_from['iteration']}" if r.fork_from else "not submitted"
        elif sched:
            state = {"PENDING": "pending", "RUNNING": "running", "REQUEUED": "requeued",
                     "COMPLETED": f"failed (ended at iteration {row['iteration']})",
                     "FAILED": "failed", "CANCELLED": "cancelled", "TIMEOUT": "timeout", "NODE_FAIL": "failed",
                     "PREEMPTED": "requeued", "OUT_OF_MEMORY": "failed"}.get(sched.split()[0], sched.lower())
        elif local_alive is False:  # a local job whose processes are gone, not done, no error result
            if result is None:
                state = "failed (killed)"
                row["error"] = task_error_tail(submitit_dir, row["job_id"])
            else:
                state = f"failed (ended at iteration {row['iteration']})"
        else:
            state = "running" if row["starts"] else "pending"
        if state == "running" and row["starts"] > 1:
            state = f"running (requeued {row['starts'] - 1}x)"
        row["state"] = state
        rows.append(row)
    states = {row["run"]: row["state"] for row in rows}
    for r, row in zip(sweep.runs, rows):  # a branch whose trunk ended without reaching the fork point
        trunk = states.get(r.fork_from["trunk"]) if r.fork_from else None
        if trunk == "done":  # done training, but its job may still be submitting branches: wait for it to end
            trunk_job = next(x["job_id"] for x in rows if x["run"] == r.fork_from["trunk"])
            trunk = "done" if _result(sweep, trunk_job) is not None else None
        if row["state"].startswith("waiting") and trunk and (trunk == "done" or is_resubmittable(trunk)):
            row["state"] = ("blocked: the trunk finished without submitting it (see the trunk's log)" if trunk == "done"
                            else f"blocked: trunk {trunk} before iteration {r.fork_from['iteration']}")
    return rows


def format_states(rows: List[dict]) -> str:
    head = ("run", "job", "state", "iter", "box AP", "mask AP", "fork", "error")
    def short(error: str) -> str:
        first = error.splitlines()[0] if error else ""
        return first if len(first) <= 100 and first == error else first[:100] + " ... (below)"

    table = [head] + [(r["run"], str(r["job_id"]), r["state"], f"{r['iteration']}/{r['max_iter']}",
                       "" if r["box_AP"] is None else f"{r['box_AP']:.2f}",
                       "" if r["mask_AP"] is None else f"{r['mask_AP']:.2f}", r["fork"], short(r["error"]))
                      for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for r in rows:  # a long or multi-line error, whole
        if r["error"] and short(r["error"]) != r["error"]:
            lines.append(f"\n{r['run']}: {r['error']}")
    return "\n".join(lines)


def wait(sweep: Sweep, poll_s: float = 10.0, timeout_s: Optional[float] = None, report=None) -> List[dict]:
    """Poll until every run is done, failed, cancelled, stale or blocked (is_terminal); `report(rows)` is
    called when something changes."""
    start, last = time.time(), None
    while True:
        rows = run_states(sweep)
        summary = [(r["run"], r["state"], r["iteration"]) for r in rows]
        if summary != last and report:
            report(rows)
        last = summary
        if all(is_terminal(r["state"]) for r in rows):
            return rows
        if timeout_s and time.time() - start > timeout_s:
            raise TimeoutError(f"sweep {sweep.name}: not finished after {timeout_s:.0f} s")
        time.sleep(poll_s)
