"""Backbone pre-training (rethink.pretrain, tools/pretrain_backbone.py): it trains the detector's own
ResNet on an ImageFolder, writes a torchvision-named state dict + JSON metadata, and that file loads
into the detector (every body tensor, same values, same function) but not into one with another norm;
a stopped run continues with --resume to the weights of an uninterrupted one, and only with its settings."""
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rethink.config import load_config
from rethink.data import make_synthetic_classification
from rethink.modeling import build_model
from rethink.pretrain import (
    PretrainStopped,
    ResNetClassifier,
    ResumeMismatchError,
    ToDetectorInput,
    build_argument_parser,
    log_dir,
    lr_at,
    main,
    pretrain,
    sidecar_path,
    state_path,
)
from rethink.pretrain.trainer import ClassificationTrainer
from rethink.utils.rundir import read_metrics
from rethink.utils.signals import TrainingStopped
from rethink.weights import NormMismatchError, load_weights, read_weights

from .conftest import CONFIGS, ROOT, tiny_cfg

DEMO_CONFIG = CONFIGS / "demo" / "scratch_gn_r18_tiny.yaml"
BODY = "backbone.body."


def run(data, output, *extra, config=DEMO_CONFIG):
    """pretrain() in this process, as the command line would call it."""
    argv = ["--data", str(data), "--config", str(config), "--output", str(output), "--device", "cpu",
            "--log-period", "0", *extra]
    return pretrain(build_argument_parser().parse_args(argv))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic_cls")
    make_synthetic_classification(str(root), num_per_class=8)  # 32 train, 8 val images, 4 classes
    return root


@pytest.fixture(scope="module")
def gn_run(data, tmp_path_factory):
    """R18-GN (res2 64) trained for 24 iterations at 48 px: about 2 s."""
    out = tmp_path_factory.mktemp("gn") / "r18_gn.pth"
    torch.manual_seed(0)
    result = run(data, out, "--size", "48", "--epochs", "6", "--batch-size", "8", "--lr", "0.02",
                 "--min-scale", "0.35", "--seed", "0")
    return out, result


@pytest.fixture(scope="module")
def bn_run(data, tmp_path_factory):
    """The same body with BatchNorm, 2 iterations."""
    out = tmp_path_factory.mktemp("bn") / "r18_bn.pth"
    result = run(data, out, "--size", "32", "--epochs", "1", "--batch-size", "8", "--limit-batches", "2",
                 "MODEL.RESNETS.NORM", "BN")
    return out, result


def test_pretrain_gn_r18_writes_files_and_learns(gn_run):
    out, result = gn_run
    assert out.is_file() and os.path.isfile(sidecar_path(str(out))) and sidecar_path(str(out)).endswith("r18_gn.json")
    with open(sidecar_path(str(out))) as f:
        meta = json.load(f)
    assert meta == json.loads(json.dumps(result))
    assert (meta["depth"], meta["norm"], meta["stride_in_1x1"], meta["res2_out_channels"]) == (18, "GN", False, 64)
    assert meta["classes"] == ["cross", "hexagon", "ring", "star"] and meta["epochs"] == 6
    assert meta["input"]["format"] == "BGR" and meta["input"]["pixel_mean"] == [103.53, 116.28, 123.675]
    assert meta["input"]["pixel_std"] == [57.375, 57.12, 58.395]  # from the detector config
    assert isinstance(meta["val_top1"], float) and 0 <= meta["val_top1"] <= 100
    history = meta["history"]
    assert len(history) == 6 and history[-1]["iterations"] == 24
    # learning, with margin: over 8 seeds the last epoch's loss was <= 0.85x the first's (1.42..1.56 -> 1.09..1.26)
    assert history[-1]["loss"] < 0.9 * history[0]["loss"], [h["loss"] for h in history]

    state = torch.load(out, map_location="cpu", weights_only=True)
    assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
    assert {"conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "layer4.1.bn2.bias", "fc.weight",
            "fc.bias"} <= set(state)
    assert not any(k.startswith(("module.", "backbone.", "body.")) for k in state)
    assert state["fc.weight"].shape == (4, 512)
    assert read_weights(str(out)).format == "torchvision"


