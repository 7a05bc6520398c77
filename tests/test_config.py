"""Config system: detectron2 keys and values, _BASE_, overrides, errors naming key and file,
paper schedules and the linear scaling rule, and parity with detectron2's own config files."""
import os
from pathlib import Path

import pytest
import yaml

from rethink.config import ConfigError, describe_schedule, get_cfg, load_config, schedule_steps
from rethink.config.validate import describe_source

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
D2 = ROOT.parent / "shared" / "reference" / "detectron2-configs"


def _write(tmp_path, name, data):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data) if isinstance(data, dict) else data)
    return str(p)


def test_detectron2_defaults_of_base_rcnn_fpn():
    cfg = load_config(CONFIGS / "Base-MaskRCNN-FPN.yaml")
    m = cfg.MODEL
    assert m.ANCHOR_GENERATOR.SIZES == [[32], [64], [128], [256], [512]]
    assert m.RPN.PRE_NMS_TOPK_TRAIN == 2000 and m.RPN.POST_NMS_TOPK_TRAIN == 1000
    assert m.RPN.PRE_NMS_TOPK_TEST == 1000 and m.RPN.POST_NMS_TOPK_TEST == 1000
    assert m.ROI_HEADS.BATCH_SIZE_PER_IMAGE == 512 and m.ROI_HEADS.POSITIVE_FRACTION == 0.25
    assert m.ROI_BOX_HEAD.POOLER_TYPE == "ROIAlignV2" and m.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO == 0
    assert m.ROI_BOX_HEAD.POOLER_RESOLUTION == 7 and m.ROI_MASK_HEAD.POOLER_RESOLUTION == 14
    assert m.ROI_HEADS.SCORE_THRESH_TEST == 0.05 and m.ROI_HEADS.NMS_THRESH_TEST == 0.5
    assert cfg.TEST.DETECTIONS_PER_IMAGE == 100
    assert cfg.SOLVER.MAX_ITER == 90000 and tuple(cfg.SOLVER.STEPS) == (60000, 80000)
    assert cfg.SOLVER.MOMENTUM == 0.9 and cfg.SOLVER.WEIGHT_DECAY == 1e-4 and cfg.SOLVER.WEIGHT_DECAY_NORM == 0.0
    assert cfg.SOLVER.WARMUP_ITERS == 1000 and cfg.SOLVER.WARMUP_FACTOR == 1e-3
    assert cfg.is_frozen()


def test_unknown_key_in_file_names_key_and_file(tmp_path):
    path = _write(tmp_path, "bad.yaml",
                  {"_BASE_": str(CONFIGS / "scratch_gn_r50.yaml"), "MODEL": {"RESNET": {"DEPTH": 50}}})
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert "unknown config key MODEL.RESNET" in str(e.value) and "bad.yaml" in str(e.value)
    assert "did you mean MODEL.RESNETS" in str(e.value)


def test_unknown_key_in_base_file_names_the_base(tmp_path):
    base = _write(tmp_path, "base.yaml", {"SOLVER": {"BASE_LRR": 0.1}})
    top = _write(tmp_path, "top.yaml", {"_BASE_": "base.yaml"})
    with pytest.raises(ConfigError, match=r"base\.yaml: unknown config key SOLVER\.BASE_LRR"):
        load_config(top)
    assert os.path.exists(base)


def test_unknown_key_on_command_line():
    with pytest.raises(ConfigError, match=r"command line: unknown config key SOLVER\.MAX_ITERS"):
        load_config(CONFIGS / "scratch_gn_r50.yaml", ["SOLVER.MAX_ITERS", "10"])


def test_bad_value_type_names_key_and_source(tmp_path):
    with pytest.raises(ConfigError, match=r"command line: bad value 'abc' for SOLVER\.MAX_ITER"):
        load_config(CONFIGS / "scratch_gn_r50.yaml", ["SOLVER.MAX_ITER", "abc"])
    path = _write(tmp_path, "t.yaml",
                  {"_BASE_": str(CONFIGS / "scratch_gn_r50.yaml"), "SOLVER": {"IMS_PER_BATCH": "many"}})
    with pytest.raises(ConfigError, match=r"t\.yaml: .*SOLVER\.IMS_PER_BATCH"):
        load_config(path)


