"""Schedule forking: train the paper's 2x..6x schedules from one trunk.

Every schedule runs at the base LR until its first drop (MAX_ITER - 60k), and the data order and
every random stream depend only on (SEED, iteration, rank layout), never on MAX_ITER. So the
longest run of a group (the trunk) passes through the exact state of each shorter schedule at that
schedule's first LR drop. The trunk checkpoints there (SOLVER.CHECKPOINT_ITERS); each shorter
schedule is a branch that starts from that checkpoint in its own OUTPUT_DIR, with the trunk's metrics
up to the fork carried over so its curve is complete, and trains the rest with its own LR drops.

Cascade switch (sweep key `cascade_switch`): the paper's scratch models "switch to cascade in the final 270k
iterations" (Sec. 5.1). A Cascade R-CNN run is a branch of its standard-head twin (same grid, same axes but
the heads axis), starting from the twin's checkpoint at MAX_ITER - 270k, whose weights are converted for
the cascade model (rethink.engine.checkpoint.cascade_checkpoint_from_standard: the trained box head copied
into every stage); the branch trains the rest with its own config (cascade heads, its LR drops).

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

import torch

from ..engine.checkpoint import cascade_checkpoint_from_standard
from ..utils.atomic import atomic_copy, atomic_torch_save, atomic_write_text
from ..utils.rundir import RunDir

logger = logging.getLogger(__name__)


def _group_key(run) -> tuple:
    pairs = list(zip(run.overrides[0::2], run.overrides[1::2]))
    return (run.config, tuple(p for p in pairs if p[0] not in ("SOLVER.SCHEDULE", "SOLVER.MAX_ITER")))


def plan_forks(runs) -> None:
    """Mark, among runs that differ only in SOLVER.SCHEDULE or SOLVER.MAX_ITER, the longest as trunk and the others as
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


CASCADE_SWITCH_KEYS = {"axis", "last_iters", "only"}


def plan_cascade_switch(runs, rule: dict) -> None:
    """`cascade_switch: {axis: heads, last_iters: 270000, only: {init: scratch}}`: every run with
    CascadeROIHeads (whose axes match `only`) becomes a branch of its twin with StandardROIHeads (same grid,
    the same value on every axis but `axis`) at iteration MAX_ITER - last_iters. Raises ValueError when the
    rule is malformed, a cascade run has no (or several) twins, or the two runs' LR differs before the fork."""
    if not isinstance(rule, dict) or set(rule) - CASCADE_SWITCH_KEYS or "axis" not in rule or "last_iters" not in rule:
        raise ValueError(f"cascade_switch: {rule!r}: give {{axis: <the axis of the heads>, last_iters: N, "
                         f"only: {{axis: value}} (optional)}}")
    axis, last, only = rule["axis"], rule["last_iters"], rule.get("only") or {}
    if not isinstance(last, int) or isinstance(last, bool) or last <= 0:
        raise ValueError(f"cascade_switch.last_iters: {last!r} must be a positive number of iterations")
    if not any(axis in r.axes for r in runs):
        raise ValueError(f"cascade_switch.axis: {axis!r} is not an axis of this sweep")
    for a, v in only.items():
        if not any(str(r.axes.get(a)) == str(v) for r in runs):
            raise ValueError(f"cascade_switch.only: no run has {a} = {v!r}")
    for b in runs:
        if b.roi_heads != "CascadeROIHeads" or any(str(b.axes.get(a)) != str(v) for a, v in only.items()):
            continue
        twins = [t for t in runs if t.grid == b.grid and t.roi_heads == "StandardROIHeads" and axis in t.axes
                 and all(t.axes.get(a) == v for a, v in b.axes.items() if a != axis)]
        if len(twins) != 1:
            raise ValueError(f"cascade_switch: {b.name} needs exactly one run with standard heads and the same "
                             f"axes but {axis!r}, found {[t.name for t in twins] or 'none'}")
        trunk, k = twins[0], b.max_iter - last
        problems = [why for bad, why in (
            (k <= 0, f"its MAX_ITER {b.max_iter} is not longer than last_iters {last}"),
            (k >= trunk.max_iter, f"the trunk ends at {trunk.max_iter}, before iteration {k}"),
            (trunk.fork_from is not None, f"the trunk {trunk.name} is itself a branch"),
            (b.fork_from is not None, "it is already a branch of a schedule fork"),
            (trunk.seed < 0 or trunk.seed != b.seed, f"SEED {trunk.seed} vs {b.seed} (both explicit and equal)"),
            (trunk.ims_per_batch != b.ims_per_batch, f"IMS_PER_BATCH {trunk.ims_per_batch} vs {b.ims_per_batch}"),
            (trunk.base_lr != b.base_lr or trunk.warmup_iters != b.warmup_iters,
             f"BASE_LR/WARMUP_ITERS {trunk.base_lr}/{trunk.warmup_iters} vs {b.base_lr}/{b.warmup_iters}"),
            (bool(trunk.steps) and trunk.steps[0] < k or bool(b.steps) and b.steps[0] < k,
             f"an LR drop before the switch (STEPS {trunk.steps} / {b.steps})"),
        ) if bad]
        if problems:
            raise ValueError(f"cascade_switch: {b.name} cannot branch off {trunk.name} at iteration {k}: "
                             + "; ".join(problems))
        b.fork_from = {"trunk": trunk.name, "trunk_dir": trunk.output_dir, "iteration": k, "convert": "cascade"}
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
    if fork_from.get("convert") == "cascade":
        data = torch.load(src, map_location="cpu", weights_only=True)
        data = cascade_checkpoint_from_standard(data, len(cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS), cfg.SEED, src)
        atomic_torch_save(data, run.checkpoint(k))
    elif fork_from.get("convert"):
        raise ValueError(f"branch {out}: unknown conversion {fork_from['convert']!r} of the trunk's checkpoint")
    else:
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
