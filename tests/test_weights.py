"""MODEL.WEIGHTS loading (rethink.weights): path resolution, the four file formats (our checkpoints,
torchvision, Caffe2 / Detectron pkl, detectron2 model files), norm-kind refusal, and that no file can
run code while being read. Every file is written here from a small model's own weights, renamed by
hand (independently of the loader's renaming code)."""
import os
import pickle
import random
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision

from rethink.config import ConfigError, load_config
from rethink.modeling import build_model
from rethink.modeling.backbone import ResNet
from rethink.weights import (
    ENV_VAR,
    NormMismatchError,
    UnsafeFileError,
    WeightsError,
    load_weights,
    read_weights,
    resolve_weights_path,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# R50-FPN Mask R-CNN, narrow everywhere (every width a multiple of 32 for GroupNorm), 3 classes
TINY_R50 = [
    "MODEL.RESNETS.DEPTH", "50", "MODEL.RESNETS.STEM_OUT_CHANNELS", "32", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
    "MODEL.RESNETS.WIDTH_PER_GROUP", "32", "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.CONV_DIM", "32",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "64", "MODEL.ROI_MASK_HEAD.CONV_DIM", "32", "MODEL.ROI_HEADS.NUM_CLASSES", "3",
]
TINY_R18 = ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.FPN.OUT_CHANNELS", "32",
            "MODEL.ROI_BOX_HEAD.CONV_DIM", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
            "MODEL.ROI_MASK_HEAD.CONV_DIM", "32", "MODEL.ROI_HEADS.NUM_CLASSES", "3"]


def tiny_model(config: str, *overrides, r18=False):
    return build_model(load_config(CONFIGS / config, (TINY_R18 if r18 else TINY_R50) + list(overrides)))


def tiny_body(norm: str, stride_in_1x1: bool = True, freeze_at: int = 0) -> ResNet:
    return ResNet(depth=50, norm=norm, stem_out=32, res2_out=64, width_per_group=32,
                  stride_in_1x1=stride_in_1x1, freeze_at=freeze_at)


