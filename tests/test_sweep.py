"""Sweeps and launcher without SLURM: expansion and dry-run of the shipped sweeps, resources from
flags, a clear error without sbatch, errors in sweep files and refused run dirs (stale: another
config's run), local submission with status truth (a killed task is failed, resubmitted, done without
a test set), and schedule forking equal to separate runs."""
import importlib.util
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from rethink.cluster.branches import prepare_branch
from rethink.cluster.local import TASK_MODULE, job_alive
from rethink.cluster.preflight import check_submission
from rethink.cluster.resources import Resources
from rethink.cluster.status import format_states, run_states
from rethink.cluster.sweep import SweepError, expand, load_sweep, plan_table
from rethink.engine import load_run_config, main_worker, read_metrics
from rethink.utils.fingerprint import config_fingerprint
from rethink.utils.rundir import RunDir

from .conftest import CONFIGS, ROOT

pytestmark = pytest.mark.usefixtures("isolated_cache")

SWEEPS = ROOT / "launch" / "sweeps"
TINY = str(CONFIGS / "demo" / "scratch_gn_r18_tiny.yaml")
SHORT = ["SOLVER.IMS_PER_BATCH", "2", "SOLVER.REFERENCE_IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "6",
         "SOLVER.STEPS", "(4, 5)", "SOLVER.WARMUP_ITERS", "2"]


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    """A datasets root where the launcher finds COCO (its paths exist; the launcher reads none of them)."""
    root = tmp_path_factory.mktemp("datasets")
    for split in ("train2017", "val2017"):
        (root / "coco" / split).mkdir(parents=True)
        (root / "coco" / "annotations").mkdir(exist_ok=True)
        (root / "coco" / "annotations" / f"instances_{split}.json").write_text("{}")
    return str(root)


@pytest.fixture(scope="module")
def weights_root(tmp_path_factory):
    """A $RETHINK_WEIGHTS where the launcher finds every ImageNet file the shipped configs name (empty files:
    --dry-run checks that they are there, it reads none)."""
    root = tmp_path_factory.mktemp("weights")
    names = set()
    for path in list((ROOT / "configs").rglob("*.yaml")) + list(SWEEPS.glob("*.yaml")):
        names |= set(re.findall(r"detectron2://([\w./-]+\.(?:pkl|pth))", path.read_text()))
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")
    return str(root)