def test_checkpoint_loads_into_tiny_detector(gn_run):
    out, meta = gn_run
    state = torch.load(out, map_location="cpu", weights_only=True)
    detector = build_model(load_config(DEMO_CONFIG))
    report = load_weights(detector, str(out))
    assert report.format == "torchvision"
    assert not [k for k in report.missing if k.startswith(BODY)]
    assert report.mismatched == [] and report.unexpected == []
    assert sorted(report.dropped) == ["fc.bias", "fc.weight"]
    body_keys = [k for k in state if not k.startswith("fc.")]
    assert sorted(report.matched) == sorted(BODY + k for k in body_keys)
    loaded = detector.state_dict()
    for k in body_keys:
        assert torch.equal(loaded[BODY + k], state[k]), k

    # same function, not only the same names: the detector's body computes what the classifier's did
    classifier = ResNetClassifier(len(meta["classes"]), depth=18, norm="GN", res2_out=64, stride_in_1x1=False)
    classifier.load_state_dict(state)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = super(ResNetClassifier, classifier.eval()).forward(x)
        got = detector.backbone.body.eval()(x)
    for name in want:
        torch.testing.assert_close(got[name], want[name])

    # the metadata's detector_overrides give any detector config this body, input convention and weights
    cfg = load_config(CONFIGS / "scratch_gn_r50.yaml", meta["detector_overrides"])
    assert (cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.RESNETS.RES2_OUT_CHANNELS, cfg.MODEL.WEIGHTS) == (18, 64, str(out))
    assert list(cfg.MODEL.PIXEL_STD) == meta["input"]["pixel_std"] and cfg.INPUT.FORMAT == "BGR"


def test_bn_checkpoint_refused_by_gn_detector(bn_run):
    out, meta = bn_run
    assert meta["norm"] == "BN"
    state = torch.load(out, map_location="cpu", weights_only=True)
    assert "bn1.running_mean" in state and "layer1.0.bn1.running_var" in state
    detector = build_model(load_config(DEMO_CONFIG))
    before = {k: v.clone() for k, v in detector.state_dict().items()}
    with pytest.raises(NormMismatchError, match="BatchNorm weights for GroupNorm"):
        load_weights(detector, str(out))
    assert all(torch.equal(before[k], v) for k, v in detector.state_dict().items())  # nothing was loaded


def test_bn_checkpoint_loads_into_bn_detector(bn_run):
    out, _ = bn_run
    state = torch.load(out, map_location="cpu", weights_only=True)
    detector = build_model(tiny_cfg(base="pretrained_syncbn_r50.yaml"))  # SyncBN body, stem + res2 FrozenBN
    report = load_weights(detector, str(out))
    assert not [k for k in report.missing if k.startswith(BODY)] and report.mismatched == []
    loaded = detector.state_dict()
    for k in ("bn1.running_mean", "layer1.0.bn2.running_var", "layer3.0.downsample.1.weight", "layer4.1.conv2.weight"):
        assert torch.equal(loaded[BODY + k], state[k]), k


def test_deterministic_on_cpu(data, tmp_path):
    args = ("--size", "32", "--epochs", "1", "--batch-size", "8", "--limit-batches", "2", "--seed", "3")
    a = run(data, tmp_path / "a.pth", *args)
    b = run(data, tmp_path / "b.pth", *args)
    assert a["history"][0]["loss"] == b["history"][0]["loss"]
    sa, sb = (torch.load(tmp_path / f, weights_only=True) for f in ("a.pth", "b.pth"))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


RESUME_ARGS = ("--size", "32", "--epochs", "4", "--batch-size", "8", "--limit-batches", "2", "--lr", "0.02",
               "--seed", "5")  # 2 iterations per epoch, 8 in all


def resume_run(data, output, *extra):
    return run(data, output, *RESUME_ARGS, *extra)


def _assert_same_run(a, b, out_a, out_b):
    """Same weights (<= 1e-6) and the same per-epoch history and metadata, times and paths aside."""
    sa, sb = (torch.load(o, map_location="cpu", weights_only=True) for o in (out_a, out_b))
    assert sa.keys() == sb.keys()
    for k in sa:
        assert (sa[k].double() - sb[k].double()).abs().max().item() <= 1e-6, k
    untimed = [{k: v for k, v in h.items() if k != "time_s"} for h in a["history"]]
    assert untimed == [{k: v for k, v in h.items() if k != "time_s"} for h in b["history"]]
    different = {"time_s", "history", "checkpoint", "detector_overrides"}
    assert {k: v for k, v in a.items() if k not in different} == {k: v for k, v in b.items() if k not in different}