def randomized(state: dict, seed: int = 1) -> dict:
    """The state dict with every float tensor replaced by random values (so equality means something);
    running_var kept positive."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in state.items():
        if v.is_floating_point():
            r = torch.randn(v.shape, generator=g)
            out[k] = r.abs() + 0.5 if k.endswith("running_var") else r
        else:
            out[k] = v.clone()
    return out


def body_state(model: nn.Module) -> dict:
    body = model.backbone.body if hasattr(model, "backbone") else model
    return body.state_dict()


def write_pickle(path: Path, obj, protocol: int = pickle.HIGHEST_PROTOCOL) -> str:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return str(path)


# --- renaming by hand: our body names -> Caffe2 / detectron2 names ----------------------------------

def caffe2_blobs(state: dict, norm: str) -> dict:
    """Caffe2 ImageNet blobs ("bn": MSRA scale/bias only, "gn": FAIR GN) from a body state dict."""
    blobs = {}
    for k, v in state.items():
        parts = k.split(".")
        if parts[-1] in ("running_mean", "running_var", "num_batches_tracked"):
            continue
        sb = {"weight": "s", "bias": "b"}.get(parts[-1])
        if parts[0] == "conv1":
            name = "conv1_w"
        elif parts[0] == "bn1":
            name = ("res_conv1_bn_" if norm == "bn" else "conv1_gn_") + sb
        else:
            prefix = f"res{int(parts[0][len('layer'):]) + 1}_{parts[1]}_"
            if parts[2] == "downsample":
                branch, is_norm = "branch1", parts[3] == "1"
            else:
                branch, is_norm = "branch2" + "abc"[int(parts[2][-1]) - 1], parts[2].startswith("bn")
            name = prefix + branch + (f"_{norm}_{sb}" if is_norm else "_w")
        blobs[name] = v.numpy().astype(np.float32)
    return blobs


def detectron2_names(state: dict) -> dict:
    """detectron2's Mask R-CNN names (and background-last cls_score) for our full model's state dict."""
    def plus(n, fmt):
        return lambda m: fmt.format(int(m[1]) + n, *m.groups()[1:])

    renames = [  # applied in turn
        (r"^backbone\.body\.conv1\.", "backbone.bottom_up.stem.conv1."),
        (r"^backbone\.body\.bn1\.", "backbone.bottom_up.stem.conv1.norm."),
        (r"^backbone\.body\.layer(\d)\.", plus(1, "backbone.bottom_up.res{}.")),
        (r"^(backbone\.bottom_up\.res\d\.\d+)\.bn(\d)\.", r"\1.conv\2.norm."),
        (r"\.downsample\.0\.", ".shortcut."),
        (r"\.downsample\.1\.", ".shortcut.norm."),
        (r"^backbone\.fpn\.inner_blocks\.(\d)\.", plus(2, "backbone.fpn_lateral{}.")),
        (r"^backbone\.fpn\.layer_blocks\.(\d)\.", plus(2, "backbone.fpn_output{}.")),
        (r"^(backbone\.fpn_\w+)\.0\.", r"\1."),
        (r"^(backbone\.fpn_\w+)\.1\.", r"\1.norm."),
        (r"^rpn\.head\.conv\.0\.0\.", "proposal_generator.rpn_head.conv."),
        (r"^rpn\.head\.cls_logits\.", "proposal_generator.rpn_head.objectness_logits."),
        (r"^rpn\.head\.bbox_pred\.", "proposal_generator.rpn_head.anchor_deltas."),
        (r"^roi_heads\.box_head\.5\.", "roi_heads.box_head.fc1."),  # 4 convs, Flatten, then fc1
        (r"^roi_heads\.box_head\.([0-3])\.", plus(1, "roi_heads.box_head.conv{}.")),
        (r"^roi_heads\.mask_head\.(\d)\.", plus(1, "roi_heads.mask_head.mask_fcn{}.")),
        (r"^(roi_heads\.\w+_head\.(conv|mask_fcn)\d)\.0\.", r"\1."),
        (r"^(roi_heads\.\w+_head\.(conv|mask_fcn)\d)\.1\.", r"\1.norm."),
        (r"^roi_heads\.mask_predictor\.conv5_mask\.", "roi_heads.mask_head.deconv."),
        (r"^roi_heads\.mask_predictor\.mask_fcn_logits\.", "roi_heads.mask_head.predictor."),
    ]
    out = {}
    for k, v in state.items():
        name = k
        for pattern, repl in renames:
            name = re.sub(pattern, repl, name)
        if "cls_score" in k:  # detectron2: background last
            v = torch.cat([v[1:], v[:1]], dim=0)
        out[name] = v.numpy()
    return out


def assert_loaded(model: nn.Module, expected: dict, keys=None):
    state = model.state_dict()
    for k in keys or expected:
        assert torch.equal(state[k], expected[k].to(state[k].dtype)), k


# --- path resolution --------------------------------------------------------------------------------

def test_resolve_detectron2_and_catalog_paths(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    for rel in ("ImageNetPretrained/MSRA/R-50.pkl", "ImageNetPretrained/FAIR/R-50-GN.pkl"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    msra = str(tmp_path / "ImageNetPretrained/MSRA/R-50.pkl")
    gn = str(tmp_path / "ImageNetPretrained/FAIR/R-50-GN.pkl")
    assert resolve_weights_path("detectron2://ImageNetPretrained/MSRA/R-50.pkl") == msra
    assert resolve_weights_path("detectron2://ImageNetPretrained/FAIR/R-50-GN.pkl") == gn
    assert resolve_weights_path("catalog://ImageNetPretrained/MSRA/R-50") == msra
    assert resolve_weights_path("catalog://ImageNetPretrained/FAIR/R-50-GN") == gn
    assert resolve_weights_path(msra) == msra  # plain path
    monkeypatch.chdir(tmp_path)
    assert resolve_weights_path("ImageNetPretrained/MSRA/R-50.pkl") == msra  # relative plain path
    monkeypatch.delenv(ENV_VAR)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    expected = str(tmp_path / "home/.cache/rethink/weights/ImageNetPretrained/MSRA/R-50.pkl")
    assert resolve_weights_path("detectron2://ImageNetPretrained/MSRA/R-50.pkl", must_exist=False) == expected
    with pytest.raises(WeightsError, match="catalog"):
        resolve_weights_path("catalog://Caffe2Detectron/COCO/35857197/e2e_faster_rcnn_R-50-C4_1x")
    with pytest.raises(WeightsError, match="not downloaded"):
        resolve_weights_path("https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/MSRA/R-50.pkl")


def test_missing_zoo_file_names_path_env_var_and_model_zoo(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "weights"))
    with pytest.raises(FileNotFoundError) as e:
        resolve_weights_path("detectron2://ImageNetPretrained/FAIR/R-50-GN.pkl")
    msg = str(e.value)
    assert str(tmp_path / "weights/ImageNetPretrained/FAIR/R-50-GN.pkl") in msg
    assert ENV_VAR in msg and "ImageNetPretrained model zoo" in msg and "cannot download" in msg
    with pytest.raises(FileNotFoundError, match="R-50.pkl"):
        load_weights(tiny_body("FrozenBN"), "catalog://ImageNetPretrained/MSRA/R-50")
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nope.pth"))):
        load_weights(tiny_body("FrozenBN"), str(tmp_path / "nope.pth"))


# --- formats ------------------------------------------------------------------------------------------

def test_own_checkpoint_with_solver_and_rng_state_loads_everything(tmp_path):
    source = tiny_model("scratch_syncbn_r50.yaml")
    opt = torch.optim.SGD([p for p in source.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    sum(p.sum() for p in source.parameters() if p.requires_grad).backward()
    opt.step()
    state = randomized(source.state_dict())
    path = tmp_path / "model_0000007.pth"
    torch.save({"model": state, "optimizer": opt.state_dict(), "iteration": 7,
                "rng": {"torch": torch.get_rng_state(), "numpy": (torch.arange(624), 3, 0, 0.0),
                        "python": random.getstate()}}, path)
    target = tiny_model("scratch_syncbn_r50.yaml")
    report = load_weights(target, str(path))
    assert report.format == "checkpoint"
    assert report.matched == sorted(target.state_dict())
    assert report.missing == [] and report.unexpected == [] and report.mismatched == []
    assert_loaded(target, state)


def test_torchvision_resnet18_into_r18_fpn(tmp_path):
    state = randomized(torchvision.models.resnet18().state_dict())
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    model = tiny_model("scratch_syncbn_r50.yaml", "MODEL.BACKBONE.FREEZE_AT", "2", r18=True)  # FrozenBN stem+res2
    report = load_weights(model, str(path))
    assert report.format == "torchvision"
    body = body_state(model)
    assert len(report.matched) == len(body)
    assert sorted(report.matched) == sorted("backbone.body." + k for k in body)
    assert {"fc.weight", "fc.bias"} <= set(report.dropped)
    assert "bn1.num_batches_tracked" in report.dropped  # the stem is FrozenBN: no counter to load into
    assert report.unexpected == [] and report.mismatched == []
    assert all(not k.startswith("backbone.body.") for k in report.missing)
    assert_loaded(model, {"backbone.body." + k: v for k, v in state.items() if k in body})
    assert torch.equal(model.backbone.body.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])


def test_torchvision_resnet50_into_bare_body(tmp_path):
    state = randomized(torchvision.models.resnet50().state_dict())
    path = tmp_path / "resnet50.pth"
    torch.save(state, path)
    body = ResNet(depth=50, norm="BN", stride_in_1x1=False, freeze_at=0)
    report = load_weights(body, str(path))
    assert sorted(report.matched) == sorted(body.state_dict())
    assert report.dropped == ["fc.bias", "fc.weight"] and report.missing == [] and report.unexpected == []
    assert_loaded(body, {k: v for k, v in state.items() if not k.startswith("fc.")})


def test_legacy_torch_file_format(tmp_path):
    """torch.save's pre-1.6 (non-zip) format still goes through torch.load(weights_only=True)."""
    body = ResNet(depth=18, norm="BN", res2_out=64, freeze_at=0)
    state = randomized(torchvision.models.resnet18().state_dict())
    path = tmp_path / "resnet18_legacy.pth"
    torch.save(state, path, _use_new_zipfile_serialization=False)
    report = load_weights(body, str(path))
    assert report.format == "torchvision" and sorted(report.matched) == sorted(body.state_dict())
    assert_loaded(body, {k: v for k, v in state.items() if not k.startswith("fc.")})


