"""detectron2's full set of config keys: each is honoured or refused off its default (naming the
key), a full detectron2 ``cfg.dump()`` loads, and CUDNN_BENCHMARK / FLOAT32_PRECISION reach torch."""
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import rethink.engine.defaults as engine_defaults
from rethink.config import ConfigError, get_cfg, load_config
from rethink.config.validate import IMPLEMENTED, NOT_IMPLEMENTED, expand, leaf_keys

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
GOLDEN = ROOT.parent / "shared" / "reference" / "detectron2-golden"
BASE = CONFIGS / "scratch_gn_r50.yaml"


def _other(value):
    """A value of the same type as `value` (as fvcore checks types) that differs from it."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value + 0.5
    if isinstance(value, str):
        return value + "X" if value else "X"
    if isinstance(value, (list, tuple)):
        return type(value)([_other(value[0])] + list(value[1:])) if value else type(value)([1])
    raise TypeError(f"no rule for a {type(value).__name__}")


def _as_override(value) -> str:
    return value if isinstance(value, str) else repr(value)


def test_every_key_is_implemented_or_declared_not_implemented():
    leaves = {k for k, _ in leaf_keys(get_cfg())}
    done, not_done = expand(IMPLEMENTED), expand(NOT_IMPLEMENTED)
    assert set(done) & set(not_done) == set()
    assert leaves - set(done) - set(not_done) == set(), "declare these in rethink/config/validate.py"


@pytest.mark.parametrize("key", sorted(expand(NOT_IMPLEMENTED)))
def test_unimplemented_key_is_refused_off_its_default(key):
    default = dict(leaf_keys(get_cfg()))[key]
    load_config(BASE, [key, _as_override(default)])  # the default itself is accepted
    with pytest.raises(ConfigError) as e:
        load_config(BASE, [key, _as_override(_other(default))])
    assert str(e.value).startswith(f"command line: {key} = ")
    assert "only detectron2's default" in str(e.value)


def _golden():
    if not GOLDEN.is_dir():
        pytest.skip(f"detectron2 golden fixture not found at {GOLDEN} (it lives in ../shared/reference)")
    return GOLDEN / "model"


def test_detectron2_dump_loads():
    cfg = load_config(_golden() / "config.yaml")
    s = cfg.SOLVER
    assert s.MAX_ITER == 360 and tuple(s.STEPS) == (288, 334) and s.IMS_PER_BATCH == 2 and s.BASE_LR == 0.02
    assert s.WARMUP_ITERS == 72 and s.REFERENCE_IMS_PER_BATCH == 0  # not rescaled to 16 images/batch
    assert cfg.MODEL.RESNETS.DEPTH == 18 and cfg.MODEL.FPN.OUT_CHANNELS == 128
    assert cfg.MODEL.ROI_BOX_HEAD.NUM_CONV == 4 and cfg.MODEL.ROI_BOX_HEAD.NUM_FC == 1 and cfg.MODEL.MASK_ON
    stage2 = load_config(_golden() / "train_config_stage2.yaml")
    assert stage2.SOLVER.MAX_ITER == 400 and tuple(stage2.SOLVER.STEPS) == (300, 360) and stage2.SEED == 101


@pytest.mark.parametrize("key,value", [("MODEL.LOAD_PROPOSALS", "True"), ("DATALOADER.REPEAT_THRESHOLD", "0.5"),
                                       ("MODEL.RESNETS.RES5_DILATION", "2"), ("SOLVER.BASE_LR_END", "0.001")])
def test_unimplemented_value_on_top_of_detectron2_dump(key, value):
    with pytest.raises(ConfigError, match=rf"^command line: {key.replace('.', r'[.]')} = "):
        load_config(_golden() / "config.yaml", [key, value])


def test_unimplemented_value_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "retina.yaml"
    path.write_text(f"_BASE_: {BASE}\nMODEL:\n  RETINANET:\n    NUM_CONVS: 2\n")
    with pytest.raises(ConfigError,
                       match=r"retina\.yaml: MODEL\.RETINANET\.NUM_CONVS = 2: RetinaNet is not implemented"):
        load_config(path)


def test_loss_type_only_smooth_l1():
    for key in ("MODEL.RPN.BBOX_REG_LOSS_TYPE", "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE"):
        with pytest.raises(ConfigError, match=rf"{key.replace('.', '[.]')} = 'giou'"):
            load_config(BASE, [key, "giou"])


def test_float32_precision_values():
    for name in ("", "highest", "high", "medium"):
        load_config(BASE, ["FLOAT32_PRECISION", name])
    with pytest.raises(ConfigError, match=r"command line: FLOAT32_PRECISION = 'low': must be one of"):
        load_config(BASE, ["FLOAT32_PRECISION", "low"])


# --- torch switches ---------------------------------------------------------------------------------
@pytest.fixture
def torch_flags():
    """Restore cudnn.benchmark, the fp32 matmul precision and cudnn TF32 after the test."""
    saved = torch.backends.cudnn.benchmark, torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cudnn.benchmark = saved[0]
    torch.set_float32_matmul_precision(saved[1])
    torch.backends.cudnn.allow_tf32 = saved[2]


def _flags():
    return torch.backends.cudnn.benchmark, torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32


@pytest.mark.parametrize("benchmark,precision", [(True, "high"), (False, "highest"), (True, "medium")])
def test_setup_sets_torch_flags(torch_flags, monkeypatch, benchmark, precision):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # FLOAT32_PRECISION acts on CUDA machines only
    cfg = load_config(BASE, ["CUDNN_BENCHMARK", str(benchmark), "FLOAT32_PRECISION", precision])
    engine_defaults.setup_torch_backends(cfg)
    assert _flags() == (benchmark, precision, precision != "highest")


def test_empty_precision_and_no_cuda_leave_torch_alone(torch_flags, monkeypatch):
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = False
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    engine_defaults.setup_torch_backends(load_config(BASE, ["FLOAT32_PRECISION", ""]))
    assert _flags() == (False, "high", False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    engine_defaults.setup_torch_backends(load_config(BASE, ["FLOAT32_PRECISION", "medium"]))
    assert _flags() == (False, "high", False)


def test_eval_only_leaves_cudnn_benchmark_alone(torch_flags):
    torch.backends.cudnn.benchmark = False
    engine_defaults.setup_torch_backends(load_config(BASE, ["CUDNN_BENCHMARK", "True"]), eval_only=True)
    assert torch.backends.cudnn.benchmark is False


def test_main_worker_applies_flags_before_training(torch_flags, monkeypatch, tmp_path):
    seen = {}

    class NoTraining:
        completed = 0
        storage = SimpleNamespace(scalars_at=lambda it: {})

        def __init__(self, cfg):
            seen["flags"] = _flags()

        def resume_or_load(self, resume):
            pass

        def train(self):
            pass

    monkeypatch.setattr(engine_defaults, "Trainer", NoTraining)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cfg = load_config(CONFIGS / "demo" / "scratch_gn_r18_tiny.yaml",
                      ["CUDNN_BENCHMARK", "True", "FLOAT32_PRECISION", "medium", "OUTPUT_DIR", str(tmp_path)])
    try:
        engine_defaults.main_worker(cfg)
    finally:
        root = logging.getLogger()
        for h in [h for h in root.handlers if getattr(h, "_rethink", False)]:
            root.removeHandler(h)
            h.close()
    assert seen["flags"] == (True, "medium", True)
