"""Start the ranks of a run: N local processes (one per GPU, or N CPU processes with gloo), or join a
process group already described by the environment (`env://`: torchrun, SLURM via submitit).

    launch(main, num_processes=8, args=(cfg_args,))

A training stopped by a signal (utils.signals) raises TrainingStopped out of launch() in every mode:
the spawning process forwards SIGTERM / SIGUSR2 to its ranks, each saves and exits with 128 + the
signal, and the spawner raises it again. Any other failure of one rank ends the others (gloo notices
the lost peer at once; torch's spawn terminates the rest; under SLURM, srun --kill-on-bad-exit).
"""
import logging
import os
import signal
import socket
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ..utils.signals import STOP_SIGNALS, TrainingStopped
from . import comm

logger = logging.getLogger(__name__)
TIMEOUT = timedelta(minutes=30)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def backend_for(device: str) -> str:
    return "nccl" if device.startswith("cuda") else "gloo"


def device_index(local_rank: int, visible: int) -> int:
    """The GPU of a rank among the `visible` ones: LOCAL_RANK modulo their number, so tasks that see
    all of the node's GPUs take their own, and tasks bound to a subset (--gpus-per-task,
    --gpu-bind=closest: one or two visible) take theirs."""
    if visible < 1:
        raise RuntimeError(f"rank with LOCAL_RANK {local_rank}: MODEL.DEVICE is cuda but no GPU is visible "
                           f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})")
    return local_rank % visible


def init_process_group(backend: str, rank: int, world_size: int, local_rank: int, init_method: str = "env://"):
    if backend == "nccl":
        index = device_index(local_rank, torch.cuda.device_count())
        torch.cuda.set_device(index)
        logger.info("rank %d (local %d) on cuda:%d of %d visible (CUDA_VISIBLE_DEVICES=%s)", rank, local_rank, index,
                    torch.cuda.device_count(), os.environ.get("CUDA_VISIBLE_DEVICES", "all"))
    os.environ["LOCAL_RANK"] = str(local_rank)
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size, timeout=TIMEOUT)
    comm.init_cpu_group()  # the gloo group that gathers evaluation results, made now rather than an hour in
    dist.barrier()


def _worker(local_rank, main, num_processes, machine_rank, num_machines, dist_url, backend, args):
    rank = machine_rank * num_processes + local_rank
    init_process_group(backend, rank, num_processes * num_machines, local_rank, dist_url)
    try:
        main(*args)
    except TrainingStopped as e:
        raise SystemExit(e.exit_code)  # the spawner sees the code and raises TrainingStopped itself
    finally:
        dist.destroy_process_group()


def _spawn(num_processes, args):
    """Start the local ranks, forward stop signals to them, wait; TrainingStopped when they stopped on one."""
    ctx = mp.start_processes(_worker, nprocs=num_processes, start_method="spawn", args=args, join=False)
    received = []

    def forward(signum, frame):
        received.append(signum)
        for p in ctx.processes:
            if p.is_alive():
                os.kill(p.pid, signum)

    previous = {s: signal.signal(s, forward) for s in STOP_SIGNALS}
    try:
        while not ctx.join():
            pass
    except mp.ProcessExitedException as e:
        codes = {128 + s: s for s in STOP_SIGNALS}
        if e.exit_code in codes:
            raise TrainingStopped(codes[e.exit_code]) from None
        if received and e.signal_name:
            raise TrainingStopped(received[0]) from e
        raise
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def launch(main, num_processes: int = 1, num_machines: int = 1, machine_rank: int = 0, dist_url: str = "auto",
           device: str = "cuda", args=()):
    """Run `main(*args)` in every rank. With the environment of torchrun / SLURM (RANK, WORLD_SIZE,
    MASTER_ADDR, MASTER_PORT set) this process is one rank and joins via env://; otherwise it spawns
    `num_processes` local ranks (1 = run in this process, no process group)."""
    backend = backend_for(device)
    world = int(os.environ["WORLD_SIZE"]) if "RANK" in os.environ and "WORLD_SIZE" in os.environ \
        else num_processes * num_machines
    if world > 1 and device.startswith("cuda:"):
        raise ValueError(f"MODEL.DEVICE {device!r} names one GPU but the run has {world} ranks: use MODEL.DEVICE cuda "
                         f"(each rank takes LOCAL_RANK % visible GPUs)")
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        init_process_group(backend, rank, world, local_rank, "env://")
        try:
            return main(*args)
        finally:
            dist.destroy_process_group()
    world = num_processes * num_machines
    if world == 1:
        return main(*args)
    if dist_url == "auto":
        if num_machines != 1:
            raise ValueError("dist_url='auto' works on one machine only; give tcp://HOST:PORT of machine 0")
        dist_url = f"tcp://127.0.0.1:{free_port()}"
    logger.info("Spawning %d ranks (%s, %s)", num_processes, backend, dist_url)
    _spawn(num_processes, (main, num_processes, machine_rank, num_machines, dist_url, backend, args))