def test_unsupported_value_names_key_and_file(tmp_path):
    path = _write(tmp_path, "n.yaml",
                  {"_BASE_": str(CONFIGS / "scratch_gn_r50.yaml"), "MODEL": {"FPN": {"NORM": "LN"}}})
    with pytest.raises(ConfigError, match=r"n\.yaml: MODEL\.FPN\.NORM = 'LN': must be one of"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"command line: SOLVER\.SCHEDULE"):
        load_config(CONFIGS / "scratch_gn_r50.yaml", ["SOLVER.SCHEDULE", "six"])
    with pytest.raises(ConfigError, match=r"RES2_OUT_CHANNELS"):
        load_config(CONFIGS / "scratch_gn_r50.yaml", ["MODEL.RESNETS.DEPTH", "18"])


def test_odd_override_list():
    with pytest.raises(ConfigError, match="KEY VALUE pairs"):
        load_config(CONFIGS / "scratch_gn_r50.yaml", ["SOLVER.MAX_ITER"])


def test_frozen():
    cfg = load_config(CONFIGS / "scratch_gn_r50.yaml")
    with pytest.raises(AttributeError):
        cfg.SOLVER.BASE_LR = 1.0


@pytest.mark.parametrize(
    "schedule,max_iter,steps",
    [("1x", 90000, (60000, 80000)), ("2x", 180000, (120000, 160000)), ("3x", 270000, (210000, 250000)),
     ("6x", 540000, (480000, 520000)), ("0.5x", 45000, (30000, 40000)), ("1.5x", 135000, (90000, 120000))],
)
def test_paper_schedules(schedule, max_iter, steps):
    cfg = load_config(CONFIGS / "scratch_gn_r50.yaml", ["SOLVER.SCHEDULE", schedule])
    assert cfg.SOLVER.MAX_ITER == max_iter and tuple(cfg.SOLVER.STEPS) == steps
    assert cfg.SOLVER.BASE_LR == 0.02


def test_schedule_unit_shrinks_everything():
    assert schedule_steps(6 * 900, 900) == (6 * 900 - 600, 6 * 900 - 200)
    cfg = load_config(CONFIGS / "scratch_gn_r50.yaml", ["SOLVER.SCHEDULE_UNIT", "90", "SOLVER.SCHEDULE", "3x"])
    assert cfg.SOLVER.MAX_ITER == 270 and tuple(cfg.SOLVER.STEPS) == (210, 250)


def test_explicit_max_iter_and_steps_win():
    cfg = load_config(CONFIGS / "scratch_gn_r50.yaml", ["SOLVER.MAX_ITER", "1000"])
    assert cfg.SOLVER.MAX_ITER == 1000 and tuple(cfg.SOLVER.STEPS) == (667, 889)  # paper rule on the explicit length
    cfg = load_config(CONFIGS / "scratch_gn_r50.yaml", ["SOLVER.STEPS", "(100, 200)"])
    assert cfg.SOLVER.MAX_ITER == 540000 and tuple(cfg.SOLVER.STEPS) == (100, 200)


def test_linear_scaling_matches_detectron2_9x_config():
    cfg = load_config(CONFIGS / "scratch_gn_r50.yaml", ["SOLVER.SCHEDULE", "9x", "SOLVER.IMS_PER_BATCH", "64"])
    # detectron2 Misc/scratch_mask_rcnn_R_50_FPN_9x_gn.yaml: batch 64, lr 0.08, (187500, 197500), 202500
    assert cfg.SOLVER.MAX_ITER == 202500 and tuple(cfg.SOLVER.STEPS) == (187500, 197500)
    assert cfg.SOLVER.BASE_LR == pytest.approx(0.08) and cfg.SOLVER.WARMUP_ITERS == 250
    assert cfg.SOLVER.REFERENCE_IMS_PER_BATCH == 64 and cfg.SOLVER.SCHEDULE_UNIT == 22500
    cfg = load_config(CONFIGS / "scratch_gn_r50.yaml", ["SOLVER.IMS_PER_BATCH", "8"])
    assert cfg.SOLVER.MAX_ITER == 1080000 and cfg.SOLVER.BASE_LR == pytest.approx(0.01)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(CONFIGS / "scratch_gn_r50.yaml", ["SOLVER.SCHEDULE", "2x", "SOLVER.IMS_PER_BATCH", "32"])
    path = tmp_path / "config.yaml"
    path.write_text(cfg.dump())
    again = load_config(path)
    assert again == cfg


