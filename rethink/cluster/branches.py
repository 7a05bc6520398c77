"""Schedule forking: train the paper's 2x..6x schedules from one trunk.

Every schedule runs at the base LR until its first drop (MAX_ITER - 60k), and the data order and
every random stream depend only on (SEED, iteration, rank layout), never on MAX_ITER. So the
longest run of a group (the trunk) passes through the exact state of each shorter schedule at that
schedule's first LR drop. The trunk checkpoints there (SOLVER.CHECKPOINT_ITERS); each shorter
schedule is a branch that starts from that checkpoint in its own OUTPUT_DIR, with the trunk's metrics
up to the fork carried over so its curve is complete, and trains the rest with its own LR drops.

Branches are submitted by the trunk's job as soon as their fork checkpoint exists (a watcher thread
on rank 0); a marker file in the branch dir (RunDir.fork_marker) makes that happen once, also across
trunk requeues.
"""
import json
import logging
import os
import threading
import time
from typing import Dict, List

from ..utils.atomic import atomic_copy, atomic_write_text
from ..utils.rundir import RunDir

logger = logging.getLogger(__name__)


def _group_key(run) -> tuple:
    pairs = list(zip(run.overrides[0::2], run.overrides[1::2]))
    return (run.config, tuple(p for p in pairs if p[0] != "SOLVER.SCHEDULE"))


def plan_forks(runs) -> None:
    """Mark, among runs that differ only in SOLVER.SCHEDULE, the longest as trunk and the others as
    branches at their first LR drop (where the trunk still runs at the same LR)."""
    groups: Dict[tuple, list] = {}
    for r in runs:
        groups.setdefault(_group_key(r), []).append(r)
    for members in groups.values():
        if len(members) < 2:
            continue
        unseeded = [r.name for r in members if r.seed < 0]
        if unseeded:
            raise ValueError(f"fork_schedules needs an explicit SEED (a 'seed' axis or a SEED override): "
                             f"{', '.join(unseeded)} would each draw their own")
        trunk = max(members, key=lambda r: r.max_iter)
        for b in members:
            if b is trunk or not b.steps:
                continue
            k = int(b.steps[0])
            same_lr = trunk.steps and trunk.steps[0] >= k and trunk.warmup_iters == b.warmup_iters and k > 0
            if not same_lr:
                logger.warning("%s cannot fork from %s (its LR differs before iteration %d): trained separately",
                               b.name, trunk.name, k)
                continue
            b.fork_from = {"trunk": trunk.name, "trunk_dir": trunk.output_dir, "iteration": k}
            trunk.checkpoint_iters = sorted(set(trunk.checkpoint_iters) | {k})


def prepare_branch(cfg, fork_from: dict, rank: int = 0, timeout_s: float = 600.0) -> None:
    """Seed a branch's OUTPUT_DIR from the trunk (first start only): the fork checkpoint becomes its
    last checkpoint and the trunk's metrics up to the fork become its first lines. Other ranks wait."""
    out, k = cfg.OUTPUT_DIR, int(fork_from["iteration"])
    run, trunk = RunDir(out), RunDir(fork_from["trunk_dir"])
    if rank != 0:
        deadline = time.time() + timeout_s
        while not run.has_last_checkpoint():
            if time.time() > deadline:
                raise TimeoutError(f"{out}: rank 0 did not prepare the branch from {fork_from['trunk_dir']}")
            time.sleep(1)
        return
    if run.has_last_checkpoint():
        return  # a requeued branch: resume from its own checkpoints
    src = trunk.checkpoint(k)
    if not os.path.isfile(src):
        raise FileNotFoundError(f"branch {out}: the trunk's fork checkpoint {src} does not exist")
    os.makedirs(out, exist_ok=True)
    atomic_copy(src, run.checkpoint(k))

    lines = [m for m in trunk.metrics() if m["iteration"] <= k]
    atomic_write_text(run.metrics_file, "".join(json.dumps(m) + "\n" for m in lines))
    run.set_last_checkpoint(run.checkpoint(k))
    logger.info("Branch %s starts from %s (iteration %d) with %d metric lines of the trunk", out, src, k, len(lines))


STALE_CLAIM_S = 600


def claim_branch(branch_dir: str) -> bool:
    """Atomically create the branch's marker; False if it already exists (submitted before). An
    empty marker older than STALE_CLAIM_S (a submitter killed mid-way) is taken over."""
    os.makedirs(branch_dir, exist_ok=True)
    marker = RunDir(branch_dir).fork_marker
    try:
        if os.path.getsize(marker) == 0 and time.time() - os.path.getmtime(marker) > STALE_CLAIM_S:
            os.remove(marker)
    except OSError:
        pass
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    return True


class BranchSubmitter:
    """Watches the trunk's dir and submits each branch once its fork checkpoint exists."""

    def __init__(self, branches: List[dict], submit_fn, poll_s: float = 5.0):
        self.branches, self.submit_fn, self.poll_s = branches, submit_fn, poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="branch-submitter", daemon=True)

    def start(self):
        self._thread.start()
        return self

    def check(self) -> None:
        for b in self.branches:
            ckpt = RunDir(b["fork_from"]["trunk_dir"]).checkpoint(b["fork_from"]["iteration"])
            if os.path.isfile(ckpt) and claim_branch(b["output_dir"]):
                marker = RunDir(b["output_dir"]).fork_marker
                try:
                    job_id = self.submit_fn(b)
                except Exception:
                    os.remove(marker)
                    raise
                atomic_write_text(marker, json.dumps({"job_id": job_id, "submitted": time.time(), **b["fork_from"]}))
                logger.info("Submitted branch %s as job %s (fork at iteration %d)", b["name"], job_id,
                            b["fork_from"]["iteration"])

    def _loop(self):
        while not self._stop.wait(self.poll_s):
            try:
                self.check()
            except Exception:  # keep watching; the final check in stop() raises
                logger.exception("branch submission failed; retrying")

    def stop(self, final_check: bool = True):
        self._stop.set()
        self._thread.join()
        if final_check:
            self.check()
