"""Fault injection (issue: preemption and faults lose nothing). Tiny CPU runs of tools/train.py, 1 rank
or 2 gloo ranks, interrupted on purpose, then resumed: final weights must equal an uninterrupted run.

Faults are injected from outside the package: signals and SIGKILL from the test, and, for failures
inside a rank (a rank raising, a checkpoint write in progress, a rank reading other bytes), a
sitecustomize module the test writes and puts on PYTHONPATH, active only in the subprocess it starts.
"""
import errno
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from types import SimpleNamespace

import pytest
import torch

from rethink.cluster.jobs import restart_config
from rethink.cluster.retry import is_transient, retries_so_far, retry_decision
from rethink.engine import load_run_config, main_worker
from rethink.engine.defaults import default_setup
from rethink.engine.hooks import EvalHook, MetricsWriter
from rethink.engine.ownership import RunDirMismatch
from rethink.engine.train_loop import TrainerBase
from rethink.utils import atomic
from rethink.utils.rundir import RunDir, read_metrics
from rethink.utils.runlock import RunDirBusy
from rethink.utils.signals import EvaluationStopped, TrainingStopped

from .conftest import CONFIGS, ROOT

pytestmark = pytest.mark.usefixtures("isolated_cache")

TINY = str(CONFIGS / "demo" / "scratch_gn_r18_tiny.yaml")
# 6 iterations at batch 2, LR drops at 4 and 5, a checkpoint every 2, no evaluation (time)
RUN = ["SOLVER.IMS_PER_BATCH", "2", "SOLVER.REFERENCE_IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "6",
       "SOLVER.STEPS", "(4, 5)", "SOLVER.WARMUP_ITERS", "2", "SOLVER.CHECKPOINT_PERIOD", "2",
       "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()", "SEED", "5"]


def train_cmd(out, *extra, ranks=1, resume=False):
    return [sys.executable, str(ROOT / "tools" / "train.py"), "--config", TINY, "--num-gpus", str(ranks),
            *(["--resume"] if resume else []), *RUN, "OUTPUT_DIR", str(out), *extra]


def env_with(inject_dir=None, **values):
    env = {**os.environ, **{k: str(v) for k, v in values.items()}}
    if inject_dir:
        env["PYTHONPATH"] = os.pathsep.join([str(inject_dir), env.get("PYTHONPATH", "")])
    return env


def run(cmd, env=None, timeout=600):
    return subprocess.run(cmd, cwd=ROOT, env=env or env_with(), capture_output=True, text=True, timeout=timeout)


def final_weights(out):
    return torch.load(os.path.join(out, "model_final.pth"), weights_only=True)["model"]


def max_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a if a[k].numel())


def wait_for(predicate, proc, timeout=300, what=""):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"process ended ({proc.returncode}) before {what}: {err[-3000:]}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"timed out waiting for {what}")