def cli(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def launch_main(capsys, tool, *args):
    """launch/<tool>.py's main in this process (a subprocess spends seconds importing torch): rc, stdout, stderr."""
    spec = importlib.util.spec_from_file_location(f"launch_{tool}", ROOT / "launch" / f"{tool}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    capsys.readouterr()
    rc = module.main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


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


@pytest.mark.parametrize("name,count", [("less_data.yaml", 64), ("depth.yaml", 16), ("freeze.yaml", 6)])
def test_other_shipped_sweeps_expand(name, count):
    sweep = load_sweep(str(SWEEPS / name), root="/tmp/sweeps")
    assert len(sweep.runs) == count
    if name == "less_data.yaml":
        r = next(r for r in sweep.runs if r.name == "scratch_3.5k_retuned_maxiter20000")
        assert "('coco_2017_train_3.5k_s0',)" in r.overrides
        assert r.base_lr == 0.04 and r.steps == (13333, 17778) and r.max_iter == 20000
        assert r.fork_from["trunk"] == "scratch_3.5k_retuned_maxiter60000" and r.fork_from["iteration"] == 13333
        plain = next(r for r in sweep.runs if r.name == "pretrained_10k_plain_maxiter60000")
        assert plain.base_lr == 0.02 and "SOLVER.GAMMA" not in plain.overrides
        cfg = load_run_config(r.config, r.overrides + ["OUTPUT_DIR", "/tmp/x"])
        assert cfg.SOLVER.GAMMA == 0.02 and tuple(cfg.INPUT.MIN_SIZE_TRAIN) == tuple(range(512, 801, 32))
        assert {x.name.split("_")[1] for x in sweep.runs} == {"35k", "10k", "3.5k", "1k"}
    if name == "freeze.yaml":
        assert sorted(r.axes["freeze_at"] for r in sweep.runs) == [0, 1, 2, 3, 4, 5]


def test_sweep_errors_name_the_problem(tmp_path):
    with pytest.raises(SweepError, match="unknown axis 'colour'"):
        expand({"config": TINY, "axes": {"colour": [1]}}, "s.yaml")
    with pytest.raises(SweepError, match=r"s.yaml: run baselrr1 \(axes.SOLVER.BASE_LRR: 1\): .*unknown config key "
                                         r"SOLVER.BASE_LRR \(did you mean SOLVER.BASE_LR\?\)"):
        expand({"name": "x", "config": TINY, "axes": {"SOLVER.BASE_LRR": [1]}}, "s.yaml")
    with pytest.raises(SweepError, match="needs the axis 'init'"):
        expand({"config": "configs/{init}_gn_r50.yaml", "axes": {"seed": [0]}}, "s.yaml")


AXES = {"schedule": ["2x", "3x"], "seed": [0]}


@pytest.mark.parametrize("entry,message", [
    ({"exclude": [{"schedul": "2x"}]},
     "s.yaml: exclude[0] {'schedul': '2x'}: unknown axis 'schedul' (did you mean 'schedule'?); "
     "known: ['schedule', 'seed']"),
    ({"exclude": [{"seed": 0}, {"schedule": "2X"}]},
     "s.yaml: exclude[1] {'schedule': '2X'}: '2X' is not a value of axis 'schedule' (['2x', '3x']): "
     "it would exclude nothing"),
    ({"exclude": {"schedule": "2x"}}, "s.yaml: exclude: a list of {axis: value} mappings is required"),
    ({"exclude": [{"schedule": "2x"}, {"schedule": "3x"}]}, "s.yaml: exclude [{'schedule': '2x'}, "
                                                            "{'schedule': '3x'}] leaves no run"),
    ({"axes": {**AXES, "sed": [1]}}, "s.yaml: axes.sed: unknown axis 'sed' (did you mean 'seed'?); known: ["),
    ({"axes": {**AXES, "seed": []}}, "s.yaml: axes.seed: []: every axis needs a list of values"),
    ({"axes": {**AXES, "subset": ["1of0"]}},
     "s.yaml: axes.subset: '1of0' is not a subset that can be drawn: Selection: fraction 1/0 must be in (0, 1]"),
    ({"axes": {**AXES, "subset": ["half"]}}, "s.yaml: axes.subset: 'half' is not a subset that can be drawn: use full"),
])
def test_sweep_file_errors_name_file_and_entry(entry, message):
    with pytest.raises(SweepError) as e:
        expand({"name": "x", "config": TINY, "axes": AXES, **entry}, "s.yaml")
    assert message in str(e.value)


def test_absent_datasets_are_refused_naming_file_entry_and_runs(tmp_path, monkeypatch, coco_root):
    spec = {"name": "d", "root": str(tmp_path), "config": TINY, "axes": {"subset": ["full", "1of10"], "seed": [0]}}
    monkeypatch.setenv("RETHINK_DATASETS", str(tmp_path / "nowhere"))
    with pytest.raises(SweepError) as e:
        check_submission(expand(spec, "d.yaml"), "d.yaml")
    text = str(e.value)
    assert "d.yaml: axes.subset 'full' with the default train_dataset 'coco_2017_train': DATASETS.TRAIN " \
           "'coco_2017_train' (run(s) full_s0): dataset coco_2017_train not found" in text
    assert "d.yaml: axes.subset '1of10' with the default train_dataset 'coco_2017_train': DATASETS.TRAIN " \
           "'coco_2017_train_1of10_s0' (run(s) 1of10_s0)" in text
    assert "synthetic_coco_val" not in text  # DATASETS.TEST of the config: generated on first use
    with pytest.raises(SweepError, match=r"d.yaml: axes.subset 'full' with train_dataset 'coco_2017_trian': "
                                         r"DATASETS.TRAIN 'coco_2017_trian' .*unknown dataset 'coco_2017_trian'. "
                                         r"Did you mean coco_2017_train"):
        check_submission(expand({**spec, "train_dataset": "coco_2017_trian"}, "d.yaml"), "d.yaml")
    with pytest.raises(SweepError, match=r"d.yaml: overrides DATASETS.TEST: DATASETS.TEST 'coco_2017_val_1of0_s0' "
                                         r"\(run\(s\) full_s0, 1of10_s0\): not a subset that can be drawn"):
        check_submission(expand({**spec, "overrides": ["DATASETS.TEST", "('coco_2017_val_1of0_s0',)"]}, "d.yaml"),
                         "d.yaml")
    monkeypatch.setenv("RETHINK_DATASETS", coco_root)
    check_submission(expand(spec, "d.yaml"), "d.yaml")


def test_dry_run_cli_refuses_sweep_file_errors(tmp_path, capsys):
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump({"name": "typo", "root": str(tmp_path), "config": TINY, "axes": AXES,
                                    "exclude": [{"schedul": "2x"}]}))
    rc, out, err = launch_main(capsys, "submit", "--sweep", str(path), "--dry-run")
    assert rc == 2 and out == ""
    assert err.startswith(f"error: {path}: exclude[0] {{'schedul': '2x'}}: unknown axis 'schedul'")


def test_dry_run_cli_prints_table_and_submits_nothing(tmp_path, coco_root, weights_root):
    r = cli("launch/submit.py", "--sweep", "launch/sweeps/freeze.yaml", "--dry-run", "--root", str(tmp_path),
            "--gpus-per-node", "4", "--partition", "p1", env={"RETHINK_DATASETS": coco_root})
    assert r.returncode == 2 and "R-50-GN.pkl, which does not exist" in r.stderr  # the pre-trained runs' weights
    assert "Traceback" not in r.stderr
    r = cli("launch/submit.py", "--sweep", "launch/sweeps/freeze.yaml", "--dry-run", "--root", str(tmp_path),
            "--gpus-per-node", "4", "--partition", "p1", env={"RETHINK_DATASETS": coco_root,
                                                              "RETHINK_WEIGHTS": weights_root})
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


# --- run dirs of another config ---------------------------------------------------------------------
def _started(run, fingerprint):
    """What a run that trained to the end leaves (its weights are not read here)."""
    d = RunDir(run.output_dir)
    os.makedirs(d.path, exist_ok=True)
    d.write_fingerprint(fingerprint)
    for path in (d.final_checkpoint, d.checkpoint(run.max_iter)):
        open(path, "wb").close()
    d.set_last_checkpoint(d.final_checkpoint)
    with open(d.metrics_file, "w") as f:
        f.write('{"iteration": 6, "total_loss": 1.0}\n')


def test_launcher_fingerprint_is_the_one_the_job_trains_with(tmp_path):
    sweep = expand({"name": "fp", "root": str(tmp_path), "config": TINY, "axes": {"seed": [1, -1]},
                    "overrides": SHORT + ["SOLVER.CHECKPOINT_ITERS", "(3,)", "DATASETS.TEST", "()"]})
    for r in sweep.runs:  # what TrainJob loads (jobs.restart_config, first start); a SEED < 0 is drawn there
        cfg = load_run_config(r.config, r.overrides + ["OUTPUT_DIR", r.output_dir], resume=True)
        assert config_fingerprint(cfg)["sha256"] == r.fingerprint["sha256"] or r.seed < 0
        _started(r, config_fingerprint(cfg))
    check_submission(sweep, "fp.yaml")  # the same sweep again: its own run dirs (a drawn SEED is the run's)
    assert [row["state"] for row in run_states(sweep)] == ["done", "done"]  # no test set: done at MAX_ITER


def test_sweep_resubmitted_with_another_lr_into_old_run_dirs_is_refused(tmp_path, capsys):
    path = tmp_path / "lr.yaml"
    spec = {"name": "lr", "root": str(tmp_path), "config": TINY, "axes": {"seed": [1, 2]},
            "overrides": SHORT + ["DATASETS.TEST", "()"], "resources": {"cpus_per_task": 1}}
    path.write_text(yaml.safe_dump(spec))
    old = load_sweep(str(path))
    for r in old.runs:
        _started(r, r.fingerprint)
    assert [row["state"] for row in run_states(old)] == ["done", "done"]
    # the same sweep with SOLVER.BASE_LR 0.01 on the command line: refused, also by --dry-run; nothing submitted
    for extra in (["--dry-run"], []):
        rc, out, err = launch_main(capsys, "submit", "--sweep", str(path), "--cluster", "local", *extra,
                                   "SOLVER.BASE_LR", "0.01")
        assert rc == 2, out + err
        for name in ("s1", "s2"):
            assert (f"{path}: run {name}: {tmp_path / 'lr' / name} belongs to another run (its fingerprint.json "
                    f"records a different config): SOLVER.BASE_LR: 0.02 -> 0.01") in err
    assert not (tmp_path / "lr" / "submissions.jsonl").exists() and not (tmp_path / "lr" / ".submitit").exists()
    new = expand({**spec, "overrides": spec["overrides"] + ["SOLVER.BASE_LR", "0.01"]}, str(path))
    rows = run_states(new)  # status never reports the old files as this config's runs
    assert [row["state"] for row in rows] == ["stale: belongs to another config (SOLVER.BASE_LR: 0.02 -> 0.01)"] * 2
    assert "stale: belongs to another config" in format_states(rows)
    # an old run dir without a fingerprint (from before fingerprints, or detectron2's) is accepted as it is
    os.remove(RunDir(new.runs[0].output_dir).fingerprint_file)
    with pytest.raises(SweepError) as e:
        check_submission(new, str(path))
    assert "run s1:" not in str(e.value) and "run s2:" in str(e.value)


# --- the local executor -----------------------------------------------------------------------------
def _task_pids(submitit_dir):
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read()
        except OSError:
            continue
        if TASK_MODULE.encode() in cmd and submitit_dir.encode() in cmd:
            pids.append(int(pid))
    return pids


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="finds the task's process in /proc")
def test_local_task_killed_by_sigkill_is_failed_then_resubmitted_and_done(tmp_path, capsys):
    """--cluster local: submit.py returns at once when piped (the job does not hold its stdout), the job
    runs one rank on the CPU, a task killed by SIGKILL (no result) is `failed (killed)`, --resubmit-failed
    resumes it, and --wait ends with the run done although it has no test set."""
    spec = {"name": "kill", "root": str(tmp_path), "config": TINY, "axes": {"seed": [3]},
            "overrides": SHORT + ["DATASETS.TEST", "()", "TEST.EVAL_PERIOD", "0"],
            "resources": {"cpus_per_task": 1, "time": "00:20:00"}}
    (tmp_path / "kill.yaml").write_text(yaml.safe_dump(spec))
    sweep_dir, submitit_dir = str(tmp_path / "kill"), str(tmp_path / "kill" / ".submitit")
    t0 = time.time()
    r = cli("launch/submit.py", "--sweep", str(tmp_path / "kill.yaml"), "--cluster", "local")  # stdout: a pipe
    assert r.returncode == 0, r.stdout + r.stderr
    assert " 1x1 " in r.stdout  # one rank on the CPU
    job_id = yaml.safe_load(open(os.path.join(sweep_dir, "submissions.jsonl")))["jobs"]["s3"]
    deadline = time.time() + 60
    while not _task_pids(submitit_dir):
        assert time.time() < deadline, "the local task never started"
        time.sleep(0.05)
    assert job_alive(job_id, submitit_dir), f"submit.py waited for the job ({time.time() - t0:.0f} s)"
    assert not job_alive(str(os.getpid()), submitit_dir)  # a live pid that is not this sweep's job
    for pid in _task_pids(submitit_dir):
        os.kill(pid, signal.SIGKILL)
    deadline = time.time() + 30
    while job_alive(job_id, submitit_dir):
        assert time.time() < deadline, "the controller outlived its killed task"
        time.sleep(0.1)
    assert os.path.isfile(os.path.join(submitit_dir, job_id, "controller.log"))
    rc, out, err = launch_main(capsys, "status", sweep_dir)
    assert rc == 0 and re.search(rf"\ns3 +{job_id} +failed \(killed\) +0/6", out), out + err
    rc, out, err = launch_main(capsys, "status", sweep_dir, "--resubmit-failed")
    assert "resubmitted 1 runs" in out, out + err
    rc, out, err = launch_main(capsys, "status", sweep_dir, "--wait")
    assert rc == 0 and re.search(r"\ns3 +\d+ +done +6/6\n$", out), out + err  # the last table
    fingerprint = RunDir(os.path.join(sweep_dir, "s3")).read_fingerprint()
    if fingerprint is not None:  # what the training recorded is what the launcher compares with
        assert fingerprint["sha256"] == load_sweep(str(tmp_path / "kill.yaml")).runs[0].fingerprint["sha256"]


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
    from rethink.cluster.resources import parse_time

    res = Resources()
    assert res.cpus_per_task * res.ranks_per_node("slurm") <= 64 and parse_time(res.time) <= 24 * 60
    assert res.ranks_per_node("slurm", cuda=True) == 8
    # this machine: one rank on the CPU (not 8 processes sharing its cores), unless asked for more
    assert res.ranks_per_node("local", cuda=False) == 1
    assert Resources(gpus_per_node=2).ranks_per_node("local", cuda=False) == 2
    ports = {master_port(str(job)) for job in range(5000)}
    assert min(ports) >= 20000 and max(ports) < 32768  # below the ephemeral range 32768-60999
    assert len(ports) > 3000


