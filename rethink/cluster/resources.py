"""What a run asks the cluster for (nodes, GPUs, CPUs, time, partition, ...) and the submitit executor
that asks for it, on SLURM or on this machine (`cluster="local"`)."""
import re
import shutil
from dataclasses import dataclass, field
from typing import Dict, Optional

import submitit
import torch

from .local import controller_setup

SLURM_RANKS_PER_NODE = 8  # gpus_per_node when not given: a common 8-GPU node


@dataclass
class Resources:
    """What a run asks the cluster for; every cluster-specific value comes from flags or the sweep
    file, never from code."""

    nodes: int = 1
    # ranks per node; GPUs are requested only for MODEL.DEVICE cuda. Not given: see ranks_per_node
    gpus_per_node: Optional[int] = None
    cpus_per_task: int = 8  # x gpus_per_node tasks: 64 CPUs, what a common 8-GPU node has
    time: str = "24:00:00"  # [D-]HH:MM:SS or minutes; longer runs go on through requeues (max_num_timeout)
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    mem: Optional[str] = None  # e.g. "400G" per node
    comment: Optional[str] = None
    array_parallelism: int = 16  # runs of a sweep running at once
    max_num_timeout: int = 20  # requeues after timeouts (preemptions do not count)
    max_retries: int = 3  # requeues after transient failures (CUDA OOM, lost NCCL/gloo peer: cluster.retry), per run
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

    def ranks_per_node(self, cluster: str = "slurm", cuda: bool = True) -> int:
        """Tasks (= ranks) per node: gpus_per_node when given; otherwise 8 on SLURM, and on this machine
        (`local`, `debug`) one rank per visible GPU with CUDA, one rank on the CPU."""
        if self.gpus_per_node is not None:
            if self.gpus_per_node < 1:
                raise ValueError(f"gpus_per_node = {self.gpus_per_node}: ranks per node must be >= 1")
            return self.gpus_per_node
        if cluster == "slurm":
            return SLURM_RANKS_PER_NODE
        return max(1, torch.cuda.device_count()) if cuda else 1


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
    ranks = res.ranks_per_node(cluster, cuda)
    params = dict(name=job_name, nodes=res.nodes, tasks_per_node=ranks, timeout_min=parse_time(res.time))
    if cuda:
        params["gpus_per_node"] = ranks
    if cluster == "slurm":
        # --kill-on-bad-exit: one task failing ends the others at once, instead of leaving them in a
        # collective until NCCL's timeout
        params.update(cpus_per_task=res.cpus_per_task, slurm_signal_delay_s=res.signal_delay_s,
                      slurm_array_parallelism=res.array_parallelism, slurm_srun_args=["--kill-on-bad-exit=1"])
        for key in ("partition", "account", "qos", "constraint", "mem", "comment"):
            if getattr(res, key):
                params[f"slurm_{key}"] = getattr(res, key)
        if res.sbatch:
            params["slurm_additional_parameters"] = dict(res.sbatch)
    elif cluster == "local":
        if res.nodes != 1:
            raise ValueError("--cluster local runs on one node; set nodes to 1")
        # local jobs run side by side: give each task its share of cores, as SLURM would; the job's
        # controller writes to its own log, not to this process's stdout (which a pipe may read)
        params["local_setup"] = [f"export OMP_NUM_THREADS={res.cpus_per_task}"] + controller_setup(folder)
    executor.update_parameters(**params)
    return executor
