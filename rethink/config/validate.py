"""Checks that a merged config asks only for what the model builder, data pipeline and engine implement.

Every key of :func:`rethink.config.get_cfg` is in exactly one of two declared tables:

- :data:`IMPLEMENTED`: keys this project honours (some only for the values :func:`validate` checks);
- :data:`NOT_IMPLEMENTED`: detectron2 keys accepted only at detectron2's default value, so that its
  config files (including a full ``cfg.dump()``) load, while any other value is an error naming the key.

A new detectron2 key therefore needs one line in one of them (``tests/test_d2_config.py`` fails
until it has one).
"""
from typing import Any, Dict, Iterator, Tuple

from fvcore.common.config import CfgNode

from ..utils.usererrors import UserError
from .defaults import _C, get_cfg
from .schedule import schedule_steps

NORMS = ("", "BN", "SyncBN", "FrozenBN", "GN")
DEPTHS = (18, 34, 50, 101, 152)
FLOAT32_PRECISIONS = ("", "highest", "high", "medium")
EVALUATORS = ("faster_coco_eval", "pycocotools", "hotcoco")
AMP_DTYPES = ("float16", "bfloat16")
CROP_TYPES = ("relative_range", "relative", "absolute", "absolute_range")  # detectron2's RandomCrop

# Keys that the project honours. A name that is a group covers every key under it.
IMPLEMENTED = (
    # model
    "MODEL.MASK_ON", "MODEL.DEVICE", "MODEL.WEIGHTS", "MODEL.WEIGHTS_MIN_BACKBONE_MATCH", "MODEL.PIXEL_MEAN",
    "MODEL.PIXEL_STD",
    "MODEL.BACKBONE.NAME", "MODEL.BACKBONE.FREEZE_AT",
    "MODEL.RESNETS.DEPTH", "MODEL.RESNETS.OUT_FEATURES", "MODEL.RESNETS.NUM_GROUPS", "MODEL.RESNETS.NORM",
    "MODEL.RESNETS.WIDTH_PER_GROUP", "MODEL.RESNETS.STRIDE_IN_1X1", "MODEL.RESNETS.RES2_OUT_CHANNELS",
    "MODEL.RESNETS.STEM_OUT_CHANNELS",
    "MODEL.RESNETS.DEFORM_ON_PER_STAGE", "MODEL.RESNETS.DEFORM_MODULATED", "MODEL.RESNETS.DEFORM_NUM_GROUPS",
    "MODEL.FPN.IN_FEATURES", "MODEL.FPN.OUT_CHANNELS", "MODEL.FPN.NORM",
    "MODEL.ANCHOR_GENERATOR.SIZES", "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS",
    "MODEL.RPN.IN_FEATURES", "MODEL.RPN.IOU_THRESHOLDS", "MODEL.RPN.BATCH_SIZE_PER_IMAGE",
    "MODEL.RPN.POSITIVE_FRACTION", "MODEL.RPN.BBOX_REG_LOSS_WEIGHT", "MODEL.RPN.BBOX_REG_WEIGHTS",
    "MODEL.RPN.SMOOTH_L1_BETA", "MODEL.RPN.LOSS_WEIGHT", "MODEL.RPN.PRE_NMS_TOPK_TRAIN",
    "MODEL.RPN.PRE_NMS_TOPK_TEST", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "MODEL.RPN.POST_NMS_TOPK_TEST",
    "MODEL.RPN.NMS_THRESH",
    "MODEL.ROI_HEADS.NAME", "MODEL.ROI_HEADS.NUM_CLASSES", "MODEL.ROI_HEADS.IN_FEATURES",
    "MODEL.ROI_HEADS.IOU_THRESHOLDS", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "MODEL.ROI_HEADS.POSITIVE_FRACTION",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "MODEL.ROI_HEADS.NMS_THRESH_TEST",
    "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG",
    "MODEL.ROI_BOX_CASCADE_HEAD.IOUS", "MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS",  # with CascadeROIHeads
    "MODEL.ROI_BOX_HEAD.NAME", "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_WEIGHT", "MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS",
    "MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA", "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION",
    "MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO", "MODEL.ROI_BOX_HEAD.POOLER_TYPE", "MODEL.ROI_BOX_HEAD.NUM_FC",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "MODEL.ROI_BOX_HEAD.NUM_CONV", "MODEL.ROI_BOX_HEAD.CONV_DIM",
    "MODEL.ROI_BOX_HEAD.NORM",
    "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION", "MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO",
    "MODEL.ROI_MASK_HEAD.NUM_CONV", "MODEL.ROI_MASK_HEAD.CONV_DIM", "MODEL.ROI_MASK_HEAD.NORM",
    "MODEL.ROI_MASK_HEAD.POOLER_TYPE",
    "MODEL.KEYPOINT_ON", "MODEL.ROI_KEYPOINT_HEAD",  # Keypoint R-CNN (rethink.modeling.roi_heads.keypoint)
    # data
    "INPUT.MIN_SIZE_TRAIN", "INPUT.MIN_SIZE_TRAIN_SAMPLING", "INPUT.MAX_SIZE_TRAIN", "INPUT.MIN_SIZE_TEST",
    "INPUT.MAX_SIZE_TEST", "INPUT.RANDOM_FLIP", "INPUT.FORMAT", "INPUT.MASK_FORMAT",
    "INPUT.CROP",  # RandomCrop before the resize (rethink.data.transforms), training only
    "DATASETS.TRAIN", "DATASETS.TEST", "DATASETS.REGISTER",  # REGISTER: project key (your own datasets by path)
    "DATALOADER.NUM_WORKERS", "DATALOADER.ASPECT_RATIO_GROUPING", "DATALOADER.FILTER_EMPTY_ANNOTATIONS",
    # solver, schedule (SCHEDULE, SCHEDULE_UNIT, REFERENCE_IMS_PER_BATCH, CHECKPOINT_ITERS: project keys)
    "SOLVER.MAX_ITER", "SOLVER.BASE_LR", "SOLVER.MOMENTUM", "SOLVER.NESTEROV", "SOLVER.WEIGHT_DECAY",
    "SOLVER.WEIGHT_DECAY_NORM", "SOLVER.GAMMA", "SOLVER.STEPS", "SOLVER.WARMUP_FACTOR", "SOLVER.WARMUP_ITERS",
    "SOLVER.WARMUP_METHOD", "SOLVER.CHECKPOINT_PERIOD", "SOLVER.IMS_PER_BATCH", "SOLVER.BIAS_LR_FACTOR",
    "SOLVER.WEIGHT_DECAY_BIAS", "SOLVER.CLIP_GRADIENTS", "SOLVER.AMP",
    "SOLVER.SCHEDULE", "SOLVER.SCHEDULE_UNIT", "SOLVER.REFERENCE_IMS_PER_BATCH", "SOLVER.CHECKPOINT_ITERS",
    "SOLVER.CHECKPOINT_KEEP",
    # evaluation
    "TEST.AUG",  # test-time augmentation (rethink.modeling.tta), at --eval-only and the final evaluation
    "TEST.EVAL_PERIOD", "TEST.DETECTIONS_PER_IMAGE", "TEST.PRECISE_BN", "TEST.EVALUATOR", "TEST.KEYPOINT_OKS_SIGMAS",
    # run set-up (CUDNN_BENCHMARK, FLOAT32_PRECISION: rethink.engine.defaults.setup_torch_backends)
    "OUTPUT_DIR", "SEED", "CUDNN_BENCHMARK", "FLOAT32_PRECISION",
    "GLOBAL.HACK",  # read by nothing, in detectron2 as here
)