def test_caffe2_msra_bn_pkl_sets_running_stats_and_drops_classifier(tmp_path):
    teacher = randomized(body_state(tiny_body("FrozenBN")))
    blobs = caffe2_blobs(teacher, "bn")
    blobs["fc1000_w"] = np.zeros((1000, 512), np.float32)
    blobs["fc1000_b"] = np.zeros(1000, np.float32)
    blobs["res2_0_branch2a_w_momentum"] = np.zeros(1, np.float32)
    path = write_pickle(tmp_path / "R-50.pkl", {"blobs": blobs})
    model = tiny_model("pretrained_syncbn_r50.yaml", "MODEL.WEIGHTS", "")  # FREEZE_AT 2: FrozenBN, then SyncBN
    report = load_weights(model, path)
    assert report.format == "caffe2"
    body = body_state(model)
    body_tensors = [k for k in body if not k.endswith("num_batches_tracked")]
    assert len(report.matched) == len(body_tensors)
    assert report.dropped == ["fc1000_b", "fc1000_w", "res2_0_branch2a_w_momentum"]
    assert report.unexpected == [] and report.mismatched == []
    b = model.backbone.body
    assert torch.equal(b.conv1.weight, teacher["conv1.weight"])
    assert torch.equal(b.bn1.weight, torch.from_numpy(blobs["res_conv1_bn_s"]))  # FrozenBN stem
    assert torch.equal(b.layer3[0].bn2.bias, torch.from_numpy(blobs["res4_0_branch2b_bn_b"]))  # SyncBN
    assert torch.equal(b.layer4[0].downsample[0].weight, torch.from_numpy(blobs["res5_0_branch1_w"]))
    assert torch.equal(b.layer4[0].downsample[1].weight, torch.from_numpy(blobs["res5_0_branch1_bn_s"]))
    for name, module in b.named_modules():
        if hasattr(module, "running_mean"):
            assert torch.equal(module.running_mean, torch.zeros_like(module.running_mean)), name
            assert torch.equal(module.running_var, torch.ones_like(module.running_var)), name
    assert report.sources["backbone.body.layer2.1.bn3.running_var"] == "res3_1_branch2c_bn_s"