def completed_iterations(out) -> int:
    """The highest 'iteration k/N took' line in rank 0's log (the first 3 are announced) or metrics."""
    log = os.path.join(out, "log.txt")
    if not os.path.isfile(log):
        return 0
    with open(log, errors="replace") as f:
        text = f.read()
    done = [int(m) for m in re.findall(r"iteration (\d+)/\d+ took", text)]
    return max(done, default=0)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted runs: 1 rank and 2 gloo ranks."""
    refs = {}
    for ranks in (1, 2):
        out = tmp_path_factory.mktemp(f"ref{ranks}")
        r = run(train_cmd(out, ranks=ranks))
        assert r.returncode == 0, r.stderr[-3000:]
        refs[ranks] = str(out)
    return refs


# ---------------------------------------------------------------------------------------------------------------
# stop signals: a checkpoint at the next step boundary, then resume to equal weights
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sig,ranks", [(signal.SIGTERM, 1), (signal.SIGUSR2, 2)])
def test_stop_signal_saves_at_the_next_step_and_resume_is_exact(reference, tmp_path, sig, ranks, caplog):
    out = str(tmp_path / "run")
    proc = subprocess.Popen(train_cmd(out, ranks=ranks), cwd=ROOT, env=env_with(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for(lambda: completed_iterations(out) >= 1, proc, what="the first iteration")
    at = completed_iterations(out)
    sent = time.time()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    took = time.time() - sent
    assert proc.returncode == 128 + sig, err[-3000:]
    run_dir = RunDir(out)
    saved = int(open(run_dir.last_checkpoint_file).read().strip()[len("model_"):-len(".pth")])
    # the step in progress when the signal came is finished and saved: nothing is lost
    assert saved >= at and saved < 6
    ckpt = torch.load(run_dir.checkpoint(saved), weights_only=True)
    assert ckpt["iteration"] == saved
    assert f"Received {signal.Signals(sig).name}" in err and "continue with --resume" in err
    assert took < 60, took
    if ranks == 1:
        resume_in_process(out)  # a process start less; the same numbers (see the damaged-checkpoint tests)
        assert f"Resumed from {run_dir.checkpoint(saved)} (iteration {saved})" in caplog.text
    else:
        r = run(train_cmd(out, ranks=ranks, resume=True))
        assert r.returncode == 0, r.stderr[-3000:]
        assert f"Resumed from {run_dir.checkpoint(saved)} (iteration {saved})" in r.stderr
    assert max_diff(final_weights(out), final_weights(reference[ranks])) <= 1e-6


# ---------------------------------------------------------------------------------------------------------------
# kill -9: at a random moment, and during a checkpoint write
# ---------------------------------------------------------------------------------------------------------------
SLOW_WRITE = textwrap.dedent('''
    import os, time
    if os.environ.get("FAULT_SLOW_WRITE_AT"):
        import rethink.engine.checkpoint as ck
        from rethink.utils.atomic import atomic_write
        import torch, io

        def slow_save(obj, path):
            if obj.get("iteration") != int(os.environ["FAULT_SLOW_WRITE_AT"]):
                return atomic_write(path, lambda f: torch.save(obj, f))
            buf = io.BytesIO(); torch.save(obj, buf); data = buf.getvalue()
            def write(f):
                f.write(data[: len(data) // 2]); f.flush()
                open(os.environ["FAULT_MARKER"], "w").close()
                time.sleep(120)
                f.write(data[len(data) // 2:])
            return atomic_write(path, write)
        ck.atomic_torch_save = slow_save
    if os.environ.get("FAULT_RAISE_RANK"):
        import rethink.engine.trainer as tr
        step = tr.Trainer.run_step

        def run_step(self):
            if self.rank == int(os.environ["FAULT_RAISE_RANK"]) and self.iter == int(os.environ["FAULT_RAISE_AT"]):
                open(os.environ["FAULT_MARKER"], "w").write(str(time.time()))
                raise ValueError("injected failure on rank %d at step %d" % (self.rank, self.iter))
            return step(self)
        tr.Trainer.run_step = run_step
    if os.environ.get("FAULT_OTHER_BYTES_RANK"):
        import rethink.engine.checkpoint as ck
        from rethink.engine import comm
        read = ck._read

        def other_bytes(path):
            blob = read(path)
            return blob + b"x" if comm.get_rank() == int(os.environ["FAULT_OTHER_BYTES_RANK"]) else blob
        ck._read = other_bytes
    if os.environ.get("FAULT_STOP_EVAL_LOG"):
        # the process's first evaluation: every batch handed to the model is logged ("rank batch"); on rank
        # FAULT_STOP_EVAL_RANK, batch FAULT_STOP_EVAL_BATCH waits (FAULT_MARKER: the pid) for a stop signal
        import rethink.engine.trainer as tr
        from rethink.engine import comm
        from rethink.utils.signals import current_stop_request
        build, evals = tr.build_test_loader, []

        class Loader:
            def __init__(self, loader):
                self.loader = loader

            def __len__(self):
                return len(self.loader)

            def __iter__(self):
                evals.append(1)
                rank, log = comm.get_rank(), os.environ["FAULT_STOP_EVAL_LOG"]
                for n, batch in enumerate(self.loader, 1):
                    if len(evals) == 1 and rank == int(os.environ["FAULT_STOP_EVAL_RANK"]) \\
                            and n == int(os.environ["FAULT_STOP_EVAL_BATCH"]):
                        open(os.environ["FAULT_MARKER"], "w").write(str(os.getpid()))
                        deadline = time.time() + 120
                        while not current_stop_request().received and time.time() < deadline:
                            time.sleep(0.01)
                        with open(log, "a") as f:
                            f.write("%d signalled\\n" % rank)
                    if len(evals) == 1:
                        with open(log, "a") as f:
                            f.write("%d %d\\n" % (rank, n))
                    yield batch
        tr.build_test_loader = lambda *args, **kwargs: Loader(build(*args, **kwargs))
''')


@pytest.fixture()
def inject(tmp_path):
    d = tmp_path / "inject"
    d.mkdir()
    (d / "sitecustomize.py").write_text(SLOW_WRITE)
    return d


def test_kill9_at_a_random_moment_then_resume_is_exact(reference, tmp_path):
    out = str(tmp_path / "run")
    proc = subprocess.Popen(train_cmd(out), cwd=ROOT, env=env_with(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    wait_for(lambda: completed_iterations(out) >= 1, proc, what="the first iteration")
    time.sleep(random.Random(os.getpid()).uniform(0.0, 1.0))
    proc.kill()
    proc.communicate()
    resume_in_process(out)
    assert max_diff(final_weights(out), final_weights(reference[1])) <= 1e-6


def test_kill9_during_a_checkpoint_write_leaves_the_previous_one_and_resume_is_exact(reference, tmp_path, inject,
                                                                                     caplog):
    out = str(tmp_path / "run")
    marker = tmp_path / "writing"
    proc = subprocess.Popen(train_cmd(out), cwd=ROOT, env=env_with(inject, FAULT_SLOW_WRITE_AT=4,
                                                                    FAULT_MARKER=marker),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(marker.exists, proc, what="the checkpoint write at iteration 4")
    proc.kill()
    proc.communicate()
    run_dir = RunDir(out)
    assert open(run_dir.last_checkpoint_file).read() == "model_0000002.pth"
    assert not os.path.exists(run_dir.checkpoint(4)) and len(run_dir.temp_files()) == 1
    resume_in_process(out)
    assert "left by a write that did not finish" in caplog.text and run_dir.temp_files() == []
    assert f"Resumed from {run_dir.checkpoint(2)} (iteration 2)" in caplog.text
    assert max_diff(final_weights(out), final_weights(reference[1])) <= 1e-6


# ---------------------------------------------------------------------------------------------------------------
# a stop signal during an evaluation: stopped within one batch, that iteration saved, the evaluation redone on resume
# ---------------------------------------------------------------------------------------------------------------
# evaluations at 2 and 3 (the end), checkpoints at 3 only: the one at 2 only a stop writes. Small test images and 2
# detections per image: each evaluation is 24 images' forward
WITH_EVAL = ["SOLVER.MAX_ITER", "3", "SOLVER.STEPS", "(2,)", "SOLVER.CHECKPOINT_PERIOD", "3", "TEST.EVAL_PERIOD", "2",
             "DATASETS.TEST", "('synthetic_coco_val',)", "TEST.DETECTIONS_PER_IMAGE", "2", "INPUT.MIN_SIZE_TEST", "64",
             "INPUT.MAX_SIZE_TEST", "128"]
STOP_BATCH = 3


def evaluations(out):
    """{iteration: its "*/AP" values} (read_metrics: merged per iteration) and the number of
    metrics.jsonl lines holding AP at each iteration."""
    lines = [json.loads(line) for line in open(RunDir(out).metrics_file) if line.strip()]
    counts = {}
    for m in lines:
        if any(k.endswith("/AP") for k in m):
            counts[m["iteration"]] = counts.get(m["iteration"], 0) + 1
    aps = {m["iteration"]: {k: v for k, v in m.items() if "/AP" in k} for m in read_metrics(RunDir(out).metrics_file)}
    return {k: v for k, v in aps.items() if v}, counts


def stop_during_the_first_evaluation(tmp_path, inject, sig, ranks):
    """Train with WITH_EVAL; the last rank gets `sig` while it evaluates batch STOP_BATCH of the
    evaluation at iteration 2 (the other rank, if any, learns of it only through the agreement).
    Asserts what the stop leaves; returns the run's directory."""
    out, log, marker = str(tmp_path / "run"), tmp_path / "batches", tmp_path / "waiting"
    proc = subprocess.Popen(train_cmd(out, *WITH_EVAL, ranks=ranks), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            env=env_with(inject, FAULT_STOP_EVAL_LOG=log, FAULT_STOP_EVAL_RANK=ranks - 1,
                                         FAULT_STOP_EVAL_BATCH=STOP_BATCH, FAULT_MARKER=marker))
    wait_for(lambda: marker.exists() and marker.read_text(), proc, what="the evaluation at iteration 2")
    os.kill(int(marker.read_text()), sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err[-3000:]
    # the signalled rank evaluated the batch in progress and no other; every rank left after that same batch
    entries = log.read_text().splitlines()
    signalled = entries.index(f"{ranks - 1} signalled")
    assert [e for e in entries[signalled + 1:] if e.startswith(f"{ranks - 1} ")] == [f"{ranks - 1} {STOP_BATCH}"]
    last = {rank: max(int(e.split()[1]) for e in entries if e.startswith(f"{rank} ") and "signalled" not in e)
            for rank in range(ranks)}
    assert last == {rank: STOP_BATCH for rank in range(ranks)}, entries
    assert "The evaluation at iteration 2 was stopped" in err and "continue with --resume" in err
    run_dir = RunDir(out)
    assert open(run_dir.last_checkpoint_file).read() == "model_0000002.pth"
    assert torch.load(run_dir.checkpoint(2), weights_only=True)["iteration"] == 2
    assert evaluations(out) == ({}, {})  # nothing of the abandoned evaluation was logged
    return out


@pytest.mark.slow
def test_stop_signal_during_an_evaluation_stops_every_rank_at_the_same_batch(tmp_path, inject):
    stop_during_the_first_evaluation(tmp_path, inject, signal.SIGUSR2, ranks=2)


@pytest.mark.slow
def test_stop_signal_during_an_evaluation_saves_that_iteration_and_resume_redoes_it(tmp_path, inject):
    out = stop_during_the_first_evaluation(tmp_path, inject, signal.SIGTERM, ranks=1)
    r = run(train_cmd(out, *WITH_EVAL, resume=True))
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"Resumed from {RunDir(out).checkpoint(2)} (iteration 2)" in r.stderr
    reference = str(tmp_path / "uninterrupted")
    r = run(train_cmd(reference, *WITH_EVAL))
    assert r.returncode == 0, r.stderr[-3000:]
    aps, counts = evaluations(out)
    assert counts == {2: 1, 3: 1}  # the evaluation at 2 redone, once
    assert aps == evaluations(reference)[0] and set(aps[3]) >= {"bbox/AP", "segm/AP"}
    # the determinism contract: the same weights after the resumed steps (so the same losses on the way)
    assert max_diff(final_weights(out), final_weights(reference)) <= 1e-6


class StepsOnly(TrainerBase):
    """A training loop without a model: each step logs a loss; evaluate() gives an AP or, at
    `stop_at`, is stopped (EvaluationStopped, as inference_on_dataset raises it); stops save nothing."""

    def __init__(self, out, stop_at=None):
        super().__init__()
        self.cfg, self.stop_at, self.evaluated, self.saved = SimpleNamespace(OUTPUT_DIR=out), stop_at, [], []
        self.register_hooks([EvalHook(2, self.evaluate), MetricsWriter(out, period=20, tensorboard=False)])

    def run_step(self):
        self.storage.put_scalar("total_loss", 1.0 / self.completed)

    def evaluate(self):
        self.evaluated.append(self.completed)
        if self.completed == self.stop_at:
            raise EvaluationStopped(signal.SIGTERM, 1, 5)
        return {"bbox/AP": 10.0 * self.completed}

    def save_for_stop(self):
        self.saved.append(self.completed)
        return f"model at {self.completed}"


def test_the_final_evaluation_stopped_is_redone_once_by_the_resumed_run(tmp_path):
    out = str(tmp_path)
    stopped = StepsOnly(out, stop_at=4)
    with pytest.raises(TrainingStopped) as e:
        stopped.train(0, 4)
    assert (e.value.signum, e.value.iteration, e.value.checkpoint) == (signal.SIGTERM, 4, "model at 4")
    assert stopped.evaluated == [2, 4] and stopped.saved == [4]  # not evaluated again after training
    assert evaluations(out) == ({2: {"bbox/AP": 20.0}}, {2: 1})
    resumed = StepsOnly(out)  # resumed from the checkpoint at 4 (the final one): no step left
    resumed.train(4, 4)
    assert resumed.evaluated == [4] and resumed.saved == []
    assert evaluations(out) == ({2: {"bbox/AP": 20.0}, 4: {"bbox/AP": 40.0}}, {2: 1, 4: 1})


def test_stop_signal_ends_eval_only_at_the_batch_in_progress_without_results(tmp_path, monkeypatch):
    from rethink.engine import trainer as tr

    build, handed = tr.build_test_loader, []

    class SignalAtSecondBatch:
        def __init__(self, loader):
            self.loader = loader

        def __len__(self):
            return len(self.loader)

        def __iter__(self):
            for n, batch in enumerate(self.loader, 1):
                handed.append(n)
                if n == 2:
                    os.kill(os.getpid(), signal.SIGTERM)  # recorded by main_worker's StopRequest, not fatal
                yield batch

    monkeypatch.setattr(tr, "build_test_loader", lambda *args, **kwargs: SignalAtSecondBatch(build(*args, **kwargs)))
    out = str(tmp_path / "eval")
    cfg = load_run_config(TINY, RUN + WITH_EVAL + ["OUTPUT_DIR", out])  # the initial weights: what matters is when
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(EvaluationStopped, match="stopped by SIGTERM after 2 of 24 batches") as stopped:
        main_worker(cfg, eval_only=True)
    assert stopped.value.exit_code == 128 + signal.SIGTERM and handed == [1, 2]
    assert not os.path.exists(RunDir(out).eval_results_file)
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is gone with the evaluation


# ---------------------------------------------------------------------------------------------------------------
# damaged or missing checkpoints: resume from the newest readable one, never silently from 0
# ---------------------------------------------------------------------------------------------------------------
def copy_run(src, dst):
    shutil.copytree(src, dst)
    for name in ("run.lock",):
        if os.path.exists(os.path.join(dst, name)):
            os.remove(os.path.join(dst, name))
    return str(dst)


def damage(path, kind):
    if kind == "truncated":
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 3])
    elif kind == "garbage":
        open(path, "wb").write(os.urandom(4096))
    else:
        open(path, "wb").close()