# --- parity with detectron2's own configs --------------------------------------------------------
PAIRS = [
    ("scratch_gn_r50.yaml", "Misc/scratch_mask_rcnn_R_50_FPN_9x_gn.yaml"),
    ("pretrained_gn_r50.yaml", "Misc/mask_rcnn_R_50_FPN_3x_gn.yaml"),
    ("scratch_syncbn_r50.yaml", "Misc/scratch_mask_rcnn_R_50_FPN_9x_syncbn.yaml"),
    ("pretrained_syncbn_r50.yaml", "Misc/mask_rcnn_R_50_FPN_3x_syncbn.yaml"),
]
# Deliberate differences: the paper's schedule/batch and single-scale 800 training; weights paths.
ALLOWED = {"SOLVER.", "INPUT.MIN_SIZE_TRAIN", "MODEL.WEIGHTS", "TEST.EVAL_PERIOD"}


def _leaves(node, prefix=""):
    for k, v in node.items():
        if hasattr(v, "items"):
            yield from _leaves(v, prefix + k + ".")
        else:
            yield prefix + k, v


@pytest.mark.skipif(not D2.is_dir(), reason=f"detectron2 reference configs not found at {D2}")
@pytest.mark.parametrize("ours,theirs", PAIRS)
def test_same_values_as_detectron2_configs(ours, theirs):
    a = dict(_leaves(load_config(CONFIGS / ours)))
    b = dict(_leaves(load_config(D2 / theirs)))
    diff = {k: (a[k], b[k]) for k in a if a[k] != b[k] and not any(k.startswith(x) for x in ALLOWED)}
    assert diff == {}
    assert a["INPUT.MIN_SIZE_TRAIN"] == (800,) and a["SOLVER.SCHEDULE"] == "6x"


@pytest.mark.skipif(not D2.is_dir(), reason=f"detectron2 reference configs not found at {D2}")
def test_detectron2_9x_solver_equals_our_9x():
    ours = load_config(CONFIGS / "scratch_gn_r50.yaml", ["SOLVER.SCHEDULE", "9x", "SOLVER.IMS_PER_BATCH", "64"])
    theirs = load_config(D2 / "Misc/scratch_mask_rcnn_R_50_FPN_9x_gn.yaml", ["SOLVER.REFERENCE_IMS_PER_BATCH", "64"])
    for key in ("MAX_ITER", "STEPS", "BASE_LR", "IMS_PER_BATCH"):
        assert ours.SOLVER[key] == pytest.approx(theirs.SOLVER[key]), key


def test_every_shipped_config_loads():
    files = sorted(p for p in CONFIGS.rglob("*.yaml") if not p.name.startswith("_"))
    assert len(files) >= 9
    for p in files:
        load_config(p)


def test_project_keys_have_defaults():
    cfg = get_cfg()
    # REFERENCE_IMS_PER_BATCH 0: no linear scaling, so a detectron2 config runs as written
    assert cfg.SOLVER.SCHEDULE == "" and cfg.SOLVER.SCHEDULE_UNIT == 90000 and cfg.SOLVER.REFERENCE_IMS_PER_BATCH == 0
    assert cfg.TEST.EVALUATOR == "hotcoco"
    # ... while this project's configs write LR and iterations for 16 images/batch
    assert load_config(CONFIGS / "Base-MaskRCNN-FPN.yaml").SOLVER.REFERENCE_IMS_PER_BATCH == 16