def _py2_pickle(arrays: dict) -> bytes:
    """The bytes Python 2's cPickle.dump(arrays, f, 2) writes for {str: float32 array} (numpy 1 names,
    str as BINSTRING), built by hand since Python 3 cannot write them."""
    def s(b: bytes) -> bytes:
        return b"T" + struct.pack("<I", len(b)) + b

    def i(n: int) -> bytes:
        return b"J" + struct.pack("<i", n)

    out = b"\x80\x02}("
    for key, a in arrays.items():
        a = np.ascontiguousarray(a, dtype="<f4")
        out += s(key.encode())
        out += b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + i(0) + b"\x85" + s(b"b") + b"\x87R"
        out += b"(" + i(1) + b"(" + b"".join(i(d) for d in a.shape) + b"t"
        out += b"cnumpy\ndtype\n" + s(b"f4") + i(0) + i(1) + b"\x87R"
        out += b"(" + i(3) + s(b"<") + b"NNN" + i(-1) + i(-1) + i(0) + b"tb"
        out += b"\x89" + s(a.tobytes()) + b"tb"
    return out + b"u."


def test_caffe2_gn_python2_pickle_into_gn_model(tmp_path):
    teacher = randomized(body_state(tiny_body("GN")))
    blobs = caffe2_blobs(teacher, "gn")
    path = tmp_path / "R-50-GN.pkl"
    path.write_bytes(_py2_pickle(blobs))
    model = tiny_model("pretrained_gn_r50.yaml", "MODEL.WEIGHTS", "")
    report = load_weights(model, str(path))
    assert report.format == "caffe2"
    assert len(report.matched) == len(body_state(model)) == len(blobs)
    assert report.unexpected == [] and report.dropped == []
    assert_loaded(model, {"backbone.body." + k: v for k, v in teacher.items()})
    assert torch.equal(model.backbone.body.bn1.weight, torch.from_numpy(blobs["conv1_gn_s"]))