def resume_in_process(out):
    cfg = load_run_config(TINY, RUN + ["OUTPUT_DIR", out], resume=True)
    main_worker(cfg, resume=True)


@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty"])
def test_damaged_newest_checkpoint_resumes_from_the_previous_with_a_warning(reference, tmp_path, kind, caplog):
    out = copy_run(reference[1], tmp_path / "run")
    run_dir = RunDir(out)
    os.remove(run_dir.final_checkpoint)
    run_dir.set_last_checkpoint(run_dir.checkpoint(4))
    damage(run_dir.checkpoint(4), kind)
    resume_in_process(out)
    assert f"Checkpoint {run_dir.checkpoint(4)} is damaged" in caplog.text
    assert os.path.isfile(run_dir.checkpoint(4) + ".damaged")
    assert f"Resumed from {run_dir.checkpoint(2)} (iteration 2)" in caplog.text
    assert max_diff(final_weights(out), final_weights(reference[1])) <= 1e-6


@pytest.mark.parametrize("pointer", ["deleted", "names a missing file"])
def test_missing_pointer_or_its_file_resumes_from_the_newest_checkpoint(reference, tmp_path, pointer, caplog):
    out = copy_run(reference[1], tmp_path / "run")
    run_dir = RunDir(out)
    os.remove(run_dir.final_checkpoint)
    if pointer == "deleted":
        os.remove(run_dir.last_checkpoint_file)
    else:
        run_dir.set_last_checkpoint(run_dir.checkpoint(4))
        os.remove(run_dir.checkpoint(4))
    resume_in_process(out)
    newest = 4 if pointer == "deleted" else 2
    assert f"Resumed from {run_dir.checkpoint(newest)} (iteration {newest})" in caplog.text
    assert "starting from MODEL.WEIGHTS" not in caplog.text
    assert max_diff(final_weights(out), final_weights(reference[1])) <= 1e-6


