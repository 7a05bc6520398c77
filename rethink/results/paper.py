"""The paper's numbers, once, each with the table or figure it comes from.

He, Girshick, Dollár. Rethinking ImageNet Pre-training. ICCV 2019 (arXiv:1811.08883); tables, figures and
sections are numbered as in arXiv v1 (R101-GN curves Figure 3, SyncBN Figure 4, enhanced baselines Figure 5 /
Sec. 5.1, less data Sec. 5.2 / Figures 7-8, large model Table 3).
All numbers are COCO val2017 AP in percent, Mask R-CNN with FPN, trained on train2017 at 16
images/batch, except the PASCAL VOC ones (Sec. 5, ``VOC``: Faster R-CNN, VOC mAP on VOC2012 val).
`lookup()` finds the reference for a run's settings (rethink.results.runs.config_settings reads those beyond
depth/norm/init/schedule/data from a run's config: cascade, train aug, recipe, ResNeXt).
"""
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Reference:
    source: str  # e.g. "Table 1"
    depth: int
    norm: str  # "GN" or "SyncBN"
    init: str  # "scratch" or "pretrained"
    schedule: Optional[float]  # in units of 1x = 90k iterations; None when given in iterations
    train_images: Optional[int]  # None = all of train2017 (118k)
    box_ap: Optional[float] = None
    box_ap50: Optional[float] = None
    box_ap75: Optional[float] = None
    mask_ap: Optional[float] = None
    mask_ap50: Optional[float] = None
    mask_ap75: Optional[float] = None
    iterations: Optional[int] = None
    note: str = ""
    cascade: bool = False  # Cascade R-CNN heads
    train_aug: bool = False  # training-time scale augmentation (short side from [640, 800])
    test_aug: bool = False  # test-time augmentation (the *_TTA metrics of a run)
    recipe: str = "plain"  # less data: "retuned" (Sec. 5.2's recipe), "scratch_tuned" (grid search for scratch)
    resnext: str = ""  # "" = ResNet; "32x8d" = ResNeXt groups x width
    dataset: str = "coco"  # "coco" (val2017 AP) or "voc" (PASCAL VOC: voc_map)
    voc_map: Optional[float] = None  # VOC mAP (AP at IoU 0.5, percent): a VOC run's bbox/AP50
    keypoint_ap: Optional[float] = None  # COCO person keypoint AP (OKS, val2017): a keypoint run's keypoints/AP


def _table1():
    box = {
        (50, "scratch"): (36.8, 39.5, 40.6, 40.7, 41.3),
        (50, "pretrained"): (40.3, 40.8, 40.9, 40.9, 41.1),
        (101, "scratch"): (38.2, 41.0, 41.8, 42.2, 42.7),
        (101, "pretrained"): (41.8, 42.3, 42.3, 41.9, 42.2),
    }
    for (depth, init), values in box.items():
        for n, ap in zip((2, 3, 4, 5, 6), values):
            yield Reference("Table 1", depth, "GN", init, float(n), None, box_ap=ap)


TABLE2 = [
    Reference("Table 2", 50, "GN", "scratch", 6.0, None, 41.3, 61.8, 45.6, 36.6, 59.0, 38.9),
    Reference("Table 2", 50, "GN", "pretrained", 6.0, None, 41.1, 61.7, 44.6, 36.4, 58.5, 38.7),
    Reference("Table 2", 101, "GN", "scratch", 6.0, None, 42.7, 62.9, 47.0, 37.6, 59.9, 39.7),
    Reference("Table 2", 101, "GN", "pretrained", 6.0, None, 42.3, 62.6, 46.2, 37.2, 59.7, 39.7),
]