def test_resume_continues_like_an_uninterrupted_run(data, tmp_path, caplog):
    """4 epochs straight vs. stopped (a simulated preemption) then --resume: after 2 epochs, and
    mid-epoch from a --checkpoint-period state (resumed with 2 loader processes, which draw the
    same augmentations). Same weights, history and metadata each time."""
    caplog.set_level(logging.INFO, logger="rethink.pretrain")
    straight = resume_run(data, tmp_path / "straight.pth", "--resume")
    assert "no training state" in caplog.text and "starting from scratch" in caplog.text
    assert straight["iterations"] == 8 and len(straight["history"]) == 4

    # stopped at the end of epoch 2: the state is there, the output is not
    out = tmp_path / "epoch.pth"
    with pytest.raises(PretrainStopped, match="after iteration 4"):
        resume_run(data, out, "--stop-after-iteration", "4")
    assert not out.exists() and not os.path.exists(sidecar_path(str(out)))
    state = torch.load(state_path(str(out)), map_location="cpu", weights_only=True)
    assert state_path(str(out)).endswith("epoch.state.pth")
    assert (state["format"], state["version"], state["epoch"], state["batch"], state["iteration"]) == \
        ("rethink.pretrain.state", 1, 2, 0, 4)
    assert len(state["history"]) == 2 and state["settings"]["--epochs"] == 4 and state["settings"]["--seed"] == 5
    assert set(state["model"]) == set(torch.load(tmp_path / "straight.pth", weights_only=True))
    assert state["optimizer"]["state"] and "momentum_buffer" in state["optimizer"]["state"][0]
    caplog.clear()
    resumed = resume_run(data, out, "--resume")
    assert "Resuming from" in caplog.text and "2/4 epochs and 0 batches done, iteration 4" in caplog.text
    _assert_same_run(straight, resumed, tmp_path / "straight.pth", out)
    assert torch.load(state_path(str(out)), weights_only=True)["epoch"] == 4  # kept at the end

    # stopped in the middle of epoch 2 (state at iteration 3: epoch 1 done + 1 batch), resumed with workers
    out = tmp_path / "mid.pth"
    with pytest.raises(PretrainStopped):
        resume_run(data, out, "--checkpoint-period", "3", "--stop-after-iteration", "3")
    state = torch.load(state_path(str(out)), map_location="cpu", weights_only=True)
    assert (state["epoch"], state["batch"], state["iteration"], len(state["history"])) == (1, 1, 3, 1)
    assert state["epoch_sums"][2].item() == 8  # the images of the batch done in epoch 2
    resumed = resume_run(data, out, "--checkpoint-period", "3", "--resume", "--workers", "2")
    _assert_same_run(straight, resumed, tmp_path / "straight.pth", out)

    # a finished state: --resume rewrites the same output without training
    caplog.clear()
    again = resume_run(data, out, "--resume")
    assert "holds a finished run" in caplog.text
    _assert_same_run(straight, again, tmp_path / "straight.pth", out)


def test_sigterm_saves_the_state_after_the_step_and_resume_is_exact(data, tmp_path, monkeypatch):
    """SIGTERM (preemption) during iteration 3: that step finishes, the state is saved at 3, the run
    raises TrainingStopped (tools/pretrain_backbone.py exits 143); --resume ends as the straight run."""
    straight = resume_run(data, tmp_path / "straight.pth")
    step = ClassificationTrainer.run_step

    def run_step(self):
        if self.iter == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # handled by the trainer's StopRequest, not fatal
        return step(self)

    monkeypatch.setattr(ClassificationTrainer, "run_step", run_step)
    out = tmp_path / "stopped.pth"
    with pytest.raises(TrainingStopped) as stopped:
        resume_run(data, out)
    assert (stopped.value.signum, stopped.value.iteration, stopped.value.exit_code) == (signal.SIGTERM, 3, 143)
    assert torch.load(state_path(str(out)), weights_only=True)["iteration"] == 3 and not out.exists()
    monkeypatch.undo()
    resumed = resume_run(data, out, "--resume")
    _assert_same_run(straight, resumed, tmp_path / "straight.pth", out)


def test_resume_refuses_other_settings(data, tmp_path, capsys):
    out = tmp_path / "r.pth"
    args = ("--size", "32", "--epochs", "2", "--batch-size", "8", "--limit-batches", "1")
    with pytest.raises(PretrainStopped):
        run(data, out, *args, "--stop-after-iteration", "1")
    state_file = state_path(str(out))
    before = Path(state_file).read_bytes()

    with pytest.raises(ResumeMismatchError, match=r"--epochs \(state: 2, now: 3\)") as e:
        run(data, out, "--size", "32", "--epochs", "3", "--batch-size", "8", "--limit-batches", "1", "--resume")
    assert state_file in str(e.value) and "--size" not in str(e.value)
    # from the command line: a usage error naming the file and each differing setting
    for extra, named in ((["--batch-size", "4"], "--batch-size (state: 8, now: 4)"),
                         (["MODEL.RESNETS.NORM", "BN"], "MODEL.RESNETS.NORM (state: 'GN', now: 'BN')"),
                         (["--size", "40", "MODEL.RESNETS.DEPTH", "34"], "MODEL.RESNETS.DEPTH (state: 18, now: 34)")):
        argv = ["--data", str(data), "--config", str(DEMO_CONFIG), "--output", str(out), "--device", "cpu", *args,
                "--resume", *extra]
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and state_file in err and named in err, err
    assert "--size (state: 32, now: 40)" in err
    # other data under the same class folders is found once the train/ tree is read
    other = tmp_path / "other_data"
    shutil.copytree(data, other)
    os.remove(min((other / "train" / "ring").iterdir()))
    with pytest.raises(ResumeMismatchError, match=r"training images \(--data train/\) \(state: 32, now: 31\)"):
        run(other, out, *args, "--resume")
    assert Path(state_file).read_bytes() == before and not out.exists()  # nothing written


