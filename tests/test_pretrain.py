"""Backbone pre-training (rethink.pretrain, tools/pretrain_backbone.py): it trains the detector's own
ResNet on an ImageFolder, writes a torchvision-named state dict + JSON metadata, and that file loads
into the detector (every body tensor, same values, same function) but not into one with another norm."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from rethink.config import load_config
from rethink.data import make_synthetic_classification
from rethink.modeling import build_model
from rethink.pretrain import (
    ResNetClassifier,
    ToDetectorInput,
    build_argument_parser,
    lr_at,
    main,
    pretrain,
    sidecar_path,
)
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
    # learning, with margin: over 8 seeds the last epoch's loss was <= 0.80x the first's (1.42..1.56 -> 1.06..1.19)
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