def test_detectron2_config_is_not_rescaled(tmp_path):
    path = _write(tmp_path, "d2.yaml", {"_BASE_": str(CONFIGS / "Base-MaskRCNN-FPN.yaml"),
                                       "SOLVER": {"REFERENCE_IMS_PER_BATCH": 0, "IMS_PER_BATCH": 2, "BASE_LR": 0.0025,
                                                  "SCHEDULE": "", "MAX_ITER": 1000, "STEPS": [600, 800]}})
    cfg = load_config(path)
    assert cfg.SOLVER.MAX_ITER == 1000 and tuple(cfg.SOLVER.STEPS) == (600, 800) and cfg.SOLVER.BASE_LR == 0.0025
    assert cfg.SOLVER.WARMUP_ITERS == 1000 and cfg.SOLVER.CHECKPOINT_PERIOD == 5000


def test_evaluator_backends():
    for name in ("faster_coco_eval", "pycocotools", "hotcoco"):
        assert load_config(CONFIGS / "scratch_gn_r50.yaml", ["TEST.EVALUATOR", name]).TEST.EVALUATOR == name
    with pytest.raises(ConfigError, match=r"command line: TEST\.EVALUATOR = 'cocoapi': must be one of"):
        load_config(CONFIGS / "scratch_gn_r50.yaml", ["TEST.EVALUATOR", "cocoapi"])


def test_errors_say_where_a_value_came_from(tmp_path):
    # a value no file set: which defaults hold it, never just "defaults"
    with pytest.raises(ConfigError) as e:
        load_config(None)
    assert str(e.value).startswith("(detectron2's default): MODEL.BACKBONE.NAME = 'build_resnet_backbone'")
    assert describe_source("TEST.EVALUATOR", get_cfg(), {}) == "(rethink default)"
    # STEPS computed from SOLVER.SCHEDULE: the key the user set (SCHEDULE here) is blamed, where it was set
    with pytest.raises(ConfigError, match=r"^command line: SOLVER\.SCHEDULE = '0\.00001x': too short: .*"
                                          r"SOLVER\.STEPS = \(1, 1\).*at least 5 iterations"):
        load_config(CONFIGS / "scratch_gn_r50.yaml", ["SOLVER.SCHEDULE", "0.00001x"])
    # a value set in a _BASE_ file: that file
    base = _write(tmp_path, "base.yaml",
                  {"_BASE_": str(CONFIGS / "scratch_gn_r50.yaml"), "MODEL": {"FPN": {"FUSE_TYPE": "avg"}}})
    top = _write(tmp_path, "top.yaml", {"_BASE_": "base.yaml", "SOLVER": {"BASE_LR": 0.01}})
    with pytest.raises(ConfigError,
                       match=r"base\.yaml: MODEL\.FPN\.FUSE_TYPE = 'avg': .*only detectron2's default 'sum'"):
        load_config(top)
    assert os.path.exists(base)