def test_input_is_the_detectors():
    """BGR order, 0..255 scale, the detector's PIXEL_MEAN/STD (given in BGR order)."""
    img = Image.fromarray(np.full((4, 5, 3), (10, 20, 200), dtype=np.uint8))  # RGB
    x = ToDetectorInput("BGR", [100.0, 110.0, 120.0], [2.0, 4.0, 8.0])(img)
    assert x.shape == (3, 4, 5) and x.dtype == torch.float32
    torch.testing.assert_close(x[:, 0, 0], torch.tensor([(200 - 100) / 2, (20 - 110) / 4, (10 - 120) / 8]))
    rgb = ToDetectorInput("RGB", [0.0, 0.0, 0.0], [1.0, 1.0, 1.0])(img)
    torch.testing.assert_close(rgb[:, 0, 0], torch.tensor([10.0, 20.0, 200.0]))


def test_lr_schedule():
    assert lr_at(0, 100, 1.0, 10, "cosine") == pytest.approx(0.1)  # warm-up starts at 0.1 x
    assert lr_at(10, 100, 1.0, 10, "cosine") == pytest.approx(0.5 * (1 + np.cos(np.pi * 0.1)))
    assert lr_at(99, 100, 1.0, 0, "cosine") < 1e-3
    assert [lr_at(i, 90, 1.0, 0, "step", [30, 60]) for i in (29, 30, 60)] == pytest.approx([1.0, 0.1, 0.01])


@pytest.mark.parametrize("extra, error", [
    (["SOLVER.BASE_LR", "0.1"], "only the keys that shape the backbone"),
    (["MODEL.RESNETS.NORM", "FrozenBN"], "cannot be pre-trained"),
    (["MODEL.RESNETS.DEPTH", "19"], "MODEL.RESNETS.DEPTH"),
])
def test_bad_arguments_are_usage_errors(data, tmp_path, capsys, extra, error):
    with pytest.raises(SystemExit) as e:
        main(["--data", str(data), "--config", str(DEMO_CONFIG), "--output", str(tmp_path / "x.pth"), *extra])
    assert e.value.code == 2 and error in capsys.readouterr().err
    assert not (tmp_path / "x.pth").exists()


def test_bad_data_folders(data, tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no val/ folder"):
        run(tmp_path, tmp_path / "x.pth")
    (tmp_path / "val" / "b").mkdir(parents=True)
    with pytest.raises(ValueError, match="same class folders"):
        run(tmp_path, tmp_path / "x.pth")


def test_cli_two_cpu_ranks_syncbn(data, tmp_path):
    """The command line end to end, 2 gloo ranks with SyncBN (statistics over both ranks)."""
    out = tmp_path / "out" / "r18_syncbn.pth"
    cmd = [sys.executable, "tools/pretrain_backbone.py", "--data", str(data), "--config", str(DEMO_CONFIG),
           "--device", "cpu", "--num-gpus", "2", "--size", "32", "--epochs", "2", "--batch-size", "8",
           "--limit-batches", "2", "--output", str(out), "MODEL.RESNETS.NORM", "SyncBN"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "epoch 2/2" in proc.stderr and "Saved" in proc.stderr
    with open(sidecar_path(str(out))) as f:
        meta = json.load(f)
    assert meta["world_size"] == 2 and meta["norm"] == "SyncBN" and meta["iterations"] == 4
    report = load_weights(build_model(tiny_cfg(base="scratch_syncbn_r50.yaml")), str(out))
    assert not [k for k in report.missing if k.startswith(BODY)] and report.mismatched == []


def test_metrics_and_logs_beside_the_output(gn_run):
    """The engine's MetricsWriter and log set-up: OUTPUT.logs/ holds log.txt, TensorBoard events and
    metrics.jsonl with every epoch end's train / val numbers (those of the metadata's history)."""
    out, result = gn_run
    logs = Path(log_dir(str(out)))
    assert logs.name == "r18_gn.logs" and (logs / "log.txt").is_file()
    assert any(p.name.startswith("events.out.tfevents") for p in logs.iterdir())
    metrics = read_metrics(str(logs / "metrics.jsonl"))
    assert [m["iteration"] for m in metrics] == [h["iterations"] for h in result["history"]]
    for m, h in zip(metrics, result["history"]):
        assert (m["epoch"], m["train_loss"], m["val_top1"], m["lr"]) == (h["epoch"], h["loss"], h["val_top1"], h["lr"])
        assert {"loss", "top1", "time", "data_time"} <= set(m)
