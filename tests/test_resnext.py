"""ResNeXt and deformable convolution as detectron2 builds them.

- Deformable conv (rethink.modeling.deform): zero-initialised offsets give the plain (grouped) conv,
  modulated ones half of it; an offset of +1 row in the (dy, dx) channel layout of detectron2's
  kernels samples one row lower; gradients reach `conv2_offset`; detectron2 names
  (`res3.0.conv2_offset.*`) load.
- Parameter names and shapes of the big models detectron2 builds (the fixture's param_shapes.json:
  the paper's X152-32x8d GN with and without cascade, detectron2's cascade X152 dconv config as
  shipped and with dconv off, X101-32x8d GN from scratch): detectron2's names mapped by our converter
  are exactly our parameter names, shapes equal, same count; FrozenBN buffers likewise.
- Our configs for those models (configs/scratch_gn_x152*.yaml, ...) build to detectron2's counts.
- Feature parity: a random-init ResNeXt-50 32x2d (GN, STRIDE_IN_1X1 False) Mask R-CNN saved by
  detectron2 (model.pkl) gives detectron2's stem, res2-res5 and p2-p6 within 1e-4 relative.
The fixture tests skip, saying why, when ../shared is absent.
"""
import contextlib
import json
import pickle
import re
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rethink.config import load_config
from rethink.data.build import build_test_loader
from rethink.modeling import build_model
from rethink.modeling.backbone import ResNet
from rethink.modeling.deform import DeformConv
from rethink.weights import load_weights
from rethink.weights.convert import _d2_body_name, _d2_head_name

from .conftest import CONFIGS, ROOT

GOLDEN = ROOT.parent / "shared" / "reference" / "detectron2-golden"
RESNEXT = GOLDEN / "enhanced" / "resnext"
D2_CONFIGS = ROOT.parent / "shared" / "reference" / "detectron2-configs"
SHAPES = RESNEXT / "param_shapes.json"
needs_shapes = pytest.mark.skipif(not (SHAPES.is_file() and D2_CONFIGS.is_dir()),
                                  reason=f"detectron2's param_shapes.json or configs are absent ({SHAPES}, "
                                         f"{D2_CONFIGS})")
needs_resnext = pytest.mark.skipif(not (RESNEXT / "model.pkl").is_file(),
                                   reason=f"detectron2's ResNeXt fixture is absent ({RESNEXT})")

# param_shapes.json entries (by the start of their name) and their parameter counts
ENTRIES = {
    "paper X152-32x8d FPN, GN everywhere": 172_791_710,
    "paper X152-32x8d FPN GN everywhere, from scratch, no cascade": 142_526_512,
    "cascade_mask_rcnn_X_152_32x8d_FPN_IN5k_gn_dconv (as shipped)": 182_487_660,
    "cascade_mask_rcnn_X_152_32x8d_FPN_gn": 174_855_966,
    "mask_rcnn_X_101_32x8d_FPN_gn scratch": 108_945_456,
}
# our configs -> the entry whose model they build
OUR_CONFIGS = {
    "scratch_gn_x152.yaml": "paper X152-32x8d FPN GN everywhere, from scratch, no cascade",
    "scratch_gn_x152_cascade.yaml": "paper X152-32x8d FPN, GN everywhere",
    "scratch_gn_x101_32x8d.yaml": "mask_rcnn_X_101_32x8d_FPN_gn scratch",
}


# --------------------------------------------------------------------------------------------------
# deformable convolution
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("groups,dgroups", [(1, 1), (4, 2)])
def test_zero_offsets_give_the_plain_conv(groups, dgroups):
    x = torch.randn(2, 8, 9, 11)
    for modulated, scale in ((False, 1.0), (True, 0.5)):  # mask logits 0 -> sigmoid 0.5
        d = DeformConv(8, 12, 3, stride=2, padding=1, groups=groups, deformable_groups=dgroups, modulated=modulated)
        assert d.offset_channels == (27 if modulated else 18) * dgroups
        offsets = torch.zeros(2, d.offset_channels, 5, 6)
        ref = F.conv2d(x, d.weight, stride=2, padding=1, groups=groups)
        torch.testing.assert_close(d(x, offsets), scale * ref, rtol=1e-5, atol=1e-5)