def test_detectron2_model_pkl_maps_body_fpn_rpn_and_heads(tmp_path):
    source = tiny_model("scratch_gn_r50.yaml")
    state = randomized(source.state_dict())
    d2 = detectron2_names(state)
    assert {"backbone.fpn_lateral5.norm.bias", "proposal_generator.rpn_head.anchor_deltas.weight",
            "roi_heads.box_head.conv4.norm.weight", "roi_heads.box_head.fc1.weight",
            "roi_heads.mask_head.mask_fcn4.norm.weight", "roi_heads.mask_head.deconv.weight"} <= set(d2)
    d2["pixel_mean"] = np.zeros((3, 1, 1), np.float32)
    path = write_pickle(tmp_path / "model_final.pkl", {"model": d2, "__author__": "test"})
    target = tiny_model("scratch_gn_r50.yaml")
    report = load_weights(target, path)
    assert report.format == "detectron2"
    assert report.matched == sorted(target.state_dict())
    assert report.missing == [] and report.mismatched == [] and report.unexpected == ["pixel_mean"]
    assert_loaded(target, state)  # cls_score's background row moved back to index 0
    cls = target.roi_heads.box_predictor.cls_score.weight
    assert torch.equal(cls[0], torch.from_numpy(d2["roi_heads.box_predictor.cls_score.weight"][-1]))
    assert report.sources["backbone.body.layer1.0.downsample.1.weight"] == \
        "backbone.bottom_up.res2.0.shortcut.norm.weight"


def test_detectron2_converted_body_without_prefix(tmp_path):
    """detectron2's convert-torchvision-to-d2.py writes `res2.0.conv1.norm.weight` (no bottom_up prefix)."""
    teacher = randomized(body_state(tiny_body("FrozenBN")))
    d2 = {k[len("backbone.bottom_up."):]: v
          for k, v in detectron2_names({"backbone.body." + k: v for k, v in teacher.items()}).items()}
    d2["linear.weight"] = np.zeros((10, 512), np.float32)
    path = tmp_path / "r50.pth"
    torch.save({"model": {k: torch.from_numpy(v) for k, v in d2.items()}, "__author__": "torchvision"}, path)
    body = tiny_body("FrozenBN", freeze_at=0)
    report = load_weights(body, str(path))
    assert report.format == "detectron2" and report.dropped == ["linear.weight"]
    assert sorted(report.matched) == sorted(body.state_dict())
    assert_loaded(body, teacher)


