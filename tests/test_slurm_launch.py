"""The launcher against the real local SLURM cluster (tests/slurm/cluster.sh): a sweep as one job
array, preemption with requeue and resume, a 2-node gloo job, status after a failing run, and a
forked sweep of three schedules."""
import os
import re
import subprocess
import sys
import time

import pytest
import torch
import yaml

from rethink.cluster.jobs import submit_sweep
from rethink.cluster.status import format_states, wait
from rethink.cluster.sweep import expand
from rethink.engine import read_metrics

from .conftest import CONFIGS, ROOT
from .slurm import slurm_cluster  # noqa: F401

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.usefixtures("isolated_cache")]
TINY = str(CONFIGS / "demo" / "scratch_gn_r18_tiny.yaml")
SMALL = ["SOLVER.IMS_PER_BATCH", "2", "SOLVER.REFERENCE_IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "12",
         "SOLVER.STEPS", "(8, 10)", "SOLVER.WARMUP_ITERS", "4", "SOLVER.CHECKPOINT_PERIOD", "6",
         "TEST.EVAL_PERIOD", "6"]


def resources(cluster, **kw):
    return {"nodes": 1, "gpus_per_node": 1, "cpus_per_task": 1, "time": "00:20:00", "partition": cluster.partition,
            "array_parallelism": 2, "signal_delay_s": 30, **kw}




def weights(path):
    return torch.load(path, weights_only=True)["model"]