def test_every_checkpoint_damaged_is_an_error_not_a_start_from_zero(reference, tmp_path):
    out = copy_run(reference[1], tmp_path / "run")
    run_dir = RunDir(out)
    for _, p in run_dir.checkpoints():
        damage(p, "garbage")
    damage(run_dir.final_checkpoint, "truncated")
    with pytest.raises(RuntimeError, match="every checkpoint is damaged.*Not starting from iteration 0"):
        resume_in_process(out)
    assert read_metrics(run_dir.metrics_file)[-1]["iteration"] == 6  # nothing was trained or overwritten


# ---------------------------------------------------------------------------------------------------------------
# ranks: one resume point, one failure ends all
# ---------------------------------------------------------------------------------------------------------------
def test_ranks_reading_different_bytes_is_an_error_naming_both_digests(reference, tmp_path, inject):
    out = copy_run(reference[1], tmp_path / "run")
    r = run(train_cmd(out, ranks=2, resume=True), env=env_with(inject, FAULT_OTHER_BYTES_RANK=1))
    assert r.returncode != 0
    assert "the ranks read different bytes" in r.stderr and "rank 1 read sha256" in r.stderr
    assert "rank 0 chose it with sha256" in r.stderr


def test_one_rank_raising_ends_every_rank_within_seconds(tmp_path, inject):
    out = str(tmp_path / "run")
    marker = tmp_path / "raised"
    r = run(train_cmd(out, ranks=2), env=env_with(inject, FAULT_RAISE_RANK=1, FAULT_RAISE_AT=1, FAULT_MARKER=marker),
            timeout=300)
    ended = time.time()
    assert r.returncode != 0
    assert "injected failure on rank 1 at step 1" in r.stderr  # the original error reaches the console
    assert ended - float(marker.read_text()) < 30
    assert not os.path.exists(RunDir(out).final_checkpoint)


