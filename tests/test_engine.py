"""Training engine end to end on the tiny synthetic config (CPU): train + periodic eval + metrics,
checkpoint/resume equality, non-finite loss, eval-only, 2-process gloo DDP, fail-fast on missing COCO."""
import os
import subprocess
import sys

import pytest
import torch

from rethink.engine import Trainer, load_run_config, main_worker, read_metrics
from rethink.engine.hooks import HookBase

from .conftest import CONFIGS, ROOT

pytestmark = pytest.mark.usefixtures("isolated_cache")

TINY = str(CONFIGS / "demo" / "scratch_gn_r18_tiny.yaml")
# 12 iterations at batch 2, LR drops at 8 and 10, checkpoint and eval every 6
SHORT = ["SOLVER.IMS_PER_BATCH", "2", "SOLVER.REFERENCE_IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "12",
         "SOLVER.STEPS", "(8, 10)", "SOLVER.WARMUP_ITERS", "4", "SOLVER.CHECKPOINT_PERIOD", "6",
         "TEST.EVAL_PERIOD", "6", "SEED", "3"]




def cfg_for(out, *extra):
    return load_run_config(TINY, SHORT + ["OUTPUT_DIR", str(out), *extra])


def weights(path):
    return torch.load(path, weights_only=True)["model"]


def assert_same_weights(a, b, tol=1e-6):
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a if a[k].numel())
    assert worst <= tol, worst


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    main_worker(cfg_for(out))
    return out


def test_train_writes_config_checkpoints_and_metrics_with_ap(straight_run):
    out = straight_run
    for name in ("config.yaml", "log.txt", "metrics.jsonl", "model_0000006.pth", "model_final.pth", "last_checkpoint"):
        assert (out / name).is_file(), name
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    assert any(p.name.startswith("events.out.tfevents") for p in out.iterdir())
    metrics = read_metrics(str(out / "metrics.jsonl"))
    evals = [m for m in metrics if "bbox/AP" in m]
    assert [m["iteration"] for m in evals] == [6, 12]
    assert all(0 <= m["bbox/AP"] <= 100 and 0 <= m["segm/AP"] <= 100 for m in evals)
    assert {"bbox/AP50", "bbox/AP75", "segm/AP50", "segm/APs"} <= set(evals[-1])
    last = metrics[-1]
    assert last["iteration"] == 12 and last["lr"] == pytest.approx(0.02 * 0.01)  # after both drops
    assert {"total_loss", "loss_mask", "loss_rpn_cls", "time", "data_time"} <= set(last)
    ckpt = torch.load(out / "model_0000006.pth", weights_only=True)
    assert ckpt["iteration"] == 6 and {"model", "optimizer", "rng", "seed"} <= set(ckpt)


class Crash(HookBase):
    def __init__(self, at):
        self.at = at

    def after_step(self):
        if self.trainer.completed == self.at:
            raise KeyboardInterrupt("preempted")


def test_resume_equals_uninterrupted(straight_run, tmp_path):
    cfg = cfg_for(tmp_path)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=True)
    trainer.register_hooks(trainer.build_hooks() + [Crash(at=9)])
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000006.pth"
    trainer = Trainer(cfg)
    assert trainer.resume_or_load(resume=True) == 6
    trainer.train()
    assert_same_weights(weights(tmp_path / "model_final.pth"), weights(straight_run / "model_final.pth"))
    # the file repeats iterations 7..9 (run again after the crash); after dedupe each iteration is
    # there once, with the straight run's values (plus the crash-time line at 9)
    ours = read_metrics(str(tmp_path / "metrics.jsonl"))
    theirs = read_metrics(str(straight_run / "metrics.jsonl"))
    assert [m["iteration"] for m in ours] == [6, 9, 12] and [m["iteration"] for m in theirs] == [6, 12]
    assert ours[0]["bbox/AP"] == pytest.approx(theirs[0]["bbox/AP"], abs=1e-6)
    assert ours[-1]["bbox/AP"] == pytest.approx(theirs[-1]["bbox/AP"], abs=1e-6)


def test_prefix_does_not_depend_on_max_iter(straight_run, tmp_path):
    """A shorter run with the same LR steps passes through the same state: the fork property."""
    main_worker(cfg_for(tmp_path, "SOLVER.MAX_ITER", "11", "SOLVER.CHECKPOINT_PERIOD", "6", "TEST.EVAL_PERIOD", "0"))
    assert_same_weights(weights(tmp_path / "model_0000006.pth"), weights(straight_run / "model_0000006.pth"))


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path):
    cfg = cfg_for(tmp_path, "SOLVER.CHECKPOINT_PERIOD", "2", "TEST.EVAL_PERIOD", "0")
    trainer = Trainer(cfg)
    model = trainer.model
    real_forward = model.forward

    def forward(images, targets=None):
        losses = real_forward(images, targets)
        if trainer.iter == 4:
            losses["loss_mask"] = losses["loss_mask"] * float("nan")
        return losses

    model.forward = forward
    with pytest.raises(FloatingPointError, match=r"non-finite at iteration 5: .*loss_mask=nan"):
        trainer.train()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000004.pth"
    assert torch.load(tmp_path / "model_0000004.pth", weights_only=True)["iteration"] == 4
    assert not list(tmp_path.glob("*.tmp.*"))


