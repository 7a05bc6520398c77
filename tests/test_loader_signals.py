"""Data loader workers and stop signals (utils.signals.loader_worker_signals): a SIGTERM from anyone but
the worker's rank (SLURM signals every process of a preempted job) leaves the worker running, so the
rank can finish its step and save; the rank itself can still end its workers, so its exit never hangs."""
import os
import subprocess
import sys
import time

import pytest
from torch.utils.data import DataLoader

from rethink.utils.signals import loader_context, loader_worker_signals

from .conftest import ROOT


def _init(_):
    loader_worker_signals()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
def test_worker_ignores_a_stranger_s_sigterm_and_obeys_its_rank():
    loader = DataLoader(list(range(100)), batch_size=2, num_workers=1, worker_init_fn=_init, persistent_workers=True,
                        multiprocessing_context=loader_context())
    it = iter(loader)
    assert next(it).tolist() == [0, 1]
    worker = it._workers[0]
    time.sleep(0.5)  # the worker's signal thread is up once it served a batch; give it a moment
    subprocess.run(["kill", "-TERM", str(worker.pid)], check=True)  # from another process, as SLURM
    subprocess.run(["kill", "-USR2", str(worker.pid)], check=True)
    time.sleep(1.0)
    assert _alive(worker.pid) and next(it).tolist() == [2, 3]
    worker.terminate()  # SIGTERM from the rank itself: what multiprocessing does at exit
    worker.join(timeout=10)
    assert not _alive(worker.pid) and worker.exitcode == 0


def test_a_rank_exits_with_its_workers_alive():
    code = ("import torch\nfrom torch.utils.data import DataLoader\nfrom tests.test_loader_signals import _init\n"
            "from rethink.utils.signals import loader_context\n"
            "it = iter(DataLoader(list(range(100)), batch_size=2, num_workers=2, worker_init_fn=_init, "
            "persistent_workers=True, multiprocessing_context=loader_context()))\nnext(it)\n"
            "KEEP = it  # alive at exit: multiprocessing ends the workers\n")
    start = time.time()
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    assert time.time() - start < 30