def max_diff(a, b):
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def test_sweep_of_four_runs_as_one_array(slurm_cluster, tmp_path):
    spec = {"name": "four", "root": str(tmp_path), "config": TINY, "overrides": SMALL,
            "axes": {"seed": [1, 2, 3, 4]}, "resources": resources(slurm_cluster)}
    (tmp_path / "four.yaml").write_text(yaml.safe_dump(spec))
    r = subprocess.run([sys.executable, "launch/submit.py", "--sweep", str(tmp_path / "four.yaml"), "--wait"],
                       cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ids = yaml.safe_load((tmp_path / "four" / "submissions.jsonl").read_text())["jobs"]
    assert sorted(ids) == ["s1", "s2", "s3", "s4"]
    assert len({j.split("_")[0] for j in ids.values()}) == 1  # one job array
    for name in ids:
        d = tmp_path / "four" / name
        for name in ("config.yaml", "model_0000006.pth", "model_final.pth"):
            assert (d / name).is_file(), name
        m = read_metrics(str(d / "metrics.jsonl"))
        assert [x["iteration"] for x in m if "bbox/AP" in x] == [6, 12] and "segm/AP" in m[-1]
    status = subprocess.run([sys.executable, "launch/status.py", str(tmp_path / "four")], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert status.returncode == 0 and status.stdout.count(" done ") == 4, status.stdout


def test_preempted_run_requeues_resumes_and_matches_uninterrupted(slurm_cluster, tmp_path):
    long = SMALL + ["SOLVER.MAX_ITER", "30", "SOLVER.STEPS", "(20, 25)", "SOLVER.CHECKPOINT_PERIOD", "10",
                    "TEST.EVAL_PERIOD", "10", "SEED", "7"]
    spec = {"name": "pre", "root": str(tmp_path), "config": TINY, "overrides": long,
            "axes": {"SOLVER.GAMMA": [0.1, "0.10"]}, "resources": resources(slurm_cluster)}
    sweep = expand(spec)
    ids = submit_sweep(sweep, "slurm")
    victim, ref = sweep.runs
    job = sweep.jobs[victim.name]
    deadline = time.time() + 600
    metrics = os.path.join(victim.output_dir, "metrics.jsonl")
    while not (os.path.isfile(os.path.join(victim.output_dir, "model_0000010.pth")) and os.path.isfile(metrics)
               and read_metrics(metrics)[-1]["iteration"] >= 10):
        assert time.time() < deadline, "no checkpoint at iteration 10"
        time.sleep(1)
    seen = read_metrics(metrics)[-1]["iteration"]
    # what a time limit looks like to submitit: USR2. The ranks agree to stop after the step in progress,
    # rank 0 saves there, then submitit's handler calls TrainJob.checkpoint() and requeues
    job._interrupt()
    rows = wait(sweep, poll_s=3, timeout_s=900)
    assert [r["state"] for r in rows] == ["done", "done"], format_states(rows)
    log = open(os.path.join(victim.output_dir, "log.txt")).read()
    assert log.count("Resumed from") >= 1 and rows[0]["starts"] >= 2
    assert "Received SIGUSR2: stopping after the step or evaluation batch in progress" in log
    resumed = [int(k) for k in re.findall(r"Resumed from \S+ \(iteration (\d+)\)", log)]
    assert resumed and resumed[0] >= seen  # the signal's own checkpoint, not an older periodic one
    assert max_diff(weights(os.path.join(victim.output_dir, "model_final.pth")),
                    weights(os.path.join(ref.output_dir, "model_final.pth"))) <= 1e-6
    ours = read_metrics(os.path.join(victim.output_dir, "metrics.jsonl"))
    theirs = read_metrics(os.path.join(ref.output_dir, "metrics.jsonl"))
    evals = lambda m: [(x["iteration"], round(x["bbox/AP"], 6)) for x in m if "bbox/AP" in x]  # noqa: E731
    assert evals(ours) == evals(theirs) and [x[0] for x in evals(ours)] == [10, 20, 30]
    assert len({x["iteration"] for x in ours}) == len(ours)  # each iteration once after dedupe
    assert ids[victim.name] != ids[ref.name]


def test_two_node_gloo_job_trains_and_evaluates(slurm_cluster, tmp_path):
    spec = {"name": "twonode", "root": str(tmp_path), "config": TINY, "overrides": SMALL + ["SEED", "2"],
            "resources": resources(slurm_cluster, nodes=2, gpus_per_node=1)}
    sweep = expand(spec)
    submit_sweep(sweep, "slurm")
    rows = wait(sweep, poll_s=3, timeout_s=900)
    assert rows[0]["state"] == "done", format_states(rows)
    m = read_metrics(os.path.join(sweep.runs[0].output_dir, "metrics.jsonl"))
    assert m[-1]["world_size"] == 2 and "bbox/AP" in m[-1]
    assert "world size 2" in open(os.path.join(sweep.runs[0].output_dir, "log.txt")).read()


def test_status_shows_done_and_failed(slurm_cluster, tmp_path):
    spec = {"name": "mixed", "root": str(tmp_path), "config": TINY, "overrides": SMALL,
            "axes": {"MODEL.WEIGHTS": ["", str(tmp_path / "missing_weights.pth")]},
            "resources": resources(slurm_cluster)}
    sweep = expand(spec)
    submit_sweep(sweep, "slurm")
    rows = wait(sweep, poll_s=3, timeout_s=900)
    by = {r["run"]: r for r in rows}
    good, bad = sweep.runs[0].name, sweep.runs[1].name
    assert by[good]["state"] == "done" and by[bad]["state"] == "failed", format_states(rows)
    assert "missing_weights.pth" in by[bad]["error"]
    out = subprocess.run([sys.executable, "launch/status.py", sweep.dir], cwd=ROOT, capture_output=True, text=True,
                         timeout=120).stdout
    assert " done " in out and " failed " in out and "missing_weights.pth" in out


def test_forked_sweep_of_three_schedules(slurm_cluster, tmp_path):
    spec = {"name": "forked", "root": str(tmp_path), "config": TINY, "fork_schedules": True,
            "overrides": ["SOLVER.IMS_PER_BATCH", "2", "SOLVER.REFERENCE_IMS_PER_BATCH", "2",
                          "SOLVER.SCHEDULE_UNIT", "6", "SOLVER.WARMUP_ITERS", "2", "SOLVER.CHECKPOINT_PERIOD", "100",
                          "TEST.EVAL_PERIOD", "4", "SEED", "3"],
            "axes": {"schedule": ["2x", "3x", "4x"]}, "resources": resources(slurm_cluster)}
    sweep = expand(spec)
    ids = submit_sweep(sweep, "slurm")
    assert list(ids) == ["4x"]  # only the trunk is submitted; it submits the branches
    rows = wait(sweep, poll_s=3, timeout_s=900)
    table = format_states(rows)
    assert [r["state"] for r in rows] == ["done"] * 3, table
    by = {r["run"]: r for r in rows}
    assert by["4x"]["fork"] == "trunk" and by["2x"]["fork"] == "4x@8" and by["3x"]["fork"] == "4x@14"
    assert by["2x"]["job_id"] and by["2x"]["job_id"] != by["4x"]["job_id"]
    m2 = read_metrics(os.path.join(sweep.runs[0].output_dir, "metrics.jsonl"))
    assert [x["iteration"] for x in m2 if "bbox/AP" in x] == [4, 8, 12]  # prefix carried over from the trunk
    status = subprocess.run([sys.executable, "launch/status.py", sweep.dir], cwd=ROOT, capture_output=True,
                            text=True, timeout=120).stdout
    assert "32 iterations computed vs 54 for separate runs" in status and "4x@8" in status and "trunk" in status
