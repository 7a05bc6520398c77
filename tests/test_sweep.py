"""Sweeps and launcher without SLURM: expansion and dry-run of the shipped sweeps, resources from
flags, a clear error without sbatch, local submission, and schedule forking equal to separate runs."""
import os
import subprocess
import sys

import pytest
import torch

from rethink.cluster.branches import prepare_branch
from rethink.cluster.sweep import SweepError, expand, load_sweep, plan_table
from rethink.engine import load_run_config, main_worker, read_metrics

from .conftest import CONFIGS, ROOT

pytestmark = pytest.mark.usefixtures("isolated_cache")

SWEEPS = ROOT / "launch" / "sweeps"
TINY = str(CONFIGS / "demo" / "scratch_gn_r18_tiny.yaml")


def test_paper_sweep_expands_to_the_full_grid_with_forks():
    sweep = load_sweep(str(SWEEPS / "paper.yaml"), root="/tmp/sweeps")
    names = [r.name for r in sweep.runs]
    assert len(names) == 40 and len(set(names)) == 40
    assert "scratch_gn_r50_6x_s0" in names and "pretrained_syncbn_r101_2x_s0" in names
    run = next(r for r in sweep.runs if r.name == "scratch_gn_r101_3x_s0")
    assert run.output_dir == "/tmp/sweeps/paper/scratch_gn_r101_3x_s0"
    assert run.config.endswith("configs/scratch_gn_r101.yaml") and run.max_iter == 270000
    assert run.fork_from == {"trunk": "scratch_gn_r101_6x_s0", "trunk_dir": "/tmp/sweeps/paper/scratch_gn_r101_6x_s0",
                             "iteration": 210000}
    trunk = next(r for r in sweep.runs if r.name == "scratch_gn_r101_6x_s0")
    assert trunk.fork_from is None and trunk.checkpoint_iters == [120000, 210000, 300000, 390000]
    table = plan_table(sweep)
    assert "40 runs in one job array (at most 16 at once)" in table
    assert "6240000 iterations computed vs 14400000 for separate runs (2.31x less compute)" in table


@pytest.mark.parametrize("name,count", [("less_data.yaml", 24), ("depth.yaml", 16), ("freeze.yaml", 6)])
def test_other_shipped_sweeps_expand(name, count):
    sweep = load_sweep(str(SWEEPS / name), root="/tmp/sweeps")
    assert len(sweep.runs) == count
    if name == "less_data.yaml":
        r = next(r for r in sweep.runs if r.name == "scratch_1of10_2x_s0")
        assert "('coco_2017_train_1of10_s0',)" in r.overrides
    if name == "freeze.yaml":
        assert sorted(r.axes["freeze_at"] for r in sweep.runs) == [0, 1, 2, 3, 4, 5]


def test_sweep_errors_name_the_problem(tmp_path):
    with pytest.raises(SweepError, match="unknown axis 'colour'"):
        expand({"config": TINY, "axes": {"colour": [1]}}, "s.yaml")
    with pytest.raises(SweepError, match=r"s.yaml: run baselrr1: .*unknown config key SOLVER.BASE_LRR"):
        expand({"name": "x", "config": TINY, "axes": {"SOLVER.BASE_LRR": [1]}}, "s.yaml")
    with pytest.raises(SweepError, match="needs the axis 'init'"):
        expand({"config": "configs/{init}_gn_r50.yaml", "axes": {"seed": [0]}}, "s.yaml")


def test_dry_run_cli_prints_table_and_submits_nothing(tmp_path):
    r = subprocess.run([sys.executable, "launch/submit.py", "--sweep", "launch/sweeps/freeze.yaml", "--dry-run",
                        "--root", str(tmp_path), "--gpus-per-node", "4", "--partition", "p1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "fz5_2x_s0" in r.stdout and "1x4" in r.stdout and "6 runs in one job array" in r.stdout
    assert not (tmp_path / "freeze").exists()
    # the resolved schedule of every run, in one line each
    assert "fz5_2x_s0  schedule: batch 16 (not scaled), LR 0.02, MAX_ITER 180000 = 2x of 90000" in r.stdout


def test_slurm_without_sbatch_is_a_clear_error(tmp_path):
    env = {**os.environ, "PATH": os.path.dirname(sys.executable)}
    r = subprocess.run([sys.executable, "launch/submit.py", "--config", TINY, "--root", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode != 0 and "`sbatch` is not on PATH" in r.stderr and "--cluster local" in r.stderr


# --- schedule forking -----------------------------------------------------------------------------
FORK = ["SOLVER.IMS_PER_BATCH", "2", "SOLVER.REFERENCE_IMS_PER_BATCH", "2", "SOLVER.SCHEDULE_UNIT", "9",
        "SOLVER.WARMUP_ITERS", "3", "SOLVER.CHECKPOINT_PERIOD", "100", "TEST.EVAL_PERIOD", "6", "SEED", "5"]




def test_branch_equals_separately_trained_run(tmp_path):
    spec = {"name": "fork", "root": str(tmp_path), "config": TINY, "overrides": FORK, "fork_schedules": True,
            "axes": {"schedule": ["2x", "3x"]}}
    sweep = expand(spec)
    trunk, branch = sorted(sweep.runs, key=lambda r: -r.max_iter)
    assert (trunk.max_iter, branch.max_iter) == (27, 18) and branch.fork_from["iteration"] == 12
    assert trunk.checkpoint_iters == [12]
    main_worker(load_run_config(trunk.config, trunk.overrides + ["SOLVER.CHECKPOINT_ITERS", "(12,)",
                                                                 "OUTPUT_DIR", trunk.output_dir]))
    assert os.path.isfile(os.path.join(trunk.output_dir, "model_0000012.pth"))
    cfg = load_run_config(branch.config, branch.overrides + ["OUTPUT_DIR", branch.output_dir], resume=True)
    prepare_branch(cfg, branch.fork_from)
    main_worker(cfg, resume=True)
    separate = str(tmp_path / "separate")
    main_worker(load_run_config(TINY, FORK + ["SOLVER.SCHEDULE", "2x", "OUTPUT_DIR", separate]))
    a = torch.load(os.path.join(branch.output_dir, "model_final.pth"), weights_only=True)["model"]
    b = torch.load(os.path.join(separate, "model_final.pth"), weights_only=True)["model"]
    assert max((a[k].float() - b[k].float()).abs().max().item() for k in a) <= 1e-6
    ma = read_metrics(os.path.join(branch.output_dir, "metrics.jsonl"))
    mb = read_metrics(os.path.join(separate, "metrics.jsonl"))
    assert [m["iteration"] for m in ma] == [m["iteration"] for m in mb] == [6, 12, 18]
    # APs and LR equal; logged losses are medians over the recent window, which a branch only has
    # from its fork point on (the weights above show the steps themselves are identical)
    for x, y in zip(ma, mb):
        for key in ("bbox/AP", "segm/AP", "bbox/AP50", "segm/AP75", "lr"):
            assert x[key] == pytest.approx(y[key], abs=1e-6), (x["iteration"], key)


@pytest.mark.slow
def test_local_cluster_runs_a_sweep_without_slurm(tmp_path):
    """--cluster local: the same jobs through submitit's local executor, waited for, then status."""
    import yaml

    spec = {"name": "loc", "root": str(tmp_path), "config": TINY, "axes": {"seed": [1, 2]},
            "overrides": ["SOLVER.IMS_PER_BATCH", "2", "SOLVER.REFERENCE_IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "6",
                          "SOLVER.STEPS", "(4, 5)", "TEST.EVAL_PERIOD", "6"],
            "resources": {"gpus_per_node": 1, "cpus_per_task": 1, "time": "00:30:00"}}
    (tmp_path / "loc.yaml").write_text(yaml.safe_dump(spec))
    r = subprocess.run([sys.executable, "launch/submit.py", "--sweep", str(tmp_path / "loc.yaml"), "--cluster", "local",
                        "--wait"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    for name in ("s1", "s2"):
        m = read_metrics(str(tmp_path / "loc" / name / "metrics.jsonl"))
        assert m[-1]["iteration"] == 6 and "segm/AP" in m[-1]
    out = subprocess.run([sys.executable, "launch/status.py", str(tmp_path / "loc")], cwd=ROOT, capture_output=True,
                         text=True, timeout=120).stdout
    assert out.count(" done ") == 2, out


def test_cluster_defaults_fit_a_64_core_node_and_a_24h_partition():
    from rethink.cluster.jobs import master_port
    from rethink.cluster.resources import Resources, parse_time

    res = Resources()
    assert res.cpus_per_task * res.gpus_per_node <= 64 and parse_time(res.time) <= 24 * 60
    ports = {master_port(str(job)) for job in range(5000)}
    assert min(ports) >= 20000 and max(ports) < 32768  # below the ephemeral range 32768-60999
    assert len(ports) > 3000
