"""Training runs as submitit jobs: on SLURM (one task per GPU, every task one rank, any number of
nodes) or on this machine (`cluster="local"`), requeued with resume on preemption or timeout.

The job is a class with `__call__` and `checkpoint()` (DETR's run_with_submitit pattern). When SLURM
signals (SIGUSR2 before the time limit, SIGTERM on preemption), the training saves a checkpoint at the
next step boundary (every rank agrees on it: rethink.utils.signals) and stops; then submitit's own
handler for that signal runs (SIGUSR2: `checkpoint()`, requeue under the same job id; SIGTERM: SLURM
requeues a preempted job itself). A transient failure (cluster.retry) is requeued too, up to
`max_retries` per run. Every restart resumes from the last checkpoint in the run's OUTPUT_DIR, with the
run's saved config.yaml: a config file edited since is reported, not applied.

A job that fails writes its own message into the run's log.txt (rank 0; a user error -- config,
dataset, weights, run directory -- as its one message, anything else with its traceback), so the log
ends with why, not only with submitit's "Submitted job triggered an exception"; launch/status.py
shows the same message from the job's result.
"""
import logging
import os
import re
import signal
import socket
import subprocess
import zlib
from typing import Dict, List, Optional

import submitit

from ..config import load_config
from ..engine import check_run, launch, load_run_config, main_worker
from ..engine.ownership import RunDirMismatch
from ..utils.fingerprint import config_fingerprint, fingerprint_diff
from ..utils.logger import setup_logging
from ..utils.rundir import RunDir
from ..utils.signals import TrainingStopped
from ..utils.usererrors import USER_ERRORS, one_line
from .branches import BranchSubmitter, prepare_branch
from .resources import Resources, make_executor
from .retry import retry_decision
from .sweep import record_submission

logger = logging.getLogger(__name__)


def master_address(hostname: str) -> str:
    """An address of `hostname` that works without DNS: the resolver first, then SLURM's NodeAddr."""
    try:
        return socket.gethostbyname(hostname)
    except OSError:
        pass
    try:
        out = subprocess.run(["scontrol", "show", "node", hostname], capture_output=True, text=True, timeout=30).stdout
        m = re.search(r"NodeAddr=(\S+)", out)
        if m:
            return socket.gethostbyname(m.group(1))
    except (OSError, subprocess.SubprocessError):
        pass
    raise RuntimeError(f"cannot resolve the first node {hostname!r} of the allocation (no DNS entry and no "
                       "NodeAddr in `scontrol show node`)")


def master_port(job_id: str) -> int:
    """A port from the job id (array tasks have distinct ids), so jobs sharing a node don't collide;
    in 20000-31999, below Linux's ephemeral range (32768-60999) where outgoing connections take theirs."""
    return 20000 + zlib.crc32(str(job_id).encode()) % 12000