# ---------------------------------------------------------------------------------------------------------------
# a run directory belongs to one run
# ---------------------------------------------------------------------------------------------------------------
def test_second_training_on_a_busy_output_dir_is_refused(tmp_path):
    out = str(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from rethink.utils.runlock import "
                               "lock_run_dir; lock_run_dir(sys.argv[1]); print('held', flush=True); time.sleep(120)",
                               out], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        cfg = load_run_config(TINY, RUN + ["OUTPUT_DIR", out])
        with pytest.raises(RunDirBusy, match=f"{out} is being written by another training \\(pid {holder.pid} on"):
            default_setup(cfg)
    finally:
        holder.kill()
        holder.wait()
    default_setup(load_run_config(TINY, RUN + ["OUTPUT_DIR", out]))  # a dead holder leaves no stuck lock


def test_resuming_with_other_settings_is_refused_naming_the_keys(reference, tmp_path):
    out = copy_run(reference[1], tmp_path / "run")
    cfg = load_run_config(TINY, RUN + ["OUTPUT_DIR", out, "SOLVER.BASE_LR", "0.01", "SOLVER.CHECKPOINT_PERIOD", "4"])
    with pytest.raises(RunDirMismatch, match="belongs to another run.*SOLVER.BASE_LR: 0.02 -> 0.01"):
        main_worker(cfg, resume=True)
    assert "CHECKPOINT_PERIOD" not in str(RunDir(out).read_fingerprint())  # operational keys don't count