def test_offset_layout_is_dy_dx_per_tap():
    """Channel 2k is the row (y) offset of tap k, 2k+1 the column (x) offset (detectron2's kernels):
    dy = +1 everywhere samples the input one row lower, which a shifted input reproduces (away from the
    first output row, whose top taps sample row 0 instead of the padding)."""
    x = torch.randn(1, 4, 7, 7)
    d = DeformConv(4, 5, 3, padding=1)
    offsets = torch.zeros(1, 18, 7, 7)
    offsets[:, 0::2] = 1.0
    shifted = torch.cat([x[:, :, 1:], torch.zeros(1, 4, 1, 7)], dim=2)
    out, ref = d(x, offsets), F.conv2d(shifted, d.weight, padding=1)
    torch.testing.assert_close(out[:, :, 1:], ref[:, :, 1:], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, F.conv2d(x, d.weight, padding=1), atol=1e-3)
    offsets = torch.zeros(1, 18, 7, 7)
    offsets[:, 1::2] = 1.0
    shifted = torch.cat([x[:, :, :, 1:], torch.zeros(1, 4, 7, 1)], dim=3)
    out, ref = d(x, offsets), F.conv2d(shifted, d.weight, padding=1)
    torch.testing.assert_close(out[..., 1:], ref[..., 1:], rtol=1e-5, atol=1e-5)


def _tiny_deform_body(modulated=False):
    return ResNet(depth=50, norm="GN", stem_out=32, res2_out=64, groups=4, width_per_group=8, stride_in_1x1=False,
                  freeze_at=0, deform_on=(False, True, False, True), deform_modulated=modulated, deform_groups=2)


@pytest.mark.parametrize("modulated", [False, True])
def test_deform_stages_built_as_detectron2(modulated):
    body = _tiny_deform_body(modulated)
    names = dict(body.named_parameters())
    per_group = 27 if modulated else 18
    # res3 (layer2) and res5 (layer4) deformable, res2 and res4 not
    assert "layer1.0.conv2_offset.weight" not in names and "layer3.0.conv2_offset.weight" not in names
    for layer, width, stride in (("layer2", 64, 2), ("layer4", 256, 2)):
        block = getattr(body, layer)[0]
        assert tuple(names[f"{layer}.0.conv2_offset.weight"].shape) == (2 * per_group, width, 3, 3)
        assert tuple(names[f"{layer}.0.conv2_offset.bias"].shape) == (2 * per_group,)
        assert tuple(names[f"{layer}.0.conv2.weight"].shape) == (width, width // 4, 3, 3)
        assert f"{layer}.0.conv2.bias" not in names
        assert block.conv2_offset.stride == (stride, stride) and block.conv2.stride == (stride, stride)
        assert not block.conv2_offset.weight.detach().any() and not block.conv2_offset.bias.detach().any()
        assert float(block.conv2.weight.detach().std()) > 0
    out = body(torch.randn(1, 3, 64, 64))
    sum(v.sum() for v in out.values()).backward()
    assert float(body.layer2[0].conv2_offset.weight.grad.abs().sum()) > 0  # offsets learn
    assert float(body.layer4[1].conv2.weight.grad.abs().sum()) > 0


def test_deform_on_r18_is_refused():
    with pytest.raises(ValueError, match="DEFORM_ON_PER_STAGE"):
        ResNet(depth=18, res2_out=64, deform_on=(False, True, True, True))


def _to_d2_body_name(ours: str) -> str:
    """Our body name -> detectron2's (test helper, the inverse of the converter's body part)."""
    m = re.match(r"^layer(\d)\.(\d+)\.(.+)$", ours)
    if not m:
        return "stem." + ours.replace("bn1.", "conv1.norm.")
    stage, block, rest = int(m.group(1)) + 1, m.group(2), m.group(3)
    rest = re.sub(r"^bn(\d)\.", r"conv\1.norm.", rest)
    rest = rest.replace("downsample.0.", "shortcut.").replace("downsample.1.", "shortcut.norm.")
    return f"res{stage}.{block}.{rest}"


def test_detectron2_deform_names_load(tmp_path):
    cfg = load_config(CONFIGS / "scratch_gn_r50.yaml", [
        "MODEL.RESNETS.NUM_GROUPS", "4", "MODEL.RESNETS.WIDTH_PER_GROUP", "8", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
        "MODEL.RESNETS.STEM_OUT_CHANNELS", "32", "MODEL.RESNETS.DEFORM_ON_PER_STAGE", "[False, True, True, True]",
        "MODEL.RESNETS.DEFORM_MODULATED", "True", "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_HEADS.NUM_CLASSES", "3"])
    model = build_model(cfg)
    body = model.backbone.body
    g = torch.Generator().manual_seed(1)
    d2 = {"backbone.bottom_up." + _to_d2_body_name(k): torch.randn(v.shape, generator=g).numpy()
          for k, v in body.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert "backbone.bottom_up.res3.0.conv2_offset.weight" in d2 and "backbone.bottom_up.res5.2.conv2_offset.bias" in d2
    path = tmp_path / "d2.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": d2, "__author__": "test"}, f)
    report = load_weights(model, str(path))
    assert not report.unexpected and not report.mismatched
    src = report.sources["backbone.body.layer2.0.conv2_offset.weight"]
    assert src == "backbone.bottom_up.res3.0.conv2_offset.weight"
    for k, v in body.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert np.array_equal(v.numpy(), d2["backbone.bottom_up." + _to_d2_body_name(k)]), k