# Sec. 5.2 (less data): the recipe re-tuned on the pre-trained models ("training-time scale augmentation range
# of [512, 800] ..., a starting learning rate of 0.04 (vs. 0.02), and a learning rate decay factor of 0.02 (vs.
# 0.1)", footnote 2) and applied unchanged to the models from scratch. Box AP.
_RETUNED = dict(recipe="retuned")
LESS_DATA = [
    Reference("Sec. 5.2, Fig. 7 (middle)", 50, "GN", "pretrained", 6.0, 35000, box_ap=36.3, iterations=540000,
              note="35k images; optimal at 6x", **_RETUNED),
    Reference("Sec. 5.2, Fig. 7 (middle)", 50, "GN", "scratch", None, 35000, box_ap=36.3, note="35k images",
              **_RETUNED),
    Reference("Sec. 5.2, Fig. 7 (right)", 50, "GN", "pretrained", None, 10000, box_ap=26.0, iterations=60000,
              note="10k images; slight degradation when training more", **_RETUNED),
    Reference("Sec. 5.2, Fig. 7 (right)", 50, "GN", "scratch", None, 10000, box_ap=25.9, iterations=220000,
              note="10k images", **_RETUNED),
    Reference("Sec. 5.2 (text)", 50, "GN", "pretrained", None, 3500, box_ap=16.0, note="3.5k images; peak", **_RETUNED),
    Reference("Sec. 5.2 (text)", 50, "GN", "scratch", None, 3500, box_ap=9.3, note="3.5k images", **_RETUNED),
    Reference("Sec. 5.2, Fig. 8", 50, "GN", "pretrained", None, 1000, box_ap=9.9, note="1k images", **_RETUNED),
    Reference("Sec. 5.2, Fig. 8", 50, "GN", "scratch", None, 1000, box_ap=3.5,
              note="1k images; 5.4 after a scratch grid search", **_RETUNED),
    Reference("Sec. 5.2 (text)", 50, "GN", "scratch", None, 1000, box_ap=5.4, recipe="scratch_tuned",
              note="1k images; hyper-parameters grid-searched for the scratch model (one experiment)"),
]

# Sec. 5.1 "Enhanced baselines", Figure 5: R50/R101-FPN GN with train aug (9x from scratch, 6x pre-trained), then
# Cascade R-CNN (scratch: cascade for the final 270k iterations), then test-time augmentation of that model.
# The figure's bars are not in the paper's text; what the text gives is here: the '+ test aug' mask APs (Sec. 5.1),
# R101 scratch 'train aug' (= Table 3's R101 row) and R101 scratch 'cascade + train aug' as tensorpack's
# examples/FasterRCNN/README.md quotes Figure 5 ("Detectron numbers are taken from Fig. 5"). The other bars are
# still to be read off the figure.
_AUG = dict(train_aug=True)
_CAS = dict(train_aug=True, cascade=True)
_TTA = dict(train_aug=True, cascade=True, test_aug=True)
FIGURE5 = [
    Reference("Table 3 / Figure 5", 101, "GN", "scratch", 9.0, None, 45.0, 65.7, 49.3, 39.5, 62.5, 42.1,
              note="R101 w/ train aug (from scratch)", **_AUG),
    Reference("Figure 5 (via tensorpack)", 101, "GN", "scratch", 9.0, None, box_ap=47.4, mask_ap=40.5,
              note="cascade + train aug; cascade for the final 270k iterations", **_CAS),
    Reference("Sec. 5.1 / Figure 5", 50, "GN", "scratch", 9.0, None, mask_ap=41.6,
              note="cascade + train aug + test aug", **_TTA),
    Reference("Sec. 5.1 / Figure 5", 50, "GN", "pretrained", 6.0, None, mask_ap=40.9,
              note="cascade + train aug + test aug", **_TTA),
    Reference("Sec. 5.1 / Figure 5", 101, "GN", "scratch", 9.0, None, mask_ap=42.5,
              note="cascade + train aug + test aug", **_TTA),
    Reference("Sec. 5.1 / Figure 5", 101, "GN", "pretrained", 6.0, None, mask_ap=41.9,
              note="cascade + train aug + test aug", **_TTA),
]

# Table 3: Mask R-CNN X152-32x8d FPN with GN from scratch (schedule not given in the paper: None matches any);
# the R101 row is in FIGURE5. The pre-trained counterpart of the final model: Sec. 5.1 text.
_X = dict(resnext="32x8d")
TABLE3 = [
    Reference("Table 3", 152, "GN", "scratch", None, None, 46.4, 67.1, 51.1, 40.5, 63.9, 43.4,
              note="X152 w/ train aug", **_X, **_AUG),
    Reference("Table 3", 152, "GN", "scratch", None, None, 48.6, 66.8, 52.9, 41.4, 64.2, 44.6,
              note="X152 + cascade", **_X, **_CAS),
    Reference("Table 3", 152, "GN", "scratch", None, None, 50.9, 68.7, 55.4, 43.2, 66.1, 46.8,
              note="X152 + test aug (COCO test-challenge: 51.3 box / 43.6 mask)", **_X, **_TTA),
    Reference("Sec. 5.1 (text)", 152, "GN", "pretrained", None, None, box_ap=50.3, mask_ap=42.5,
              note="X152 with ImageNet pre-training, the same model (cascade, train and test aug)", **_X, **_TTA),
]

