"""Training runs as submitit jobs: on SLURM (one task per GPU, every task one rank, any number of
nodes) or on this machine (`cluster="local"`), requeued with resume on preemption or timeout.

The job is a class with `__call__` and `checkpoint()` (DETR's run_with_submitit pattern): submitit
calls `checkpoint()` when SLURM signals a timeout or preemption, and the returned submission is
requeued under the same job id. Every start of the job resumes from the last checkpoint in the
run's OUTPUT_DIR, so a requeued run continues where it stopped (metrics readers dedupe iterations).
"""
import logging
import os
import re
import shutil
import socket
import subprocess
import zlib
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import submitit

logger = logging.getLogger(__name__)


@dataclass
class Resources:
    """What a run asks the cluster for; every cluster-specific value comes from flags or the sweep
    file, never from code."""

    nodes: int = 1
    gpus_per_node: int = 8  # ranks per node; GPUs are requested only for MODEL.DEVICE cuda
    cpus_per_task: int = 10
    time: str = "72:00:00"  # [D-]HH:MM:SS or minutes
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    mem: Optional[str] = None  # e.g. "400G" per node
    comment: Optional[str] = None
    array_parallelism: int = 16  # runs of a sweep running at once
    max_num_timeout: int = 20  # requeues after timeouts (preemptions do not count)
    signal_delay_s: int = 120  # seconds between the USR2 signal and the kill
    sbatch: Dict[str, object] = field(default_factory=dict)  # any other #SBATCH option, e.g. {"exclusive": True}
    sec_per_iter: Optional[float] = None  # for GPU-hour estimates (8 GPUs, 16 images/batch)

    @classmethod
    def from_dict(cls, d: Optional[dict]) -> "Resources":
        d = dict(d or {})
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown resource option(s) {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**d)

    def updated(self, **kw) -> "Resources":
        return Resources(**{**self.__dict__, **{k: v for k, v in kw.items() if v is not None}})


def parse_time(text) -> int:
    """'72:00:00' / '1-12:00:00' / '90' (minutes) -> minutes."""
    text = str(text).strip()
    if re.fullmatch(r"\d+", text):
        return int(text)
    m = re.fullmatch(r"(?:(\d+)-)?(\d+):(\d{2})(?::(\d{2}))?", text)
    if not m:
        raise ValueError(f"bad time {text!r}: use [D-]HH:MM[:SS] or minutes")
    days, hours, minutes, seconds = (int(g) if g else 0 for g in m.groups())
    return days * 1440 + hours * 60 + minutes + (1 if seconds else 0)


def make_executor(folder: str, cluster: str, res: Resources, cuda: bool, job_name: str = "rethink"):
    """A submitit executor for `cluster` ("slurm", "local" or "debug")."""
    if cluster == "slurm" and shutil.which("sbatch") is None:
        raise RuntimeError("--cluster slurm: `sbatch` is not on PATH (no SLURM client here); "
                           "use --cluster local to run on this machine")
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster, slurm_max_num_timeout=res.max_num_timeout)
    params = dict(name=job_name, nodes=res.nodes, tasks_per_node=res.gpus_per_node, timeout_min=parse_time(res.time))
    if cuda:
        params["gpus_per_node"] = res.gpus_per_node
    if cluster == "slurm":
        params.update(cpus_per_task=res.cpus_per_task, slurm_signal_delay_s=res.signal_delay_s,
                      slurm_array_parallelism=res.array_parallelism)
        for key in ("partition", "account", "qos", "constraint", "mem", "comment"):
            if getattr(res, key):
                params[f"slurm_{key}"] = getattr(res, key)
        if res.sbatch:
            params["slurm_additional_parameters"] = dict(res.sbatch)
    elif cluster == "local":
        if res.nodes != 1:
            raise ValueError("--cluster local runs on one node; set nodes to 1")
        # local jobs run side by side: give each task its share of cores, as SLURM would
        params["local_setup"] = [f"export OMP_NUM_THREADS={res.cpus_per_task}"]
    executor.update_parameters(**params)
    return executor


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
    """A port from the job id (array tasks have distinct ids), so jobs sharing a node don't collide."""
    return 20000 + zlib.crc32(str(job_id).encode()) % 20000


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


class TrainJob:
    """One training run as a checkpointable submitit job. Every start (first, requeued, resubmitted)
    resumes from the last checkpoint in the run's OUTPUT_DIR."""

    def __init__(self, config: str, overrides: List[str], output_dir: str, fork_from: Optional[dict] = None):
        self.config, self.overrides, self.output_dir, self.fork_from = config, list(overrides), output_dir, fork_from

    def run_overrides(self) -> List[str]:
        return self.overrides + ["OUTPUT_DIR", self.output_dir]

    def __call__(self):
        from .engine import launch, load_run_config, main_worker
        from .engine.defaults import setup_logging

        values = set_dist_env_from_submitit()
        setup_logging(None, values["RANK"])
        cfg = load_run_config(self.config, self.run_overrides(), resume=True)
        if self.fork_from:
            from .fork import prepare_branch

            prepare_branch(cfg, self.fork_from, rank=values["RANK"])
        return launch(main_worker, device=cfg.MODEL.DEVICE, args=(cfg, True, False))

    def checkpoint(self, *args, **kwargs):
        logger.warning("Job signalled (timeout or preemption): requeueing %s; it resumes from its last checkpoint",
                       self.output_dir)
        return submitit.helpers.DelayedSubmission(TrainJob(self.config, self.overrides, self.output_dir,
                                                           self.fork_from))


def submit_sweep(sweep, cluster: str = "slurm", only: Optional[List[str]] = None) -> Dict[str, str]:
    """Submit the runs of `sweep` as one job array; returns {run name: job id} and records it in the
    sweep dir. Schedule-fork branches are submitted by their trunk, unless named in `only` (e.g.
    resubmitting failed runs), which submits just those runs."""
    from .config import load_config
    from .sweep import record_submission

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
                job = TrainJob(r.config, overrides, r.output_dir, fork_from=r.fork_from)
            elif branches:
                specs = [{"name": b.name, "config": b.config, "overrides": b.overrides, "output_dir": b.output_dir,
                          "fork_from": b.fork_from} for b in branches]
                job = TrunkJob(r.config, overrides, r.output_dir, specs, cluster, sweep.resources, folder, cuda,
                               sweep.name)
            else:
                job = TrainJob(r.config, overrides, r.output_dir)
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
    (rethink.fork) as soon as the branch's fork checkpoint exists."""

    def __init__(self, config, overrides, output_dir, branches: List[dict], cluster: str, resources: Resources,
                 folder: str, cuda: bool, job_name: str = "rethink"):
        super().__init__(config, overrides, output_dir)
        self.branches, self.cluster, self.resources = branches, cluster, resources
        self.folder, self.cuda, self.job_name = folder, cuda, job_name

    def submit_branch(self, branch: dict) -> str:
        executor = make_executor(self.folder, self.cluster, self.resources, self.cuda, self.job_name)
        conf = os.environ.get("SLURM_CONF")  # the cluster's config, not this job's state: keep it
        with submitit.helpers.clean_env():  # not this job's SLURM_* / RANK / MASTER_* variables
            if conf:
                os.environ["SLURM_CONF"] = conf
            job = executor.submit(TrainJob(branch["config"], branch["overrides"], branch["output_dir"],
                                           fork_from=branch["fork_from"]))
        return job.job_id

    def __call__(self):
        from .fork import BranchSubmitter

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
