"""What each rank sets up before it trains, the same for the detection trainer and for backbone
pre-training: its CPU threads, its device, and its model wrapped for DistributedDataParallel."""
import os

import torch
from torch.nn.parallel import DistributedDataParallel

from ..modeling.norm import to_torch_syncbn
from . import comm


def local_world_size() -> int:
    """Ranks on this machine: LOCAL_WORLD_SIZE (torchrun) if set, else every rank (local spawn)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", comm.get_world_size()))


def set_num_threads() -> int:
    """This rank's torch CPU threads: SLURM_CPUS_PER_TASK (what SLURM gave the task) if set, else the
    process's default shared out among the ranks on the machine. Returns the number set."""
    n = int(os.environ.get("SLURM_CPUS_PER_TASK", 0)) or max(1, torch.get_num_threads() // max(1, local_world_size()))
    torch.set_num_threads(n)
    return n


def rank_device(name: str) -> torch.device:
    """The device `name` ("cpu", "cuda", "cuda:1") as this rank uses it: bare "cuda" is the GPU that
    launch made current for the rank."""
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def create_ddp_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`model` itself on one rank; otherwise DistributedDataParallel around it (buffers not
    broadcast, as detectron2), with our SyncBatchNorm swapped for torch's on CUDA. Build the
    optimizer afterwards, on `checkpoint.unwrap(model)`."""
    if comm.get_world_size() == 1:
        return model
    if device.type == "cuda":
        model = to_torch_syncbn(model)  # NCCL SyncBN; ours all-reduces over gloo on CPU
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)