# detectron2 keys this project does not implement: {key or group: what is missing}. Accepted only at
# the value get_cfg() holds (detectron2's default); any other value is a ConfigError naming the key.
NOT_IMPLEMENTED = {
    "VERSION": "configs of other versions are not upgraded",
    "MODEL.LOAD_PROPOSALS": "precomputed proposals are not implemented",
    "MODEL.META_ARCHITECTURE": "the only architecture is GeneralizedRCNN",
    "MODEL.PROPOSAL_GENERATOR.NAME": "the only proposal generator is the RPN",
    "MODEL.PROPOSAL_GENERATOR.MIN_SIZE": "proposals are not filtered by size",
    "MODEL.ANCHOR_GENERATOR.NAME": "the only anchor generator is DefaultAnchorGenerator",
    "MODEL.ANCHOR_GENERATOR.ANGLES": "rotated anchors are not implemented",
    "MODEL.ANCHOR_GENERATOR.OFFSET": "anchors are centred on the top-left of each cell (offset 0) only",
    "MODEL.RPN.HEAD_NAME": "the only RPN head is StandardRPNHead",
    "MODEL.RPN.BOUNDARY_THRESH": "anchors crossing the image boundary are always kept",
    "MODEL.RPN.IOU_LABELS": "RPN matching labels are fixed (negative, ignored, positive)",
    "MODEL.RPN.BBOX_REG_LOSS_TYPE": "the only box-regression loss is smooth_l1",
    "MODEL.RPN.CONV_DIMS": "the RPN head has one conv as wide as its input",
    "MODEL.ROI_HEADS.IOU_LABELS": "RoI matching labels are fixed (background, foreground)",
    "MODEL.ROI_HEADS.PROPOSAL_APPEND_GT": "ground-truth boxes are always added to the proposals",
    "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE": "the only box-regression loss is smooth_l1",
    "MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES": "the mask head trains on proposals only",
    "MODEL.ROI_BOX_HEAD.USE_FED_LOSS": "the federated loss is not implemented",
    "MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE": "classification uses softmax cross-entropy only",
    "MODEL.ROI_BOX_HEAD.FED_LOSS_FREQ_WEIGHT_POWER": "the federated loss is not implemented",
    "MODEL.ROI_BOX_HEAD.FED_LOSS_NUM_CLASSES": "the federated loss is not implemented",
    "MODEL.ROI_MASK_HEAD.NAME": "the only mask head is MaskRCNNConvUpsampleHead",
    "MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK": "masks are predicted per class only",
    "MODEL.SEM_SEG_HEAD": "semantic segmentation is not implemented",
    "MODEL.PANOPTIC_FPN": "Panoptic FPN is not implemented",
    "MODEL.RETINANET": "RetinaNet is not implemented",
    "MODEL.RESNETS.RES5_DILATION": "dilated res5 is not implemented",
    "MODEL.FPN.FUSE_TYPE": "FPN levels are fused by sum only",
    "DATASETS.PROPOSAL_FILES_TRAIN": "precomputed proposals are not implemented",
    "DATASETS.PROPOSAL_FILES_TEST": "precomputed proposals are not implemented",
    "DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TRAIN": "precomputed proposals are not implemented",
    "DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TEST": "precomputed proposals are not implemented",
    "DATALOADER.SAMPLER_TRAIN": "the only training sampler is TrainingSampler",
    "DATALOADER.REPEAT_THRESHOLD": "repeat-factor sampling is not implemented",
    "DATALOADER.REPEAT_SQRT": "repeat-factor sampling is not implemented",
    "SOLVER.LR_SCHEDULER_NAME": "the only LR schedule is WarmupMultiStepLR",
    "SOLVER.BASE_LR_END": "the cosine LR schedule is not implemented",
    "SOLVER.NUM_DECAYS": "WarmupStepWithFixedGammaLR is not implemented",
    "SOLVER.RESCALE_INTERVAL": "WarmupStepWithFixedGammaLR is not implemented",
    "SOLVER.REFERENCE_WORLD_SIZE": "this project scales by SOLVER.REFERENCE_IMS_PER_BATCH instead",
    "TEST.EXPECTED_RESULTS": "checking results against expected values is not implemented",
    "VIS_PERIOD": "training-batch visualisation is not implemented",
}

