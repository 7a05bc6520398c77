"""The paper's numbers, once, each with the table or figure it comes from.

He, Girshick, Dollár. Rethinking ImageNet Pre-training. ICCV 2019 (arXiv:1811.08883).
All numbers are COCO val2017 AP in percent, Mask R-CNN with FPN, trained on train2017 at 16
images/batch. `lookup()` finds the reference for a run's settings.
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

LESS_DATA = [
    Reference("Sec. 5.4, Fig. 6", 50, "GN", "scratch", None, 35000, box_ap=36.3, note="35k images"),
    Reference("Sec. 5.4, Fig. 6", 50, "GN", "pretrained", None, 35000, box_ap=36.3, note="35k images"),
    Reference("Sec. 5.4, Fig. 7", 50, "GN", "pretrained", None, 10000, box_ap=26.0, iterations=60000,
              note="10k images"),
    Reference("Sec. 5.4, Fig. 7", 50, "GN", "scratch", None, 10000, box_ap=25.9, iterations=220000, note="10k images"),
    Reference("Sec. 5.4, Fig. 8", 50, "GN", "pretrained", None, 1000, box_ap=9.9, note="1k images"),
    Reference("Sec. 5.4, Fig. 8", 50, "GN", "scratch", None, 1000, box_ap=3.5,
              note="1k images; 5.4 after a scratch grid search"),
]

# detectron2 model zoo (configs/Misc), for comparison with a widely used re-implementation
DETECTRON2_ZOO = [
    Reference("detectron2 zoo", 50, "GN", "scratch", 3.0, None, box_ap=39.9, mask_ap=36.6),
    Reference("detectron2 zoo", 50, "GN", "scratch", 9.0, None, box_ap=43.7, mask_ap=39.6),
    Reference("detectron2 zoo", 50, "SyncBN", "scratch", 9.0, None, box_ap=43.6, mask_ap=39.3),
    Reference("detectron2 zoo", 50, "GN", "pretrained", 3.0, None, box_ap=42.6, mask_ap=38.6),
    Reference("detectron2 zoo", 50, "SyncBN", "pretrained", 3.0, None, box_ap=41.9, mask_ap=37.8),
]

PAPER = list(_table1()) + TABLE2 + LESS_DATA


def lookup(depth: int, norm: str, init: str, schedule: Optional[float] = None,
           train_images: Optional[int] = None, include_zoo: bool = False) -> Optional[Reference]:
    """The paper's reference for these settings (Table 2 preferred over Table 1 at 6x, since it
    also has mask AP), or None. `train_images` None means the full train2017."""
    pool = PAPER + (DETECTRON2_ZOO if include_zoo else [])
    hits = [r for r in pool if (r.depth, r.norm, r.init) == (depth, norm, init) and r.train_images == train_images
            and (train_images is not None or (schedule is not None and r.schedule is not None
                                              and abs(r.schedule - schedule) < 1e-6))]
    hits.sort(key=lambda r: (r.source != "Table 2", r.source == "detectron2 zoo"))
    return hits[0] if hits else None