def test_shape_mismatches_are_skipped_and_listed(tmp_path):
    source = tiny_model("scratch_gn_r50.yaml")
    state = randomized(source.state_dict())
    path = tmp_path / "ckpt.pth"
    torch.save({"model": state}, path)
    target = tiny_model("scratch_gn_r50.yaml", "MODEL.ROI_HEADS.NUM_CLASSES", "5")
    before = target.roi_heads.box_predictor.cls_score.weight.clone()
    report = load_weights(target, str(path))
    mismatched = {k: (a, b) for k, a, b in report.mismatched}
    assert mismatched["roi_heads.box_predictor.cls_score.weight"] == ((4, 64), (6, 64))
    assert set(mismatched) == {f"roi_heads.{p}.{w}" for p in ("box_predictor.cls_score", "box_predictor.bbox_pred",
                                                              "mask_predictor.mask_fcn_logits")
                               for w in ("weight", "bias")}
    assert sorted(report.missing) == sorted(mismatched)
    assert len(report.matched) == len(state) - 6
    assert torch.equal(target.roi_heads.box_predictor.cls_score.weight, before)
    assert_loaded(target, state, keys=report.matched)


def test_file_matching_nothing_raises(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"model": {"encoder.layers.0.weight": torch.zeros(3)}}, path)
    with pytest.raises(WeightsError) as e:
        load_weights(tiny_body("FrozenBN"), str(path))
    msg = str(e.value)
    assert str(path) in msg and "encoder.layers.0.weight" in msg and "conv1.weight" in msg


# --- norm kinds ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("file_norm,model_norm,expected", ids=["bn-into-GN", "gn-into-FrozenBN", "gn-into-SyncBN",
                                                                "bn-into-no-norm"], argvalues=[
    ("bn", "GN", r"BatchNorm weights for GroupNorm layers.*res_conv1_bn_s.*NORM is FrozenBN, BN or SyncBN"),
    ("gn", "FrozenBN", r"GroupNorm weights for FrozenBatchNorm2d layers.*conv1_gn_s.*MODEL\.RESNETS\.NORM is GN"),
    ("gn", "SyncBN", r"GroupNorm weights for SyncBatchNorm layers.*MODEL\.RESNETS\.NORM is GN"),
    ("bn", "", r"BatchNorm weights for no-norm \(Identity\) layers"),
])
def test_bn_gn_mismatch_is_refused(tmp_path, file_norm, model_norm, expected):
    teacher = randomized(body_state(tiny_body("FrozenBN" if file_norm == "bn" else "GN")))
    path = write_pickle(tmp_path / "w.pkl", caffe2_blobs(teacher, file_norm))
    body = tiny_body(model_norm)
    before = {k: v.clone() for k, v in body.state_dict().items()}
    with pytest.raises(NormMismatchError, match=expected):
        load_weights(body, path)
    assert_loaded(body, before)  # nothing was loaded