# --------------------------------------------------------------------------------------------------
# detectron2's parameter names and shapes of the big models
# --------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _no_init():
    """Build without running the (slow, memory-touching) initialisers: only names and shapes matter."""
    with contextlib.ExitStack() as stack:
        for name in dir(torch.nn.init):
            if name.endswith("_") and not name.startswith("_"):
                stack.enter_context(mock.patch.object(torch.nn.init, name, lambda t, *a, **k: t))
        yield


def _entry(prefix):
    data = json.loads(SHAPES.read_text())
    [name] = [k for k in data if k.startswith(prefix)]
    return data[name]


def _map_d2_name(key, model):
    if key.startswith("backbone.bottom_up."):
        return _d2_body_name(key[len("backbone.bottom_up."):])
    return _d2_head_name(key, model, [])


def _check_against_detectron2(model, entry, count):
    ours = {k: tuple(v.shape) for k, v in model.named_parameters()}
    mapped = {}
    for key, shape in entry["params"].items():
        new = _map_d2_name(key, model)
        assert new is not None, f"detectron2's {key} has no name here"
        assert new not in mapped, f"two detectron2 names map to {new}"
        mapped[new] = tuple(shape)
    assert sorted(mapped) == sorted(ours)
    assert {k: v for k, v in ours.items() if mapped[k] != v} == {}
    assert sum(p.numel() for p in model.parameters()) == entry["num_params"] == count
    # buffers: detectron2's FrozenBN keeps weight/bias/running stats as buffers, as torchvision's;
    # pixel_mean/std and the anchor generator's cell_anchors are buffers there, plain attributes here
    # (GeneralizedRCNNTransform's image_mean/std, anchors computed per call)
    d2_buffers = {}
    for key, shape in entry["buffers"].items():
        if key in ("pixel_mean", "pixel_std") or key.startswith("proposal_generator.anchor_generator.cell_anchors"):
            continue
        d2_buffers[_map_d2_name(key, model)] = tuple(shape)
    our_buffers = {k: tuple(v.shape) for k, v in model.named_buffers() if not k.endswith("num_batches_tracked")}
    assert d2_buffers == our_buffers


@needs_shapes
@pytest.mark.parametrize("prefix,count", list(ENTRIES.items()))
def test_detectron2_param_names_and_shapes(prefix, count):
    entry = _entry(prefix)
    cfg = load_config(D2_CONFIGS / entry["config"], list(entry["overrides"]))
    with _no_init():
        model = build_model(cfg)
    _check_against_detectron2(model, entry, count)
    if "dconv (as shipped)" in prefix:
        offsets = [k for k in entry["params"] if "conv2_offset" in k]
        assert len(offsets) == 2 * (8 + 36 + 3)  # res3-res5 blocks, weight + bias


@needs_shapes
@pytest.mark.parametrize("ours,prefix", list(OUR_CONFIGS.items()))
def test_our_configs_build_detectron2s_models(ours, prefix):
    with _no_init():
        model = build_model(load_config(CONFIGS / ours))
    _check_against_detectron2(model, _entry(prefix), ENTRIES[prefix])


@pytest.mark.parametrize("name,max_iter,steps", [
    ("scratch_gn_x152.yaml", 810_000, (750_000, 790_000)),  # Sec. 5.1: train aug from scratch at 9x
    ("scratch_gn_x152_cascade.yaml", 810_000, (750_000, 790_000)),
    ("scratch_gn_x101_32x8d.yaml", 810_000, (750_000, 790_000)),
    ("pretrained_gn_x152_cascade.yaml", 540_000, (480_000, 520_000)),  # 6x from ImageNet pre-training
])
def test_big_model_configs_resolve_as_the_paper(name, max_iter, steps):
    cfg = load_config(CONFIGS / name)
    s, r = cfg.SOLVER, cfg.MODEL.RESNETS
    assert (s.MAX_ITER, tuple(s.STEPS), s.IMS_PER_BATCH, s.BASE_LR) == (max_iter, steps, 16, 0.02)
    assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == (640, 672, 704, 736, 768, 800)
    assert cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING == "choice" and not cfg.INPUT.CROP.ENABLED
    assert (r.NUM_GROUPS, r.WIDTH_PER_GROUP, r.STRIDE_IN_1X1, r.DEPTH) == (32, 8, False, 101 if "x101" in name else 152)
    assert not any(r.DEFORM_ON_PER_STAGE)
    assert (cfg.MODEL.FPN.NORM, cfg.MODEL.ROI_BOX_HEAD.NORM, cfg.MODEL.ROI_MASK_HEAD.NORM) == ("GN", "GN", "GN")
    cascade = "cascade" in name
    assert (cfg.MODEL.ROI_HEADS.NAME == "CascadeROIHeads") == cascade
    assert cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG == cascade
    assert cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN == (2000 if cascade else 1000)
    if name.startswith("scratch"):
        assert (r.NORM, cfg.MODEL.WEIGHTS, cfg.MODEL.BACKBONE.FREEZE_AT) == ("GN", "", 0)
    else:  # the public IN-5k X152 is a Caffe2 BN model: FrozenBN, as detectron2's config uses it
        assert r.NORM == "FrozenBN" and cfg.MODEL.BACKBONE.FREEZE_AT == 2
        assert cfg.MODEL.WEIGHTS == "detectron2://ImageNetPretrained/FAIR/X-152-32x8d-IN5k.pkl"
        assert tuple(cfg.MODEL.PIXEL_STD) == (1.0, 1.0, 1.0)


def test_pretrained_x152_cascade_is_the_scratch_model_with_frozen_bn_body():
    with _no_init():
        scratch = build_model(load_config(CONFIGS / "scratch_gn_x152_cascade.yaml"))
        pre = build_model(load_config(CONFIGS / "pretrained_gn_x152_cascade.yaml"))
    a = {k: tuple(v.shape) for k, v in scratch.named_parameters()}
    b = {k: tuple(v.shape) for k, v in pre.named_parameters()}
    body_norms = {k for k in a if re.match(r"^backbone\.body\.(bn1|layer\d\.\d+\.(bn\d|downsample\.1))\.", k)}
    assert len(body_norms) == 2 * (1 + 3 * 50 + 4)
    assert {k: v for k, v in a.items() if k not in body_norms} == b
    # the GN affine of the body becomes FrozenBN buffers (weight, bias, running_mean, running_var)
    frozen = [k for k, _ in pre.named_buffers() if k.startswith("backbone.body.")]
    assert len(frozen) == 2 * len(body_norms)
    assert sum(p.numel() for p in scratch.parameters()) == 172_791_710


# --------------------------------------------------------------------------------------------------
# ResNeXt-50 32x2d features against detectron2's
# --------------------------------------------------------------------------------------------------
def assert_close(ours, theirs, rel=1e-4, what=""):
    """Every element within `rel` of the largest magnitude of the reference (as tests/test_d2_parity.py)."""
    ours, theirs = torch.as_tensor(ours, dtype=torch.float64), torch.as_tensor(theirs, dtype=torch.float64)
    assert ours.shape == theirs.shape, f"{what}: shape {tuple(ours.shape)} vs detectron2's {tuple(theirs.shape)}"
    scale = max(float(theirs.abs().max()), 1e-12)
    err = float((ours - theirs).abs().max())
    assert err <= rel * scale, f"{what}: max abs diff {err:.3g} > {rel} x {scale:.3g}"


@pytest.fixture(scope="module")
def resnext(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DETECTRON2_DATASETS", str(GOLDEN))
        mp.setenv("RETHINK_CACHE", str(tmp_path_factory.mktemp("cache")))
        cfg = load_config(RESNEXT / "config.yaml", ["MODEL.WEIGHTS", str(RESNEXT / "model.pkl")])
        torch.set_num_threads(2)
        model = build_model(cfg)
        report = load_weights(model, cfg.MODEL.WEIGHTS)
        samples = {s["image_id"]: s for [s] in build_test_loader(cfg, "coco_2017_val")}
        yield cfg, model.eval(), report, samples


@needs_resnext
def test_resnext_model_loads_completely(resnext):
    cfg, model, report, _ = resnext
    assert (cfg.MODEL.RESNETS.NUM_GROUPS, cfg.MODEL.RESNETS.WIDTH_PER_GROUP, cfg.MODEL.RESNETS.STRIDE_IN_1X1) == (32, 2,
                                                                                                               False)
    assert not report.missing and not report.unexpected and not report.mismatched
    assert sum(p.numel() for p in model.parameters()) == 8_874_800
    assert model.backbone.body.layer1[0].conv2.groups == 32 and model.backbone.body.layer2[0].conv2.stride == (2, 2)


@needs_resnext
@pytest.mark.parametrize("image_id", (20910, 163892))
def test_resnext_features_match_detectron2(resnext, image_id):
    _, model, _, samples = resnext
    ref = np.load(RESNEXT / "expected" / f"features_img{image_id}.npz")
    stats = json.loads((RESNEXT / "expected" / f"features_img{image_id}.json").read_text())
    s = samples[image_id]
    assert list(s["image"].shape[1:]) == stats["resized_hw"]
    with torch.no_grad():
        batch, _ = model.transform([s["image"]])
        body = model.backbone.body
        stem = F.max_pool2d(F.relu(body.bn1(body.conv1(batch.tensors))), kernel_size=3, stride=2, padding=1)
        res = body(batch.tensors)
        feats = model.backbone(batch.tensors)
    maps = {"stem": stem, **{f"res{k + 2}": res[str(k)] for k in range(4)},
            **{f"p{k + 2}": v for k, v in enumerate(feats.values())}}
    for name, t in maps.items():
        st = stats[name]
        assert list(t.shape) == st["shape"], name
        t64 = t.double()
        scale = max(abs(st["min"]), abs(st["max"]))
        for key, value in (("min", t64.min()), ("max", t64.max())):
            assert abs(float(value) - st[key]) <= 1e-4 * scale, (name, key)
        assert float(t64.abs().mean()) == pytest.approx(st["mean_abs"], rel=1e-4), name
        assert float(t64.std()) == pytest.approx(st["std"], rel=1e-4), name
        assert abs(float(t64.sum()) - st["sum"]) <= 1e-4 * float(t64.abs().sum()), name
        if f"{name}_corner" in ref:
            assert_close(t[0, :4, :4, :4], ref[f"{name}_corner"], what=name)
    assert_close(maps["p6"][0], ref["p6_full"], what="p6")
    assert_close(maps["res5"][0], ref["res5_full"], what="res5")
