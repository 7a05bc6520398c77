"""End-to-end checks of the local SLURM test cluster (tests/slurm/cluster.sh) driven through submitit.

Run:  bash tests/slurm/cluster.sh up && python -m pytest -q tests/test_slurm_cluster.py -m slurm
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

submitit = pytest.importorskip("submitit")
cloudpickle = pytest.importorskip("cloudpickle")

from tests.slurm import slurm_cluster  # noqa: E402,F401  (session fixture)

pytestmark = pytest.mark.slurm

# Jobs unpickle the submitted callables in a fresh interpreter whose cwd/sys.path may not reach this module:
# ship this module's functions and classes by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

USABLE = {"idle", "mixed", "allocated", "completing"}


# ---------------------------------------------------------------------------------------------------------------
# callables that run inside SLURM jobs
# ---------------------------------------------------------------------------------------------------------------
def whoami() -> dict:
    return {
        "job_id": os.environ["SLURM_JOB_ID"],
        "hostname": socket.gethostname(),
        "node": os.environ.get("SLURMD_NODENAME"),
    }


def square_slowly(x: int) -> tuple:
    start = time.time()
    time.sleep(1.5)
    return x * x, os.environ.get("SLURM_ARRAY_TASK_ID"), start, time.time()


def rank_info() -> dict:
    env = submitit.JobEnvironment()
    return {
        "rank": env.global_rank,
        "world_size": env.num_tasks,
        "local_rank": env.local_rank,
        "hostname": env.hostname,
        "node": os.environ.get("SLURMD_NODENAME"),
    }


def sleep_forever() -> None:
    time.sleep(600)


class Restartable(submitit.helpers.Checkpointable):
    """Logs every start to `marker`; finishes once it has started `starts_needed` times (or after a checkpoint)."""

    def __init__(self, marker: str, starts_needed: int = 2):
        self.marker = marker
        self.starts_needed = starts_needed
        self.checkpointed = False

    def __call__(self) -> dict:
        with open(self.marker, "a") as f:
            f.write(f"{time.time():.3f} {os.environ['SLURM_JOB_ID']} {os.environ.get('SLURM_RESTART_COUNT', '0')} "
                    f"{int(self.checkpointed)}\n")
        starts = len(Path(self.marker).read_text().splitlines())
        if starts >= self.starts_needed or self.checkpointed:
            return {"starts": starts, "checkpointed": self.checkpointed,
                    "restart_count": int(os.environ.get("SLURM_RESTART_COUNT", "0"))}
        time.sleep(300)  # wait to be requeued / preempted
        raise RuntimeError("was never requeued")

    def checkpoint(self, *args, **kwargs):
        self.checkpointed = True
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------
def run(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30).stdout


def make_executor(folder: Path, cluster_info, **params):
    ex = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm", slurm_max_num_timeout=3)
    ex.update_parameters(timeout_min=15, slurm_partition=cluster_info.partition, cpus_per_task=1, name="rethink-test")
    if params:
        ex.update_parameters(**params)
    return ex


def wait_done(jobs, timeout: float, cluster_info=None) -> None:
    jobs = list(jobs)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(job.done() for job in jobs):
            return
        time.sleep(0.5)
    details = []
    for job in jobs:
        details.append(f"job {job.job_id}: state={job.watcher.get_state(job.job_id, mode='force')}")
        details.append(f"stderr tail:\n{(job.stderr() or '')[-1500:]}")
        subprocess.run(["scancel", str(job.job_id).split("_")[0]], capture_output=True)
    logs = cluster_info.log_tail(10) if cluster_info is not None else ""
    pytest.fail(f"jobs not done after {timeout:.0f} s\n" + "\n".join(details) + "\n" + logs, pytrace=False)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}", pytrace=False)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


# ---------------------------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.timeout(60, func_only=True)
def test_sinfo_shows_two_idle_nodes(slurm_cluster):
    assert slurm_cluster.slurm_conf.is_file()
    assert os.environ["SLURM_CONF"] == str(slurm_cluster.slurm_conf)
    assert slurm_cluster.nodes == ("n1", "n2")

    def states():
        out = run("sinfo", "-h", "-N", "-p", slurm_cluster.partition, "-o", "%N %T")
        return dict(line.split() for line in out.splitlines())

    # idle on a fresh cluster; other sessions sharing the cluster may have jobs on it, so give them a moment
    try:
        st = wait_for(lambda: (s := states()) and set(s.values()) == {"idle"} and s, 20, "2 idle nodes")
    except pytest.fail.Exception:
        st = states()
        assert sorted(st) == ["n1", "n2"] and set(st.values()) <= USABLE, st
    assert sorted(st) == ["n1", "n2"], st


@pytest.mark.timeout(90, func_only=True)
def test_simple_job_returns_result(slurm_cluster, tmp_path):
    ex = make_executor(tmp_path, slurm_cluster)
    t0 = time.monotonic()
    job = ex.submit(whoami)
    wait_done([job], 60, slurm_cluster)
    out = job.result()
    print(f"simple job: {time.monotonic() - t0:.1f} s submit->result")
    assert out["job_id"] == str(job.job_id)
    assert out["hostname"] == socket.gethostname()  # both slurmd run on this host
    assert out["node"] in slurm_cluster.nodes
    # accounting works (submitit relies on sacct for jobs that die without a result)
    state = wait_for(lambda: "COMPLETED" in run("sacct", "-n", "-X", "-P", "-o", "State", "-j", str(job.job_id)),
                     30, "sacct to report COMPLETED")
    assert state


@pytest.mark.timeout(120, func_only=True)
def test_job_array_with_parallelism_2(slurm_cluster, tmp_path):
    ex = make_executor(tmp_path, slurm_cluster, slurm_array_parallelism=2)
    jobs = ex.map_array(square_slowly, [0, 1, 2, 3])
    assert len(jobs) == 4 and all("_" in str(j.job_id) for j in jobs)
    wait_done(jobs, 90, slurm_cluster)
    results = [j.result() for j in jobs]
    assert [r[0] for r in results] == [0, 1, 4, 9]
    assert sorted(r[1] for r in results) == ["0", "1", "2", "3"]
    # never more than 2 tasks at once (the %2 throttle)
    events = sorted([(r[2], 1) for r in results] + [(r[3], -1) for r in results])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    print(f"array: peak concurrency {peak}")
    assert 1 <= peak <= 2


@pytest.mark.timeout(150, func_only=True)
def test_requeued_job_restarts_and_finishes(slurm_cluster, tmp_path, record_property):
    marker = tmp_path / "starts.txt"
    ex = make_executor(tmp_path, slurm_cluster)
    job = ex.submit(Restartable(str(marker), starts_needed=2))
    wait_for(lambda: len(lines(marker)) >= 1, 60, "the first start")
    t0 = time.monotonic()
    run("scontrol", "requeue", str(job.job_id))
    wait_for(lambda: len(lines(marker)) >= 2, 60, "the restart after `scontrol requeue`")
    latency = time.monotonic() - t0
    record_property("requeue_latency_s", round(latency, 2))
    print(f"requeue latency: {latency:.1f} s (scontrol requeue -> second start)")
    wait_done([job], 60, slurm_cluster)
    out = job.result()
    assert out["starts"] == 2
    assert out["restart_count"] == 1
    # `scontrol requeue` kills the job (no USR2), so submitit's checkpoint() is not involved
    assert out["checkpointed"] is False
    assert latency < 30, f"requeue took {latency:.1f} s (cred_expire / scheduler settings?)"
    starts = [line.split() for line in lines(marker)]
    assert {s[1] for s in starts} == {str(job.job_id)}


@pytest.mark.timeout(150, func_only=True)
def test_preempt_signal_checkpoints_and_requeues(slurm_cluster, tmp_path):
    """submitit's own path: USR2 -> checkpoint() -> `scontrol requeue` -> restart from the checkpoint."""
    marker = tmp_path / "starts.txt"
    ex = make_executor(tmp_path, slurm_cluster)
    job = ex.submit(Restartable(str(marker), starts_needed=99))
    wait_for(lambda: len(lines(marker)) >= 1, 60, "the first start")
    time.sleep(1)  # let submitit install its signal handlers
    t0 = time.monotonic()
    job._interrupt()  # scancel --signal TERM, then --signal USR2 (what preemption looks like to submitit)
    wait_for(lambda: len(lines(marker)) >= 2, 60, "the restart after USR2")
    print(f"USR2 -> restart: {time.monotonic() - t0:.1f} s")
    wait_done([job], 60, slurm_cluster)
    out = job.result()
    assert out == {"starts": 2, "checkpointed": True, "restart_count": 1}