def test_resolved_schedule_is_described_in_one_line():
    resolution = {}
    cfg = load_config(CONFIGS / "scratch_gn_r50.yaml", ["SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "6"],
                      resolution=resolution)
    line = describe_schedule(cfg, resolution)
    assert line == ("schedule: batch 2 (reference 16: LR x0.125, iteration counts x8), LR 0.0025, MAX_ITER 48, "
                    "STEPS (32, 40), warm-up 8000, no periodic eval, checkpoint every 40000")
    resolution = {}
    cfg = load_config(CONFIGS / "scratch_gn_r50.yaml", ["TEST.EVAL_PERIOD", "10000"], resolution=resolution)
    assert describe_schedule(cfg, resolution) == (
        "schedule: batch 16 (not scaled), LR 0.02, MAX_ITER 540000 = 6x of 90000, STEPS (480000, 520000), "
        "warm-up 1000, eval every 10000, checkpoint every 5000")


def test_schedule_derived_steps_blame_the_key_the_user_set(tmp_path):
    # MAX_ITER set on the command line; STEPS derived from it by SCHEDULE's rule (never set by the user)
    with pytest.raises(ConfigError) as e:
        load_config(CONFIGS / "scratch_gn_r50.yaml", ["SOLVER.MAX_ITER", "4"])
    msg = str(e.value)
    assert msg.startswith("command line: SOLVER.MAX_ITER = 4: too short:"), msg
    assert "SOLVER.STEPS = (3, 4)" in msg and "at least 5 iterations" in msg and "defaults" not in msg
    assert load_config(CONFIGS / "scratch_gn_r50.yaml", ["SOLVER.MAX_ITER", "5"]).SOLVER.STEPS == (3, 4)
    # ... set in a file: that file is named
    path = _write(tmp_path, "short.yaml", {"_BASE_": str(CONFIGS / "scratch_gn_r50.yaml"), "SOLVER": {"MAX_ITER": 3}})
    with pytest.raises(ConfigError, match=r"short\.yaml: SOLVER\.MAX_ITER = 3: too short"):
        load_config(path)
    # no SCHEDULE: MAX_ITER is blamed, and the STEPS it conflicts with are said to be detectron2's default
    with pytest.raises(ConfigError, match=r"^command line: SOLVER\.MAX_ITER = 100: SOLVER\.STEPS = \(30000,\) "
                                          r"\(detectron2's default\) must be increasing .*set SOLVER\.STEPS too"):
        load_config(CONFIGS / "scratch_gn_r50.yaml", ["SOLVER.SCHEDULE", "", "SOLVER.MAX_ITER", "100"])
    # STEPS set by the user: STEPS is blamed
    with pytest.raises(ConfigError, match=r"command line: SOLVER\.STEPS = \(10, 2000\): must be increasing"):
        load_config(CONFIGS / "scratch_gn_r50.yaml", ["SOLVER.MAX_ITER", "1000", "SOLVER.STEPS", "(10, 2000)"])


@pytest.mark.parametrize("key,value,why", [
    ("SOLVER.IMS_PER_BATCH", "0", "must be at least 1"),  # was a ZeroDivisionError in the linear scaling rule
    ("SOLVER.IMS_PER_BATCH", "-2", "must be at least 1"),
    ("SOLVER.BASE_LR", "-0.1", "must be positive"),
    ("SOLVER.BASE_LR", "0.0", "must be positive"),
    ("SOLVER.CHECKPOINT_PERIOD", "-5", "must be >= 0"),
    ("TEST.EVAL_PERIOD", "-1", "must be >= 0"),
    ("SOLVER.WARMUP_ITERS", "-1", "must be >= 0"),
    ("SOLVER.MAX_ITER", "0", "must be at least 1"),
    ("SOLVER.SCHEDULE_UNIT", "0", "must be at least 1"),
    ("SOLVER.REFERENCE_IMS_PER_BATCH", "-16", "must be >= 0"),
    ("SOLVER.GAMMA", "0.0", "must be positive"),
    ("SOLVER.WEIGHT_DECAY", "-0.0001", "must be >= 0"),
    ("TEST.PRECISE_BN.NUM_ITER", "0", "must be at least 1"),
    ("TEST.DETECTIONS_PER_IMAGE", "0", "must be at least 1"),
    ("DATALOADER.NUM_WORKERS", "-1", "must be >= 0"),
    ("SOLVER.CHECKPOINT_ITERS", "(100, -3)", "-3 is not a positive iteration count"),
])
def test_numeric_bounds_name_key_value_and_source(tmp_path, key, value, why):
    with pytest.raises(ConfigError) as e:
        load_config(CONFIGS / "scratch_gn_r50.yaml", [key, value])
    assert str(e.value).startswith(f"command line: {key} = ") and why in str(e.value), str(e.value)
    group, leaf = key.rsplit(".", 1)
    data = {"_BASE_": str(CONFIGS / "scratch_gn_r50.yaml")}
    node = data
    for part in group.split("."):
        node = node.setdefault(part, {})
    node[leaf] = yaml.safe_load(value.replace("(", "[").replace(")", "]"))
    path = _write(tmp_path, "bound.yaml", data)
    with pytest.raises(ConfigError, match=rf"bound\.yaml: {key.replace('.', '[.]')} = .*{why[:10]}"):
        load_config(path)
    zero_ok = {"SOLVER.CHECKPOINT_PERIOD", "TEST.EVAL_PERIOD", "SOLVER.WARMUP_ITERS"}
    if key in zero_ok:  # 0 is allowed: "never" / "no warm-up"
        assert _get_key(load_config(CONFIGS / "scratch_gn_r50.yaml", [key, "0"]), key) == 0


def _get_key(cfg, key):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg
