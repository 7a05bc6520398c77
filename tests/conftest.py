"""Shared fixtures: tiny configs that build and run fast on 2 CPU cores."""
from pathlib import Path

import pytest
import torch

from rethink.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
# detectron2's own outputs (../shared/reference/detectron2-golden): parity tests skip, saying why, without it
GOLDEN = ROOT.parent / "shared" / "reference" / "detectron2-golden"

TINY_R18 = [
    "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
    "MODEL.ROI_HEADS.NUM_CLASSES", "3", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "64",
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "200", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "100",
    "MODEL.RPN.PRE_NMS_TOPK_TEST", "200", "MODEL.RPN.POST_NMS_TOPK_TEST", "100",
    "MODEL.FPN.OUT_CHANNELS", "64", "MODEL.ROI_BOX_HEAD.CONV_DIM", "64", "MODEL.ROI_BOX_HEAD.FC_DIM", "128",
    "MODEL.ROI_MASK_HEAD.CONV_DIM", "64",
]


def tiny_cfg(*overrides, base="scratch_gn_r50.yaml"):
    """R18-FPN with narrow heads and few proposals, 3 classes."""
    return load_config(CONFIGS / base, TINY_R18 + list(overrides))


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    torch.set_num_threads(2)
    yield


@pytest.fixture(scope="module")
def isolated_cache(tmp_path_factory):
    """$RETHINK_CACHE in a fresh temporary folder for one test module (synthetic data, indexes)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RETHINK_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def golden_env(tmp_path_factory):
    """coco_2017_train/val resolve to the golden fixture's images (DETECTRON2_DATASETS), caches in a temp dir."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DETECTRON2_DATASETS", str(GOLDEN))
        mp.setenv("RETHINK_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield
