"""Optimizer parameter groups against detectron2's own (``get_default_optimizer_params``), read
from ../shared/reference/detectron2-param-groups.json."""
import json
from collections import defaultdict

import pytest
import torch

from rethink.config import load_config
from rethink.engine.solver import build_optimizer, param_groups
from rethink.modeling import build_model

from .conftest import CONFIGS, ROOT, tiny_cfg

PARAM_GROUPS = ROOT.parent / "shared" / "reference" / "detectron2-param-groups.json"

# our config -> the detectron2 config its groups were measured on
OURS = {
    "scratch_mask_rcnn_R_50_FPN_3x_gn.yaml": "scratch_gn_r50.yaml",
    "mask_rcnn_R_50_FPN_3x_gn.yaml": "pretrained_gn_r50.yaml",
    "scratch_mask_rcnn_R_50_FPN_9x_syncbn.yaml": "scratch_syncbn_r50.yaml",
}


def group_sizes(groups):
    sizes = defaultdict(lambda: {"tensors": 0, "params": 0})
    for g in groups:
        key = f"wd={g['weight_decay']}"
        sizes[key]["tensors"] += len(g["params"])
        sizes[key]["params"] += sum(p.numel() for p in g["params"])
    return dict(sizes)


def _reference():
    if not PARAM_GROUPS.is_file():
        pytest.skip(f"{PARAM_GROUPS} is absent (detectron2's measured optimizer groups live in ../shared)")
    return json.loads(PARAM_GROUPS.read_text())


@pytest.mark.parametrize("d2_config", sorted(OURS))
def test_param_groups_equal_detectron2(d2_config):
    expected = _reference()[d2_config]
    cfg = load_config(CONFIGS / OURS[d2_config])
    assert group_sizes(param_groups(build_model(cfg), cfg)) == expected


def _group_of(opt, p):
    return next(g for g in opt.param_groups if any(q is p for q in g["params"]))


def test_norm_biases_keep_norm_decay_unless_bias_decay_is_set():
    cfg = tiny_cfg()
    model = build_model(cfg)
    norm_bias = next(m.bias for m in model.modules() if isinstance(m, torch.nn.GroupNorm))
    conv_bias = model.rpn.head.cls_logits.bias
    opt = build_optimizer(cfg, model)
    assert _group_of(opt, norm_bias)["weight_decay"] == 0.0  # WEIGHT_DECAY_NORM
    assert _group_of(opt, conv_bias)["weight_decay"] == cfg.SOLVER.WEIGHT_DECAY == 1e-4
    assert _group_of(opt, conv_bias)["lr"] == cfg.SOLVER.BASE_LR
    cfg2 = tiny_cfg("SOLVER.WEIGHT_DECAY_BIAS", "0.5", "SOLVER.BIAS_LR_FACTOR", "2.0")
    opt2 = build_optimizer(cfg2, model)
    assert _group_of(opt2, norm_bias)["weight_decay"] == _group_of(opt2, conv_bias)["weight_decay"] == 0.5
    assert _group_of(opt2, conv_bias)["lr"] == pytest.approx(2.0 * cfg2.SOLVER.BASE_LR)