# --- the enhanced baselines: grids, bundle axes, the cascade switch ---------------------------------
X152 = [CONFIGS / f"{name}.yaml"
        for name in ("scratch_gn_x152", "scratch_gn_x152_cascade", "pretrained_gn_x152_cascade")]


def _enhanced_spec(tmp_path, x152: bool):
    spec = yaml.safe_load(open(SWEEPS / "enhanced.yaml"))
    if not x152:
        spec["grids"] = spec["grids"][:1]
    return expand(spec, str(SWEEPS / "enhanced.yaml"), root=str(tmp_path))


def test_enhanced_grid_and_cascade_switch(tmp_path):
    sweep = _enhanced_spec(tmp_path, x152=False)
    runs = {r.name: r for r in sweep.runs}
    assert sorted(runs) == sorted(f"{i}_r{d}_{h}_s0" for i in ("scratch", "pretrained") for d in (50, 101)
                                  for h in ("standard", "cascade"))
    trunk, branch = runs["scratch_r50_standard_s0"], runs["scratch_r50_cascade_s0"]
    assert (trunk.max_iter, trunk.steps, trunk.roi_heads) == (810000, (750000, 790000), "StandardROIHeads")
    assert trunk.checkpoint_iters == [540000] and trunk.fork_from is None
    assert branch.fork_from == {"trunk": "scratch_r50_standard_s0", "trunk_dir": trunk.output_dir,
                                "iteration": 540000, "convert": "cascade"}
    assert branch.config.endswith("configs/enhanced/scratch_gn_r50_cascade.yaml") and branch.iterations == 270000
    cfg = load_run_config(branch.config, branch.overrides + ["OUTPUT_DIR", branch.output_dir])
    assert (cfg.MODEL.ROI_HEADS.NAME, cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG, cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN,
            cfg.TEST.AUG.ENABLED, cfg.TEST.AUG.MAX_SIZE) == ("CascadeROIHeads", True, 2000, True, 2000)
    assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == (640, 672, 704, 736, 768, 800) and cfg.SEED == 0
    # pre-trained runs: 6x, cascade throughout (no branch)
    pre = runs["pretrained_r101_cascade_s0"]
    assert (pre.max_iter, pre.fork_from, pre.iterations) == (540000, None, 540000)
    assert runs["pretrained_r101_standard_s0"].checkpoint_iters == []
    table = plan_table(sweep)
    assert "scratch_r101_cascade_s0 (cascade branch of scratch_r101_standard_s0 at 540000)" in table
    assert "8 runs in one job array (at most 16 at once), 4320000 iterations, ~4902 GPU-hours" in table
    assert "4320000 iterations computed vs 5400000 for separate runs (1.25x less compute)" in table
    assert re.search(r"scratch_r50_cascade_s0 .* 270000 +288 ", table)  # 270k x 0.4 s x 1.2 (cascade) x 8 GPUs
    assert re.search(r"\nscratch_r50_standard_s0 .* 810000 +720 ", table)
    lines = {line.split()[0]: line for line in table.splitlines() if "  schedule: " in line}
    assert lines["pretrained_r50_cascade_s0"].endswith("max 2000, + flip): *_TTA metrics")
    assert "TTA" not in lines["pretrained_r50_standard_s0"]