def test_torchvision_bn_weights_refused_for_gn_fpn_model(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(NormMismatchError, match=r"bn1\.weight.*MODEL\.RESNETS\.NORM is FrozenBN, BN or SyncBN"):
        load_weights(tiny_model("scratch_gn_r50.yaml", r18=True), str(path))


def test_stride_in_1x1_hint_for_msra_weights(tmp_path, caplog):
    path = write_pickle(tmp_path / "R-50.pkl", caffe2_blobs(body_state(tiny_body("FrozenBN")), "bn"))
    with caplog.at_level("WARNING", logger="rethink.weights"):
        load_weights(tiny_body("FrozenBN", stride_in_1x1=True), path)
    assert "STRIDE_IN_1X1" not in caplog.text
    with caplog.at_level("WARNING", logger="rethink.weights"):
        load_weights(tiny_body("FrozenBN", stride_in_1x1=False), path)
    assert "set MODEL.RESNETS.STRIDE_IN_1X1 True" in caplog.text


# --- files that try to run code ---------------------------------------------------------------------------

class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _RunsEval:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
@pytest.mark.parametrize("payload", [_RunsShell, _RunsEval])
def test_malicious_pkl_is_refused_without_running(tmp_path, protocol, payload):
    marker = tmp_path / "pwned"
    path = write_pickle(tmp_path / "R-50.pkl", {"blobs": {"conv1_w": payload(marker)}}, protocol=protocol)
    refused = r"R-50\.pkl: refused to unpickle the global (posix\.system|(__builtin__|builtins)\.eval)"
    with pytest.raises(UnsafeFileError, match=refused):
        read_weights(path)
    with pytest.raises(UnsafeFileError):
        load_weights(tiny_body("FrozenBN"), path)
    assert not marker.exists()


def test_malicious_pth_is_refused_by_weights_only_load(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pth"
    torch.save({"model": {"backbone.body.conv1.weight": _RunsShell(marker)}}, path)
    with pytest.raises(UnsafeFileError, match=r"model\.pth.*weights_only=True\) refused the global posix\.system"):
        load_weights(tiny_body("FrozenBN"), str(path))
    assert not marker.exists()


# --- a file for another backbone: refused unless MODEL.WEIGHTS_MIN_BACKBONE_MATCH allows a partial load ------

@pytest.mark.parametrize("depth,body_matched,body_total", [("34", 60, 108), ("50", 9, 159)])
def test_other_depth_checkpoint_is_refused(tmp_path, depth, body_matched, body_total):
    """Was: an R18 checkpoint loaded into R34/R50 filled part of the backbone with only a warning."""
    path = tmp_path / "r18.pth"
    torch.save({"model": tiny_model("scratch_gn_r50.yaml", r18=True).state_dict()}, path)
    target = tiny_model("scratch_gn_r50.yaml", "MODEL.RESNETS.DEPTH", "34", r18=True) if depth == "34" \
        else tiny_model("scratch_gn_r50.yaml")
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(WeightsError) as e:
        load_weights(target, str(path))
    msg = str(e.value)
    assert msg.startswith(f"{path}: this checkpoint file fills {body_matched} of the model's {body_total} backbone "
                          f"tensors"), msg
    assert "less than MODEL.WEIGHTS_MIN_BACKBONE_MATCH = 1" in msg and "nothing was loaded" in msg
    example = "not in the file: backbone.body.layer" if depth == "34" else "different shape: backbone.body.conv1"
    assert example in msg, msg
    assert_loaded(target, before)  # nothing was loaded
    # allowed on purpose: the partial load goes ahead (the key, as load_config gives it)
    cfg = load_config(CONFIGS / "scratch_gn_r50.yaml", ["MODEL.WEIGHTS_MIN_BACKBONE_MATCH", "0.0"])
    report = load_weights(target, str(path), cfg.MODEL.WEIGHTS_MIN_BACKBONE_MATCH)
    assert sum(k.startswith("backbone.body.") for k in report.matched) == body_matched


def test_min_backbone_match_key():
    assert load_config(CONFIGS / "scratch_gn_r50.yaml").MODEL.WEIGHTS_MIN_BACKBONE_MATCH == 1.0
    with pytest.raises(ConfigError, match=r"command line: MODEL\.WEIGHTS_MIN_BACKBONE_MATCH = 1\.5: must be a "):
        load_config(CONFIGS / "scratch_gn_r50.yaml", ["MODEL.WEIGHTS_MIN_BACKBONE_MATCH", "1.5"])


def test_deformable_model_loads_a_plain_backbone(tmp_path):
    """The offset convs of DEFORM_ON_PER_STAGE are in no ImageNet file: a plain R50 body fills every
    other backbone tensor and loads at MIN_BACKBONE_MATCH 1.0; the offsets stay zero (detectron2's init)."""
    path = tmp_path / "r50.pth"
    torch.save({"model": tiny_model("scratch_gn_r50.yaml").state_dict()}, path)
    target = tiny_model("scratch_gn_r50.yaml", "MODEL.RESNETS.DEFORM_ON_PER_STAGE", "[False, True, True, True]")
    offsets = [k for k in target.state_dict() if ".conv2_offset." in k]
    assert len(offsets) == 2 * (4 + 6 + 3)  # weight and bias of every block of res3..res5
    report = load_weights(target, str(path))
    assert not report.mismatched and sorted(report.missing) == sorted(offsets)
    assert all(float(target.state_dict()[k].abs().max()) == 0 for k in offsets)