def set_dist_env_from_submitit() -> dict:
    """RANK / WORLD_SIZE / LOCAL_RANK / LOCAL_WORLD_SIZE / MASTER_ADDR / MASTER_PORT for env://."""
    env = submitit.JobEnvironment()
    per_node = max(1, env.num_tasks // max(1, env.num_nodes))
    first = env.hostnames[0] if env.hostnames else env.hostname
    values = {"RANK": env.global_rank, "WORLD_SIZE": env.num_tasks, "LOCAL_RANK": env.local_rank,
              "LOCAL_WORLD_SIZE": per_node, "MASTER_ADDR": master_address(first) if env.num_nodes > 1 else "127.0.0.1",
              "MASTER_PORT": master_port(os.environ.get("SLURM_JOB_ID", env.job_id))}
    os.environ.update({k: str(v) for k, v in values.items()})
    return values


def restart_config(config: str, overrides: List[str], output_dir: str):
    """The config a (re)started job trains with. First start: the config file and the overrides.
    Restart (the run directory has a fingerprint and a config.yaml): the saved config.yaml with the
    submitted overrides; a difference from the recorded fingerprint means another run was submitted
    into this directory (RunDirMismatch naming the keys); a config file edited since the first start
    is reported and not applied."""
    fresh = load_run_config(config, overrides, resume=True)
    run = RunDir(output_dir)
    recorded = run.read_fingerprint()
    if recorded is None or not os.path.isfile(run.config_file):
        return fresh
    cfg = load_config(run.config_file, overrides)
    saved = config_fingerprint(cfg)
    diff = fingerprint_diff(recorded, saved)
    if diff:
        raise RunDirMismatch(f"{output_dir} belongs to another run: with this job's overrides its saved "
                             f"{os.path.basename(run.config_file)} changes {'; '.join(diff)}. Submit runs with other "
                             "settings into their own directories")
    edited = fingerprint_diff(saved, config_fingerprint(fresh))
    if edited:
        logger.warning("%s changed since this run started (%s): not applied; the run continues with its saved %s",
                       config, "; ".join(edited), run.config_file)
    return cfg


class TrainJob:
    """One training run as a checkpointable submitit job. Every start (first, requeued, resubmitted)
    resumes from the last checkpoint in the run's OUTPUT_DIR. `max_retries`: requeues after transient
    failures (cluster.retry), per run."""

    def __init__(self, config: str, overrides: List[str], output_dir: str, fork_from: Optional[dict] = None,
                 max_retries: int = 3):
        self.config, self.overrides, self.output_dir, self.fork_from = config, list(overrides), output_dir, fork_from
        self.max_retries = max_retries

    def run_overrides(self) -> List[str]:
        return self.overrides + ["OUTPUT_DIR", self.output_dir]

    def __call__(self):
        values = set_dist_env_from_submitit()
        setup_logging(None, values["RANK"])
        try:
            return self._run(values)
        except Exception as e:
            if values["RANK"] == 0:
                self.log_failure(e)
            raise

    def log_failure(self, e: BaseException) -> None:
        """The job's error, into the run's log.txt (and the job's own log)."""
        setup_logging(self.output_dir, 0)
        if isinstance(e, USER_ERRORS):
            logger.error("Run %s failed: %s", self.output_dir, one_line(e))
        else:
            logger.error("Run %s failed: %s", self.output_dir, one_line(e), exc_info=e)

    def _run(self, values):
        cfg = restart_config(self.config, self.run_overrides(), self.output_dir)
        # the start-up check of tools/train.py (datasets, their category counts against NUM_CLASSES, weights):
        # a mistake ends the job here with its message, not at iteration 1 or at the first evaluation
        check_run(cfg, resume=True)
        if self.fork_from:
            prepare_branch(cfg, self.fork_from, rank=values["RANK"])
        try:
            return launch(main_worker, device=cfg.MODEL.DEVICE, args=(cfg, True, False))
        except TrainingStopped as e:
            # the checkpoint is saved; submitit's handler for the signal (restored by now) requeues on SIGUSR2
            # and exits on rank 0; on SIGTERM SLURM requeues a preempted job itself
            logger.warning("%s", e)
            handler = signal.getsignal(e.handled_as)
            if callable(handler):
                handler(e.handled_as, None)
            raise SystemExit(e.exit_code) from None
        except Exception as e:
            why = retry_decision(e, self.output_dir, self.max_retries) if values["RANK"] == 0 else None
            if why:
                logger.exception("%s: %s", self.output_dir, why)  # the error, with its traceback, in the log
                submitit.JobEnvironment()._requeue(self.max_retries)  # scontrol requeue (SLURM) / restart (local)
                raise SystemExit(1) from None  # no error result: the requeued job writes the run's result
            raise

    def checkpoint(self, *args, **kwargs):
        logger.warning("Job signalled (timeout or preemption): requeueing %s; it resumes from its last checkpoint",
                       self.output_dir)
        return submitit.helpers.DelayedSubmission(TrainJob(self.config, self.overrides, self.output_dir,
                                                           self.fork_from, self.max_retries))


def submit_sweep(sweep, cluster: str = "slurm", only: Optional[List[str]] = None) -> Dict[str, str]:
    """Submit the runs of `sweep` as one job array; returns {run name: job id} and records it in the
    sweep dir. Schedule-fork branches are submitted by their trunk, unless named in `only` (e.g.
    resubmitting failed runs), which submits just those runs."""
    runs = [r for r in sweep.runs if r.name in only] if only is not None else [r for r in sweep.runs if not r.fork_from]
    if not runs:
        return {}
    cuda = load_config(runs[0].config, runs[0].overrides).MODEL.DEVICE.startswith("cuda")
    folder = os.path.join(sweep.dir, ".submitit", "%j")
    executor = make_executor(folder, cluster, sweep.resources, cuda, job_name=sweep.name)
    jobs_by_run = {}
    with executor.batch():
        for r in runs:
            branches = [b for b in sweep.runs if b.fork_from and b.fork_from["trunk"] == r.name]
            overrides = r.overrides + _checkpoint_iters(r)
            if r.fork_from:
                job = TrainJob(r.config, overrides, r.output_dir, fork_from=r.fork_from,
                               max_retries=sweep.resources.max_retries)
            elif branches:
                specs = [{"name": b.name, "config": b.config, "overrides": b.overrides, "output_dir": b.output_dir,
                          "fork_from": b.fork_from} for b in branches]
                job = TrunkJob(r.config, overrides, r.output_dir, specs, cluster, sweep.resources, folder, cuda,
                               sweep.name)
            else:
                job = TrainJob(r.config, overrides, r.output_dir, max_retries=sweep.resources.max_retries)
            jobs_by_run[r.name] = executor.submit(job)
    ids = {name: job.job_id for name, job in jobs_by_run.items()}
    record_submission(sweep, cluster, ids)
    logger.info("Submitted %d runs of sweep %s (%s): %s", len(ids), sweep.name, cluster,
                ", ".join(f"{k}={v}" for k, v in ids.items()))
    sweep.jobs = jobs_by_run
    return ids


def _checkpoint_iters(run) -> List[str]:
    return ["SOLVER.CHECKPOINT_ITERS", repr(tuple(run.checkpoint_iters))] if run.checkpoint_iters else []


class TrunkJob(TrainJob):
    """The longest schedule of a forked group: trains like TrainJob while rank 0 submits each branch
    (rethink.cluster.branches) as soon as the branch's fork checkpoint exists."""

    def __init__(self, config, overrides, output_dir, branches: List[dict], cluster: str, resources: Resources,
                 folder: str, cuda: bool, job_name: str = "rethink"):
        super().__init__(config, overrides, output_dir, max_retries=resources.max_retries)
        self.branches, self.cluster, self.resources = branches, cluster, resources
        self.folder, self.cuda, self.job_name = folder, cuda, job_name

    def submit_branch(self, branch: dict) -> str:
        executor = make_executor(self.folder, self.cluster, self.resources, self.cuda, self.job_name)
        conf = os.environ.get("SLURM_CONF")  # the cluster's config, not this job's state: keep it
        with submitit.helpers.clean_env():  # not this job's SLURM_* / RANK / MASTER_* variables
            if conf:
                os.environ["SLURM_CONF"] = conf
            job = executor.submit(TrainJob(branch["config"], branch["overrides"], branch["output_dir"],
                                           fork_from=branch["fork_from"], max_retries=self.resources.max_retries))
        return job.job_id

    def __call__(self):
        watcher = BranchSubmitter(self.branches, self.submit_branch).start() \
            if submitit.JobEnvironment().global_rank == 0 else None
        try:
            result = super().__call__()
        except BaseException:
            if watcher:
                watcher.stop(final_check=False)  # don't let a submission error mask the training error
            raise
        if watcher:
            watcher.stop()
        return result

    def checkpoint(self, *args, **kwargs):
        logger.warning("Job signalled (timeout or preemption): requeueing trunk %s", self.output_dir)
        return submitit.helpers.DelayedSubmission(TrunkJob(self.config, self.overrides, self.output_dir, self.branches,
                                                           self.cluster, self.resources, self.folder, self.cuda,
                                                           self.job_name))
