"""Checks that a merged config asks only for what the model builder and engine implement."""
from typing import Dict

from fvcore.common.config import CfgNode

NORMS = ("", "BN", "SyncBN", "FrozenBN", "GN")
DEPTHS = (18, 34, 50, 101, 152)


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key and where it was set."""


def _get(cfg: CfgNode, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def validate(cfg: CfgNode, origins: Dict[str, str]) -> None:
    def fail(key, why):
        raise ConfigError(f"{origins.get(key, 'defaults')}: {key} = {_get(cfg, key)!r}: {why}")

    def one_of(key, allowed):
        if _get(cfg, key) not in allowed:
            fail(key, f"must be one of {list(allowed)}")

    one_of("MODEL.META_ARCHITECTURE", ["GeneralizedRCNN"])
    one_of("MODEL.BACKBONE.NAME", ["build_resnet_fpn_backbone"])
    one_of("MODEL.PROPOSAL_GENERATOR.NAME", ["RPN"])
    one_of("MODEL.RPN.HEAD_NAME", ["StandardRPNHead"])
    one_of("MODEL.ROI_HEADS.NAME", ["StandardROIHeads"])
    one_of("MODEL.ROI_BOX_HEAD.NAME", ["FastRCNNConvFCHead"])
    one_of("MODEL.ROI_MASK_HEAD.NAME", ["MaskRCNNConvUpsampleHead"])
    one_of("MODEL.ANCHOR_GENERATOR.NAME", ["DefaultAnchorGenerator"])
    for key in ("MODEL.ROI_BOX_HEAD.POOLER_TYPE", "MODEL.ROI_MASK_HEAD.POOLER_TYPE"):
        one_of(key, ["ROIAlignV2", "ROIAlign"])
    for key in ("MODEL.RESNETS.NORM", "MODEL.FPN.NORM", "MODEL.ROI_BOX_HEAD.NORM", "MODEL.ROI_MASK_HEAD.NORM"):
        one_of(key, NORMS)
    one_of("MODEL.RESNETS.DEPTH", DEPTHS)
    one_of("MODEL.BACKBONE.FREEZE_AT", range(6))
    one_of("MODEL.RESNETS.RES5_DILATION", [1])
    one_of("MODEL.FPN.FUSE_TYPE", ["sum"])
    one_of("MODEL.KEYPOINT_ON", [False])
    one_of("MODEL.LOAD_PROPOSALS", [False])
    one_of("MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", [False])
    one_of("MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES", [False])
    one_of("MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK", [False])
    # detectron2 keys whose other values this model does not implement
    one_of("MODEL.RPN.BBOX_REG_LOSS_TYPE", ["smooth_l1"])
    one_of("MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE", ["smooth_l1"])
    one_of("MODEL.ROI_HEADS.PROPOSAL_APPEND_GT", [True])
    one_of("MODEL.RPN.BOUNDARY_THRESH", [-1])
    one_of("MODEL.PROPOSAL_GENERATOR.MIN_SIZE", [0])
    one_of("SOLVER.REFERENCE_WORLD_SIZE", [0])  # this project scales by SOLVER.REFERENCE_IMS_PER_BATCH
    if list(cfg.MODEL.RPN.IOU_LABELS) != [0, -1, 1]:
        fail("MODEL.RPN.IOU_LABELS", "only [0, -1, 1] is implemented")
    if list(cfg.MODEL.ROI_HEADS.IOU_LABELS) != [0, 1] or len(cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS) != 1:
        fail("MODEL.ROI_HEADS.IOU_LABELS", "only one IoU threshold with labels [0, 1] is implemented")
    if any(cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE):
        fail("MODEL.RESNETS.DEFORM_ON_PER_STAGE", "deformable convolutions are not implemented")
    if cfg.MODEL.RESNETS.DEPTH in (18, 34):
        if cfg.MODEL.RESNETS.RES2_OUT_CHANNELS != 64:
            fail("MODEL.RESNETS.RES2_OUT_CHANNELS", "ResNet-18/34 need 64 (as in detectron2)")
        if cfg.MODEL.RESNETS.NUM_GROUPS != 1:
            fail("MODEL.RESNETS.NUM_GROUPS", "ResNet-18/34 have no grouped convolutions")
    feats = ["res2", "res3", "res4", "res5"]
    if list(cfg.MODEL.FPN.IN_FEATURES) != feats:
        fail("MODEL.FPN.IN_FEATURES", f"the FPN is built on {feats}")
    if list(cfg.MODEL.ROI_HEADS.IN_FEATURES) != ["p2", "p3", "p4", "p5"]:
        fail("MODEL.ROI_HEADS.IN_FEATURES", "the RoI heads pool from ['p2', 'p3', 'p4', 'p5']")
    if list(cfg.MODEL.RPN.IN_FEATURES) != ["p2", "p3", "p4", "p5", "p6"]:
        fail("MODEL.RPN.IN_FEATURES", "the RPN runs on ['p2', 'p3', 'p4', 'p5', 'p6']")
    sizes = cfg.MODEL.ANCHOR_GENERATOR.SIZES
    if len(sizes) not in (1, 5):
        fail("MODEL.ANCHOR_GENERATOR.SIZES", "give one list of sizes per level (5) or one list for all")
    if len(cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS) not in (1, 5):
        fail("MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", "give one list per level (5) or one list for all")
    if cfg.MODEL.ANCHOR_GENERATOR.OFFSET != 0.0:
        fail("MODEL.ANCHOR_GENERATOR.OFFSET", "only 0.0 is implemented")
    if cfg.MODEL.ROI_BOX_HEAD.NUM_FC < 1:
        fail("MODEL.ROI_BOX_HEAD.NUM_FC", "the box head needs at least one fc layer")
    if len(cfg.MODEL.PIXEL_MEAN) != 3 or len(cfg.MODEL.PIXEL_STD) != 3:
        fail("MODEL.PIXEL_MEAN", "PIXEL_MEAN and PIXEL_STD need 3 values")
    one_of("INPUT.FORMAT", ["BGR", "RGB"])
    one_of("INPUT.MIN_SIZE_TRAIN_SAMPLING", ["choice", "range"])
    if cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING == "range" and len(cfg.INPUT.MIN_SIZE_TRAIN) != 2:
        fail("INPUT.MIN_SIZE_TRAIN", "'range' sampling takes (min, max)")
    one_of("INPUT.RANDOM_FLIP", ["horizontal", "none"])
    one_of("INPUT.CROP.ENABLED", [False])
    one_of("INPUT.MASK_FORMAT", ["polygon", "bitmask"])
    one_of("SOLVER.LR_SCHEDULER_NAME", ["WarmupMultiStepLR"])
    one_of("SOLVER.WARMUP_METHOD", ["linear", "constant"])
    one_of("SOLVER.CLIP_GRADIENTS.CLIP_TYPE", ["value", "norm"])
    one_of("TEST.EVALUATOR", ["faster_coco_eval", "pycocotools"])
    one_of("TEST.AUG.ENABLED", [False])
    s = cfg.SOLVER
    if s.IMS_PER_BATCH < 1:
        fail("SOLVER.IMS_PER_BATCH", "must be positive")
    if s.MAX_ITER < 1:
        fail("SOLVER.MAX_ITER", "must be positive")
    if list(s.STEPS) != sorted(s.STEPS) or any(x <= 0 or x >= s.MAX_ITER for x in s.STEPS):
        fail("SOLVER.STEPS", f"must be increasing and inside (0, MAX_ITER={s.MAX_ITER})")