# detectron2 model zoo (configs/Misc), for comparison with a widely used re-implementation
DETECTRON2_ZOO = [
    Reference("detectron2 zoo", 50, "GN", "scratch", 3.0, None, box_ap=39.9, mask_ap=36.6),
    Reference("detectron2 zoo", 50, "GN", "scratch", 9.0, None, box_ap=43.7, mask_ap=39.6),
    Reference("detectron2 zoo", 50, "SyncBN", "scratch", 9.0, None, box_ap=43.6, mask_ap=39.3),
    Reference("detectron2 zoo", 50, "GN", "pretrained", 3.0, None, box_ap=42.6, mask_ap=38.6),
    Reference("detectron2 zoo", 50, "SyncBN", "pretrained", 3.0, None, box_ap=41.9, mask_ap=37.8),
]

# Sec. 5 "breakdown regimes" (PASCAL VOC): Faster R-CNN R101-FPN with GN and training-time augmentation, trained on
# VOC2007 trainval + VOC2012 train, evaluated on VOC2012 val (VOC mAP); one length each (configs/voc/).
VOC = [
    Reference("Sec. 5 (PASCAL VOC)", 101, "GN", "pretrained", None, None, iterations=18000, voc_map=82.7,
              train_aug=True, dataset="voc", note="at 18k iterations"),
    Reference("Sec. 5 (PASCAL VOC)", 101, "GN", "scratch", None, None, iterations=144000, voc_map=77.6,
              train_aug=True, dataset="voc", note="at 144k iterations; does not catch up when trained longer"),
]

# Figure 6 (arXiv v1): COCO person keypoints, Mask R-CNN R50-FPN with GN (keypoint head), 2x and 3x; the caption
# gives the 2x numbers ("65.6 vs. 65.5 (random init vs. pre-training) with 2x schedules"); the 3x points are only
# plotted. dataset "coco_keypoints": keypoint runs (MODEL.KEYPOINT_ON) are matched to these alone.
KEYPOINTS = [
    Reference("Figure 6", 50, "GN", "scratch", 2.0, None, keypoint_ap=65.6, dataset="coco_keypoints",
              note="COCO keypoint AP, val2017"),
    Reference("Figure 6", 50, "GN", "pretrained", 2.0, None, keypoint_ap=65.5, dataset="coco_keypoints",
              note="COCO keypoint AP, val2017"),
]

PAPER = list(_table1()) + TABLE2 + LESS_DATA + FIGURE5 + TABLE3 + VOC + KEYPOINTS


def lookup(depth: int, norm: str, init: str, schedule: Optional[float] = None,
           train_images: Optional[int] = None, include_zoo: bool = False, cascade: bool = False,
           train_aug: bool = False, test_aug: bool = False, recipe: Optional[str] = None,
           resnext: str = "", dataset: str = "coco") -> Optional[Reference]:
    """The paper's reference for these settings (Table 2 preferred over Table 1 at 6x, since it
    also has mask AP), or None. `train_images` None means the full train2017; with less data the schedule
    is not compared (the paper reports each curve's best point) and `recipe` None takes the paper's recipe
    ("retuned"; "plain" finds none: the paper gives no number for it). A reference without a schedule
    (Table 3) matches any. `test_aug`: the reference for a run's *_TTA metrics. `dataset` "voc": the PASCAL VOC
    numbers (one per init, any schedule)."""
    pool = PAPER + (DETECTRON2_ZOO if include_zoo else [])

    def schedule_ok(r: Reference) -> bool:
        if train_images is not None or r.schedule is None:
            return True
        return schedule is not None and abs(r.schedule - schedule) < 1e-6

    hits = [r for r in pool if (r.depth, r.norm, r.init, r.dataset) == (depth, norm, init, dataset)
            and r.train_images == train_images
            and (r.cascade, r.train_aug, r.test_aug, r.resnext) == (cascade, train_aug, test_aug, resnext)
            and (r.recipe == recipe if recipe is not None else r.recipe in ("plain", "retuned")) and schedule_ok(r)]
    hits.sort(key=lambda r: (r.source != "Table 2", r.source == "detectron2 zoo"))
    return hits[0] if hits else None