def test_requeue_uses_the_saved_config_when_the_file_was_edited(reference, tmp_path, caplog):
    out = copy_run(reference[1], tmp_path / "run")
    config = tmp_path / "edited.yaml"
    config.write_text(f'_BASE_: "{TINY}"\n')
    overrides = RUN + ["OUTPUT_DIR", out]
    assert restart_config(str(config), overrides, out).SOLVER.BASE_LR == 0.02
    config.write_text(f'_BASE_: "{TINY}"\nSOLVER:\n  BASE_LR: 0.05\n')  # edited during the run
    cfg = restart_config(str(config), overrides, out)
    assert cfg.SOLVER.BASE_LR == 0.02 and cfg.SOLVER.MAX_ITER == 6
    assert "changed since this run started (SOLVER.BASE_LR: 0.02 -> 0.05): not applied" in caplog.text
    with pytest.raises(RunDirMismatch, match="SOLVER.BASE_LR: 0.02 -> 0.01"):  # resubmitted with another LR
        restart_config(str(config), overrides + ["SOLVER.BASE_LR", "0.01"], out)


# ---------------------------------------------------------------------------------------------------------------
# files: disk full, temp files, modes
# ---------------------------------------------------------------------------------------------------------------
def test_disk_full_names_the_file_and_the_space_and_keeps_the_previous(tmp_path, monkeypatch):
    path = tmp_path / "model_0000003.pth"
    atomic.atomic_torch_save({"w": torch.zeros(10)}, str(path))
    before = path.read_bytes()

    class Full:
        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, b):
            self.n += len(b)
            if self.n > 1000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(b)

        def __getattr__(self, k):
            return getattr(self.f, k)

    real = atomic.atomic_write
    monkeypatch.setattr(atomic, "atomic_write", lambda p, w, **kw: real(p, lambda f: w(Full(f)), **kw))
    with pytest.raises(atomic.DiskFullError, match=r"model_0000003.pth: no space left on the device while writing "
                                                   r"it \(0.4 MB needed, .* MB free in"):
        atomic.atomic_torch_save({"w": torch.zeros(100_000)}, str(path))
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["model_0000003.pth"]


def test_disk_full_on_a_real_small_file_system(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        atomic.atomic_torch_save({"w": torch.zeros(1000)}, str(mnt / "model_final.pth"))
        with pytest.raises(atomic.DiskFullError, match="no space left on the device.*3.8 MB needed"):
            atomic.atomic_torch_save({"w": torch.zeros(1_000_000)}, str(mnt / "model_final.pth"))
        assert os.listdir(mnt) == ["model_final.pth"]
        assert torch.load(mnt / "model_final.pth", weights_only=True)["w"].numel() == 1000
    finally:
        subprocess.run(["umount", str(mnt)])


def test_files_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        p = atomic.atomic_write_text(str(tmp_path / "config.yaml"), "x")
    finally:
        os.umask(old)
    assert os.stat(p).st_mode & 0o777 == 0o666 & ~atomic._UMASK


# ---------------------------------------------------------------------------------------------------------------
# requeue decisions
# ---------------------------------------------------------------------------------------------------------------
def test_transient_failures_requeue_up_to_the_limit_and_others_never(tmp_path):
    oom = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    lost = RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [10.0.0.2]:3")
    assert is_transient(oom) and is_transient(lost)
    assert not is_transient(ValueError("annotations.json: image 7: box has negative width"))
    assert not is_transient(FloatingPointError("Loss became non-finite at iteration 5"))
    out = str(tmp_path)
    assert retry_decision(ValueError("bad data"), out, limit=2) is None and retries_so_far(out) == 0
    assert "requeue 1 of at most 2" in retry_decision(oom, out, limit=2)
    assert "requeue 2 of at most 2" in retry_decision(lost, out, limit=2)
    assert retry_decision(oom, out, limit=2) is None
    record = json.load(open(RunDir(out).retries_file))
    assert record["retries"] == 2 and record["errors"][0].startswith("OutOfMemoryError: CUDA out of memory")


def test_train_job_requeues_transient_failures_up_to_its_limit_and_never_data_errors(tmp_path, monkeypatch):
    from rethink.cluster import jobs

    requeued = []

    class Env:  # submitit's JobEnvironment, as far as the job uses it
        def _requeue(self, countdown):
            requeued.append(countdown)

    def failing(exc):
        def launch(*args, **kwargs):
            raise exc
        return launch

    monkeypatch.setattr(jobs, "set_dist_env_from_submitit", lambda: {"RANK": 0})
    monkeypatch.setattr(jobs.submitit, "JobEnvironment", Env)
    job = jobs.TrainJob(TINY, RUN, str(tmp_path), max_retries=1)
    monkeypatch.setattr(jobs, "launch", failing(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried 2 GiB")))
    with pytest.raises(SystemExit):  # requeued: no error result for submitit to record
        job()
    assert requeued == [1] and retries_so_far(str(tmp_path)) == 1
    with pytest.raises(torch.cuda.OutOfMemoryError):  # the limit is reached: the error itself
        job()
    monkeypatch.setattr(jobs, "launch", failing(ValueError("train.json: image 7: box with negative width")))
    with pytest.raises(ValueError):
        job()
    assert requeued == [1]