@pytest.mark.timeout(120, func_only=True)
def test_two_node_job_ranks(slurm_cluster, tmp_path):
    ex = make_executor(tmp_path, slurm_cluster, nodes=2, tasks_per_node=1)
    job = ex.submit(rank_info)
    wait_done([job], 90, slurm_cluster)
    results = job.results()
    assert len(results) == 2, results
    assert sorted(r["rank"] for r in results) == [0, 1]
    assert {r["world_size"] for r in results} == {2}
    assert {r["local_rank"] for r in results} == {0}
    assert sorted(r["node"] for r in results) == ["n1", "n2"]  # one task per slurmd
    assert {r["hostname"] for r in results} == {socket.gethostname()}  # ...but both on this host


@pytest.mark.timeout(90, func_only=True)
def test_cancelled_job_is_seen_as_done_via_sacct(slurm_cluster, tmp_path):
    """A job killed before writing its result must still finish from submitit's side (needs slurmdbd)."""
    ex = make_executor(tmp_path, slurm_cluster)
    job = ex.submit(sleep_forever)
    wait_for(lambda: job.watcher.get_state(job.job_id, mode="force") == "RUNNING", 60, "RUNNING")
    job.cancel(check=True)
    wait_for(lambda: job.done(force_check=True), 30, "submitit to see the cancelled job as done")
    assert job.state.startswith("CANCELLED"), job.state
    job._results_timeout_s = 1  # submitit otherwise waits 15 s for a result file that will never come
    with pytest.raises(submitit.core.utils.UncompletedJobError, match="has not produced any output"):
        job.result()
