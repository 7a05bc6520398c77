"""Process-group helpers (rank, world size, broadcast, reductions, gathers) that also work without
torch.distributed. Python objects are gathered over a gloo group, made once at start-up when the
default group is NCCL (:func:`init_cpu_group`), so pickles never stage through GPU memory."""
from typing import Any, List, Optional

import torch
import torch.distributed as dist

_CPU_GROUP = (None, None)  # (default group it was made for, gloo group)


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def synchronize() -> None:
    if is_dist() and get_world_size() > 1:
        dist.barrier()


def broadcast(obj, src: int = 0):
    """`obj` from rank `src` on every rank."""
    if get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_max(t: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum over ranks of an integer tensor (on the device the backend reduces on)."""
    t = t.clone()
    if get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def reduce_mean_tensor(t: torch.Tensor) -> torch.Tensor:
    """Mean over ranks of a tensor of the same shape on every rank."""
    t = t.detach().clone()
    if get_world_size() > 1:
        dist.all_reduce(t)
        t /= get_world_size()
    return t


def reduce_mean(values: dict) -> dict:
    """Mean over ranks of a dict of scalar tensors (same keys on every rank), as python floats."""
    keys = sorted(values)
    stacked = torch.stack([values[k].detach().float() for k in keys])
    if get_world_size() > 1:
        dist.all_reduce(stacked)
        stacked /= get_world_size()
    return dict(zip(keys, stacked.tolist()))


def init_cpu_group():
    """The group for gathering Python objects: the default one when it is gloo, otherwise a gloo group
    made once (a collective: call it on every rank, at start-up)."""
    global _CPU_GROUP
    if not is_dist() or dist.get_backend() == "gloo":
        return None
    world = dist.group.WORLD
    if _CPU_GROUP[0] is not world:
        _CPU_GROUP = (world, dist.new_group(backend="gloo"))
    return _CPU_GROUP[1]


def gather_to_main(obj: Any) -> Optional[List[Any]]:
    """A picklable object from every rank to rank 0: the list (rank order) on rank 0, None elsewhere."""
    if get_world_size() == 1:
        return [obj]
    out = [None] * get_world_size() if is_main_process() else None
    dist.gather_object(obj, out, dst=0, group=init_cpu_group())
    return out