class ConfigError(ValueError, UserError):
    """A config file or override is invalid; the message names the key and where it was set."""


def _get(cfg: CfgNode, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def leaf_keys(node: CfgNode, prefix: str = "") -> Iterator[Tuple[str, Any]]:
    """(full key, value) of every leaf under `node`."""
    for k, v in node.items():
        if isinstance(v, CfgNode):
            yield from leaf_keys(v, prefix + k + ".")
        else:
            yield prefix + k, v


def expand(names) -> Dict[str, str]:
    """{leaf key: the name in `names` that covers it}; a name that is a group covers its leaves."""
    out = {}
    for name in names:
        node = _get(_DEFAULTS, name)
        leaves = leaf_keys(node, name + ".") if isinstance(node, CfgNode) else [(name, node)]
        out.update({k: name for k, _ in leaves})
    return out


def _plain(value):
    """Lists and tuples compare equal when their items do (YAML gives lists where defaults hold tuples)."""
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


_DEFAULTS = get_cfg()
_D2_KEYS = {k for k, _ in leaf_keys(_C)}
_NOT_IMPLEMENTED_LEAVES = expand(NOT_IMPLEMENTED)


def describe_source(key: str, cfg: CfgNode, origins: Dict[str, str]) -> str:
    """Where `key`'s value came from: the file (a _BASE_ included) or "command line" that set it,
    else which defaults hold it, or that schedule resolution computed it."""
    if key in origins:
        return origins[key]
    if _plain(_get(cfg, key)) != _plain(_get(_DEFAULTS, key)):
        return "(resolved from SOLVER.SCHEDULE and SOLVER.REFERENCE_IMS_PER_BATCH)"
    return "(detectron2's default)" if key in _D2_KEYS else "(rethink default)"




def validate(cfg: CfgNode, origins: Dict[str, str]) -> None:
    def fail(key, why):
        raise ConfigError(f"{describe_source(key, cfg, origins)}: {key} = {_get(cfg, key)!r}: {why}")

    def one_of(key, allowed):
        if _get(cfg, key) not in allowed:
            fail(key, f"must be one of {list(allowed)}")

    for key, group in _NOT_IMPLEMENTED_LEAVES.items():
        default = _get(_DEFAULTS, key)
        if _plain(_get(cfg, key)) != _plain(default):
            fail(key, f"{NOT_IMPLEMENTED[group]}; only detectron2's default {default!r} is accepted")

    one_of("MODEL.BACKBONE.NAME", ["build_resnet_fpn_backbone"])
    # NUM_CLASSES 0 = from the data: the categories of the first DATASETS.TRAIN json, resolved at the run's start
    # (rethink.engine.defaults.resolve_num_classes); detectron2's configs set it explicitly (80 for COCO)
    if not isinstance(cfg.MODEL.ROI_HEADS.NUM_CLASSES, int) or cfg.MODEL.ROI_HEADS.NUM_CLASSES < 0:
        fail("MODEL.ROI_HEADS.NUM_CLASSES", "the number of categories, or 0 to take it from the training json")
    for i, entry in enumerate(cfg.DATASETS.REGISTER):
        if not (isinstance(entry, (list, tuple)) and len(entry) in (2, 3) and all(isinstance(x, str) and x
                                                                                   for x in entry[:2])):
            fail("DATASETS.REGISTER", f"entry {i} {entry!r}: each entry is [name, json, image_root] (strings; "
                                      f"image_root may be left out to find the images beside the json)")
    one_of("MODEL.ROI_HEADS.NAME", ["StandardROIHeads", "CascadeROIHeads"])
    if cfg.MODEL.ROI_HEADS.NAME == "CascadeROIHeads":
        c = cfg.MODEL.ROI_BOX_CASCADE_HEAD
        if not cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG:
            fail("MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", "CascadeROIHeads regresses class-agnostic boxes only "
                                                             "(as detectron2): set it True")
        if len(c.IOUS) < 1 or len(c.IOUS) != len(c.BBOX_REG_WEIGHTS):
            fail("MODEL.ROI_BOX_CASCADE_HEAD.IOUS", f"one IoU per stage, as many as BBOX_REG_WEIGHTS "
                                                    f"({len(c.BBOX_REG_WEIGHTS)})")
        if any(len(w) != 4 for w in c.BBOX_REG_WEIGHTS):
            fail("MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS", "four weights (wx, wy, ww, wh) per stage")
        if c.IOUS[0] != cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS[0]:
            fail("MODEL.ROI_BOX_CASCADE_HEAD.IOUS", f"the first stage's IoU must equal MODEL.ROI_HEADS.IOU_THRESHOLDS"
                                                    f"[0] = {cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS[0]} (stage 0 samples "
                                                    f"the proposals with it, as in detectron2)")
    one_of("MODEL.ROI_BOX_HEAD.NAME", ["FastRCNNConvFCHead"])
    if cfg.MODEL.KEYPOINT_ON:
        _validate_keypoints(cfg, fail, one_of)
    for key in ("MODEL.ROI_BOX_HEAD.POOLER_TYPE", "MODEL.ROI_MASK_HEAD.POOLER_TYPE"):
        one_of(key, ["ROIAlignV2", "ROIAlign"])
    for key in ("MODEL.RESNETS.NORM", "MODEL.FPN.NORM", "MODEL.ROI_BOX_HEAD.NORM", "MODEL.ROI_MASK_HEAD.NORM"):
        one_of(key, NORMS)
    one_of("MODEL.RESNETS.DEPTH", DEPTHS)
    one_of("MODEL.BACKBONE.FREEZE_AT", range(6))
    if len(cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS) != 1:
        fail("MODEL.ROI_HEADS.IOU_THRESHOLDS", "one IoU threshold (background below, foreground above)")
    if cfg.MODEL.RESNETS.DEPTH in (18, 34):
        if cfg.MODEL.RESNETS.RES2_OUT_CHANNELS != 64:
            fail("MODEL.RESNETS.RES2_OUT_CHANNELS", "ResNet-18/34 need 64 (as in detectron2)")
        if cfg.MODEL.RESNETS.NUM_GROUPS != 1:
            fail("MODEL.RESNETS.NUM_GROUPS", "ResNet-18/34 have no grouped convolutions")
    r = cfg.MODEL.RESNETS
    if len(r.DEFORM_ON_PER_STAGE) != 4 or any(not isinstance(v, bool) for v in r.DEFORM_ON_PER_STAGE):
        fail("MODEL.RESNETS.DEFORM_ON_PER_STAGE", "four booleans, one per stage res2..res5")
    if r.DEPTH in (18, 34) and any(r.DEFORM_ON_PER_STAGE):
        fail("MODEL.RESNETS.DEFORM_ON_PER_STAGE", "ResNet-18/34 have no deformable blocks (as in detectron2)")
    if r.DEFORM_NUM_GROUPS < 1 or (r.NUM_GROUPS * r.WIDTH_PER_GROUP) % r.DEFORM_NUM_GROUPS:
        fail("MODEL.RESNETS.DEFORM_NUM_GROUPS", f"a positive divisor of the res2 bottleneck width NUM_GROUPS x "
                                                f"WIDTH_PER_GROUP = {r.NUM_GROUPS * r.WIDTH_PER_GROUP}")
    crop = cfg.INPUT.CROP
    if crop.ENABLED:
        one_of("INPUT.CROP.TYPE", CROP_TYPES)
        size = list(crop.SIZE)
        if len(size) != 2:
            fail("INPUT.CROP.SIZE", "two values")
        if crop.TYPE in ("relative", "relative_range") and not all(0 < v <= 1 for v in size):
            fail("INPUT.CROP.SIZE", f"{crop.TYPE!r} crops take fractions of the image in (0, 1]")
        if crop.TYPE in ("absolute", "absolute_range") and not all(float(v).is_integer() and v >= 1 for v in size):
            fail("INPUT.CROP.SIZE", f"{crop.TYPE!r} crops take sizes in pixels (integers >= 1)")
        if crop.TYPE == "absolute_range" and size[0] > size[1]:
            fail("INPUT.CROP.SIZE", "'absolute_range' takes (min, max) with min <= max")
    feats = ["res2", "res3", "res4", "res5"]
    if list(cfg.MODEL.RESNETS.OUT_FEATURES) != feats:
        fail("MODEL.RESNETS.OUT_FEATURES", f"the FPN backbone takes {feats}")
    if list(cfg.MODEL.FPN.IN_FEATURES) != feats:
        fail("MODEL.FPN.IN_FEATURES", f"the FPN is built on {feats}")
    if list(cfg.MODEL.ROI_HEADS.IN_FEATURES) != ["p2", "p3", "p4", "p5"]:
        fail("MODEL.ROI_HEADS.IN_FEATURES", "the RoI heads pool from ['p2', 'p3', 'p4', 'p5']")
    if list(cfg.MODEL.RPN.IN_FEATURES) != ["p2", "p3", "p4", "p5", "p6"]:
        fail("MODEL.RPN.IN_FEATURES", "the RPN runs on ['p2', 'p3', 'p4', 'p5', 'p6']")
    if len(cfg.MODEL.ANCHOR_GENERATOR.SIZES) not in (1, 5):
        fail("MODEL.ANCHOR_GENERATOR.SIZES", "give one list of sizes per level (5) or one list for all")
    if len(cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS) not in (1, 5):
        fail("MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", "give one list per level (5) or one list for all")
    if cfg.MODEL.ROI_BOX_HEAD.NUM_FC < 1:
        fail("MODEL.ROI_BOX_HEAD.NUM_FC", "the box head needs at least one fc layer")
    if len(cfg.MODEL.PIXEL_MEAN) != 3 or len(cfg.MODEL.PIXEL_STD) != 3:
        fail("MODEL.PIXEL_MEAN", "PIXEL_MEAN and PIXEL_STD need 3 values")
    one_of("INPUT.FORMAT", ["BGR", "RGB"])
    one_of("INPUT.MIN_SIZE_TRAIN_SAMPLING", ["choice", "range"])
    if cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING == "range" and len(cfg.INPUT.MIN_SIZE_TRAIN) != 2:
        fail("INPUT.MIN_SIZE_TRAIN", "'range' sampling takes (min, max)")
    one_of("INPUT.RANDOM_FLIP", ["horizontal", "none"])
    one_of("INPUT.MASK_FORMAT", ["polygon", "bitmask"])
    one_of("SOLVER.WARMUP_METHOD", ["linear", "constant"])
    one_of("SOLVER.CLIP_GRADIENTS.CLIP_TYPE", ["value", "norm"])
    one_of("TEST.EVALUATOR", EVALUATORS)
    one_of("FLOAT32_PRECISION", FLOAT32_PRECISIONS)
    one_of("SOLVER.AMP.DTYPE", AMP_DTYPES)
    s = cfg.SOLVER
    if s.CHECKPOINT_KEEP < 0:
        fail("SOLVER.CHECKPOINT_KEEP", "must be >= 0 (0 keeps every checkpoint)")
    if s.MAX_ITER < 1:
        fail(_schedule_length_key(origins), f"gives MAX_ITER {s.MAX_ITER} after resolution (schedule, linear scaling); "
                                              f"it must be positive")
    if list(s.STEPS) != sorted(s.STEPS) or any(x <= 0 or x >= s.MAX_ITER for x in s.STEPS):
        why = f"must be increasing and inside (0, MAX_ITER={s.MAX_ITER})"
        if "SOLVER.STEPS" in origins:
            fail("SOLVER.STEPS", why)
        if s.SCHEDULE:  # STEPS derived from the run's length: blame the key that set the length
            n = next(n for n in range(1, 10000) if 0 < schedule_steps(n, s.SCHEDULE_UNIT)[0]
                     < schedule_steps(n, s.SCHEDULE_UNIT)[1] < n)
            fail(_schedule_length_key(origins),
                 f"too short: the LR drops derived from it (SOLVER.SCHEDULE's rule), SOLVER.STEPS = {tuple(s.STEPS)}, "
                 f"{why}; a run needs at least {n} iterations (MAX_ITER {s.MAX_ITER} after resolution), or set "
                 f"SOLVER.STEPS explicitly")
        if "SOLVER.MAX_ITER" in origins:
            fail("SOLVER.MAX_ITER", f"SOLVER.STEPS = {tuple(s.STEPS)} {describe_source('SOLVER.STEPS', cfg, origins)} "
                                    f"{why}; set SOLVER.STEPS too")
        fail("SOLVER.STEPS", why)


def _validate_keypoints(cfg: CfgNode, fail, one_of) -> None:
    """MODEL.ROI_KEYPOINT_HEAD and TEST.KEYPOINT_OKS_SIGMAS with MODEL.KEYPOINT_ON (detectron2's checks, made at
    load time: the sigmas' count is asserted at evaluation there, TTA with keypoints refused at test time)."""
    k = cfg.MODEL.ROI_KEYPOINT_HEAD
    one_of("MODEL.ROI_KEYPOINT_HEAD.NAME", ["KRCNNConvDeconvUpsampleHead"])
    one_of("MODEL.ROI_KEYPOINT_HEAD.POOLER_TYPE", ["ROIAlignV2", "ROIAlign"])
    if not isinstance(k.NUM_KEYPOINTS, int) or k.NUM_KEYPOINTS < 1:
        fail("MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS", "must be a positive integer")
    if k.POOLER_RESOLUTION < 1:
        fail("MODEL.ROI_KEYPOINT_HEAD.POOLER_RESOLUTION", "must be at least 1")
    if any(not isinstance(d, int) or d < 1 for d in k.CONV_DIMS):
        fail("MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS", "the width of each conv, positive integers")
    if k.MIN_KEYPOINTS_PER_IMAGE < 0:
        fail("MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE", "must be >= 0 (0: keep every image)")
    sigmas = list(cfg.TEST.KEYPOINT_OKS_SIGMAS)
    if sigmas and (len(sigmas) != k.NUM_KEYPOINTS or not all(s > 0 for s in sigmas)):
        fail("TEST.KEYPOINT_OKS_SIGMAS", f"one positive sigma per keypoint (MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS = "
                                         f"{k.NUM_KEYPOINTS}), or empty for COCO's 17")
    if not sigmas and k.NUM_KEYPOINTS != 17:
        fail("TEST.KEYPOINT_OKS_SIGMAS", f"empty means COCO's sigmas of its 17 person keypoints, but "
                                         f"MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS = {k.NUM_KEYPOINTS}: give one each")
    if cfg.TEST.AUG.ENABLED:
        fail("TEST.AUG.ENABLED", "test-time augmentation of keypoints is not supported (as in detectron2): "
                                 "set it False with MODEL.KEYPOINT_ON")


def _schedule_length_key(origins: Dict[str, str]) -> str:
    """The key that set the run's length: SOLVER.MAX_ITER when set explicitly, else SOLVER.SCHEDULE."""
    if "SOLVER.MAX_ITER" in origins or "SOLVER.SCHEDULE" not in origins:
        return "SOLVER.MAX_ITER"
    return "SOLVER.SCHEDULE"


# Keys checked before schedule resolution (which divides by IMS_PER_BATCH and rescales the
# iteration counts), so that the error shows the value the user wrote: {key: (lowest allowed, why)}.
LOWER_BOUNDS = {
    "SOLVER.IMS_PER_BATCH": (1, "must be at least 1"),
    "SOLVER.REFERENCE_IMS_PER_BATCH": (0, "must be >= 0 (0: no linear scaling)"),
    "SOLVER.SCHEDULE_UNIT": (1, "must be at least 1"),
    "SOLVER.MAX_ITER": (1, "must be at least 1"),
    "SOLVER.WARMUP_ITERS": (0, "must be >= 0 (0: no warm-up)"),
    "SOLVER.CHECKPOINT_PERIOD": (0, "must be >= 0 (0: no periodic checkpoints, only the final one)"),
    "TEST.EVAL_PERIOD": (0, "must be >= 0 (0: evaluate at the end only)"),
    "TEST.PRECISE_BN.NUM_ITER": (1, "must be at least 1"),
    "TEST.DETECTIONS_PER_IMAGE": (1, "must be at least 1"),
    "DATALOADER.NUM_WORKERS": (0, "must be >= 0 (0: load in the training process)"),
    "SOLVER.WEIGHT_DECAY": (0, "must be >= 0"),
    "SOLVER.WEIGHT_DECAY_NORM": (0, "must be >= 0"),
    "SOLVER.MOMENTUM": (0, "must be >= 0"),
    "SOLVER.WARMUP_FACTOR": (0, "must be >= 0"),
}
# Keys that must be strictly positive.
POSITIVE = ("SOLVER.BASE_LR", "SOLVER.GAMMA", "SOLVER.BIAS_LR_FACTOR")


def validate_before_resolution(cfg: CfgNode, origins: Dict[str, str]) -> None:
    """Bounds of the numbers that schedule resolution computes with (see :data:`LOWER_BOUNDS`)."""
    def fail(key, why):
        raise ConfigError(f"{describe_source(key, cfg, origins)}: {key} = {_get(cfg, key)!r}: {why}")

    for key, (low, why) in LOWER_BOUNDS.items():
        if _get(cfg, key) < low:
            fail(key, why)
    for key in POSITIVE:
        if not _get(cfg, key) > 0:
            fail(key, "must be positive")
    if not 0.0 <= cfg.MODEL.WEIGHTS_MIN_BACKBONE_MATCH <= 1.0:
        fail("MODEL.WEIGHTS_MIN_BACKBONE_MATCH", "must be a fraction in [0, 1]")
    for it in cfg.SOLVER.CHECKPOINT_ITERS:
        if not isinstance(it, int) or it < 1:
            fail("SOLVER.CHECKPOINT_ITERS", f"{it!r} is not a positive iteration count")