@pytest.mark.skipif(not all(p.is_file() for p in X152), reason="the X152 configs (another change) are not here yet")
def test_enhanced_dry_run_lists_runs_and_gpu_hours(tmp_path, coco_root, weights_root, capsys, monkeypatch):
    monkeypatch.setenv("RETHINK_DATASETS", coco_root)
    monkeypatch.setenv("RETHINK_WEIGHTS", weights_root)
    rc, out, err = launch_main(capsys, "submit", "--sweep", str(SWEEPS / "enhanced.yaml"), "--dry-run",
                               "--root", str(tmp_path))
    assert rc == 0, err
    assert "11 runs in one job array (at most 16 at once), 5940000 iterations, ~11238 GPU-hours" in out
    assert "5940000 iterations computed vs 7560000 for separate runs (1.27x less compute)" in out
    assert "scratch_x152_cascade_s0 (cascade branch of scratch_x152_standard_s0 at 540000)" in out
    assert not (tmp_path / "enhanced").exists()


@pytest.mark.parametrize("rule,message", [
    ({"axis": "heads"}, "cascade_switch: {'axis': 'heads'}: give {axis: "),
    ({"axis": "head", "last_iters": 10}, "cascade_switch.axis: 'head' is not an axis of this sweep"),
    ({"axis": "heads", "last_iters": 30}, "cascade_switch: c_s5 cannot branch off standard_s5 at iteration -3: "
                                          "its MAX_ITER 27 is not longer than last_iters 30"),
    ({"axis": "heads", "last_iters": 20}, "cascade_switch: c_s5 cannot branch off standard_s5 at iteration 7: "
                                          "an LR drop before the switch (STEPS (6, 21)"),
    ({"axis": "heads", "last_iters": 10, "only": {"seed": 4}}, "cascade_switch.only: no run has seed = 4"),
])
def test_cascade_switch_errors(rule, message):
    spec = {"name": "sw", "config": TINY, "overrides": FORK + ["SOLVER.SCHEDULE", "3x"], "cascade_switch": rule,
            "axes": {"heads": {"standard": [], "c": ["MODEL.ROI_HEADS.NAME", "CascadeROIHeads",
                                                     "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", "True"]},
                     "seed": [5]}}
    if rule.get("last_iters") == 20:
        spec["overrides"] = spec["overrides"] + ["SOLVER.STEPS", "(6, 21)"]
    with pytest.raises(SweepError) as e:
        expand(spec, "s.yaml")
    assert message in str(e.value)


def test_bundle_axis_and_grid_errors():
    with pytest.raises(SweepError, match=r"s.yaml: axes.recipe.fast: \['SOLVER.BASE_LR'\]: each value"):
        expand({"config": TINY, "axes": {"recipe": {"fast": ["SOLVER.BASE_LR"]}}}, "s.yaml")
    with pytest.raises(SweepError, match="axes.schedule: a mapping .* schedule takes a list of values"):
        expand({"config": TINY, "axes": {"schedule": {"a": []}}}, "s.yaml")
    with pytest.raises(SweepError, match="s.yaml: grids\\[0\\]: unknown key\\(s\\) \\['axis'\\]"):
        expand({"grids": [{"config": TINY, "axis": {}}]}, "s.yaml")
    with pytest.raises(SweepError, match="two runs are both named s1"):
        expand({"grids": [{"config": TINY, "axes": {"seed": [1]}}] * 2}, "s.yaml")
    sweep = expand({"config": TINY, "overrides": SHORT,
                    "axes": {"recipe": {"plain": [], "fast": ["SOLVER.BASE_LR", 0.04]}, "seed": [1]}}, "s.yaml")
    assert [(r.name, r.base_lr, r.axes["recipe"]) for r in sweep.runs] == [("plain_s1", 0.02, "plain"),
                                                                          ("fast_s1", 0.04, "fast")]