def test_eval_only_reproduces_final_ap(straight_run, tmp_path):
    cfg = load_run_config(TINY, SHORT + ["OUTPUT_DIR", str(tmp_path), "MODEL.WEIGHTS",
                                         str(straight_run / "model_final.pth")])
    results = main_worker(cfg, eval_only=True)
    final = read_metrics(str(straight_run / "metrics.jsonl"))[-1]
    assert results["synthetic_coco_val"]["bbox"]["AP"] == pytest.approx(final["bbox/AP"], abs=1e-6)
    assert results["synthetic_coco_val"]["segm"]["AP"] == pytest.approx(final["segm/AP"], abs=1e-6)


def run_tool(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, str(ROOT / "tools" / "train.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


SYNCBN = ["MODEL.RESNETS.NORM", "SyncBN", "MODEL.FPN.NORM", "SyncBN", "MODEL.ROI_BOX_HEAD.NORM", "SyncBN",
          "MODEL.ROI_MASK_HEAD.NORM", "SyncBN"]


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["GN", "SyncBN"])
def test_two_process_gloo_ddp_trains_and_evaluates(tmp_path, norm):
    out = tmp_path / "ddp"
    r = run_tool("--config", TINY, "--num-gpus", "2", *SHORT, "SOLVER.MAX_ITER", "6", "SOLVER.STEPS", "(4, 5)",
                 *(SYNCBN if norm == "SyncBN" else []), "OUTPUT_DIR", str(out), env={**os.environ})
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = read_metrics(str(out / "metrics.jsonl"))
    assert metrics[-1]["iteration"] == 6 and metrics[-1]["world_size"] == 2
    assert "bbox/AP" in metrics[-1] and "segm/AP" in metrics[-1]
    assert "world size 2" in (out / "log.txt").read_text()
    assert (out / "log.txt.rank1").exists()


def test_missing_coco_fails_fast_naming_files(tmp_path):
    env = {**os.environ, "RETHINK_DATASETS": str(tmp_path / "datasets")}
    env.pop("DETECTRON2_DATASETS", None)
    r = run_tool("--config", str(CONFIGS / "scratch_gn_r50.yaml"), env=env, timeout=120)
    assert r.returncode != 0
    assert str(tmp_path / "datasets" / "coco" / "annotations" / "instances_train2017.json") in r.stderr
    assert "RETHINK_DATASETS" in r.stderr


def test_precise_bn_recomputes_statistics_only(tmp_path):
    """SyncBN config with TEST.PRECISE_BN: same weights as without it, different BN statistics."""
    bn = SYNCBN + ["SOLVER.MAX_ITER", "6", "SOLVER.STEPS", "(4, 5)",
          "TEST.EVAL_PERIOD", "0", "TEST.PRECISE_BN.NUM_ITER", "3"]
    main_worker(cfg_for(tmp_path / "plain", *bn))
    main_worker(cfg_for(tmp_path / "precise", *bn, "TEST.PRECISE_BN.ENABLED", "True"))
    a, b = weights(tmp_path / "plain" / "model_final.pth"), weights(tmp_path / "precise" / "model_final.pth")
    params = [k for k in a if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    stats = [k for k in a if k.endswith("running_var")]
    assert stats and all(torch.equal(a[k], b[k]) for k in params)
    assert sum(not torch.allclose(a[k], b[k]) for k in stats) > len(stats) // 2


def test_start_up_logs_the_resolved_schedule(tmp_path, caplog):
    """IMS_PER_BATCH 2 with MAX_ITER 6 on a config written for 16 images trains 48 iterations: said."""
    caplog.set_level("INFO", logger="rethink.engine.defaults")
    cfg = load_run_config(str(CONFIGS / "scratch_gn_r50.yaml"),
                          ["SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "6", "OUTPUT_DIR", str(tmp_path)])
    assert cfg.SOLVER.MAX_ITER == 48
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("schedule:")]
    assert lines == ["schedule: batch 2 (reference 16: LR x0.125, iteration counts x8), LR 0.0025, MAX_ITER 48, "
                     "STEPS (32, 40), warm-up 8000, no periodic eval, checkpoint every 40000"]


def test_first_iterations_are_logged_with_their_time(straight_run):
    log = (straight_run / "log.txt").read_text()
    for k in (1, 2, 3):
        assert f"iteration {k}/12 took " in log
    assert "iteration 4/12 took" not in log