def test_cascade_branch_starts_from_the_converted_trunk_checkpoint(tmp_path):
    """The trunk's checkpoint at the switch becomes the branch's: strict load into the cascade model, every stage's
    box head and class scores the trunk's, class-agnostic regressors fresh, iteration and metrics carried over."""
    from rethink.engine.checkpoint import cascade_checkpoint_from_standard
    from rethink.modeling import build_model

    spec = {"name": "sw", "root": str(tmp_path), "config": TINY, "overrides": FORK + ["SOLVER.SCHEDULE", "3x"],
            "cascade_switch": {"axis": "heads", "last_iters": 10},
            "axes": {"heads": {"standard": [], "cascade": ["MODEL.ROI_HEADS.NAME", "CascadeROIHeads",
                                                           "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", "True"]}}}
    trunk, branch = expand(spec, "s.yaml").runs
    assert branch.fork_from["iteration"] == 17 and trunk.checkpoint_iters == [17]
    cfg_t = load_run_config(trunk.config, trunk.overrides + ["OUTPUT_DIR", trunk.output_dir])
    cfg_b = load_run_config(branch.config, branch.overrides + ["OUTPUT_DIR", branch.output_dir], resume=True)
    torch.manual_seed(0)
    standard = build_model(cfg_t).state_dict()
    d = RunDir(trunk.output_dir)
    os.makedirs(d.path)
    torch.save({"model": standard, "iteration": 17, "optimizer": {"state": {}}}, d.checkpoint(17))
    with open(d.metrics_file, "w") as f:
        f.write('{"iteration": 12, "bbox/AP": 1.0}\n{"iteration": 18, "bbox/AP": 2.0}\n')
    prepare_branch(cfg_b, branch.fork_from)
    data = torch.load(RunDir(branch.output_dir).checkpoint(17), weights_only=True)
    assert data["iteration"] == 17 and "optimizer" not in data
    build_model(cfg_b).load_state_dict(data["model"])  # strict
    m = data["model"]
    for k in range(3):
        assert torch.equal(m[f"roi_heads.box_head.{k}.0.0.weight"], standard["roi_heads.box_head.0.0.weight"])
        assert torch.equal(m[f"roi_heads.box_predictor.{k}.cls_score.bias"],
                           standard["roi_heads.box_predictor.cls_score.bias"])
        assert m[f"roi_heads.box_predictor.{k}.bbox_pred.weight"].shape[0] == 4
        assert 0 < m[f"roi_heads.box_predictor.{k}.bbox_pred.weight"].std() < 0.002
    rest = [k for k in standard if not k.startswith(("roi_heads.box_head.", "roi_heads.box_predictor."))]
    assert len(rest) > 100 and all(torch.equal(m[k], standard[k]) for k in rest)  # backbone, RPN, mask head
    assert [x["iteration"] for x in read_metrics(RunDir(branch.output_dir).metrics_file)] == [12]
    with pytest.raises(ValueError, match="x.pth: not a standard-head checkpoint .*already has cascade stages"):
        cascade_checkpoint_from_standard(data, 3, 0, "x.pth")
