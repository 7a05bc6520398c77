"""The synthetic classification set (the demo's ImageNet stand-in): its classes are never the detection
set's, scenes hold several objects of one class, and the same arguments give the same files."""
import os

import numpy as np
import pytest
from PIL import Image

from rethink.data.synthetic import (
    CATEGORIES,
    CLASSIFICATION_CLASSES,
    SCENE_CLASSES,
    _draw_object,
    make_synthetic_classification,
)

DETECTION_CLASSES = {c["name"] for c in CATEGORIES}


def test_default_set(tmp_path):
    cls = make_synthetic_classification(str(tmp_path / "a"), num_per_class=3, seed=0, size=40)
    assert cls["classes"] == list(CLASSIFICATION_CLASSES)
    assert sorted(os.listdir(cls["train"])) == sorted(cls["classes"]) == sorted(os.listdir(cls["val"]))
    assert len(os.listdir(os.path.join(cls["train"], "ring"))) == 3
    assert len(os.listdir(os.path.join(cls["val"], "ring"))) == 2  # max(2, 3 // 4)
    with Image.open(os.path.join(cls["train"], "star", "00000.png")) as im:
        assert im.size == (40, 40) and im.mode == "RGB"


def test_classes_are_never_the_detection_classes(tmp_path):
    assert DETECTION_CLASSES.isdisjoint(SCENE_CLASSES) and DETECTION_CLASSES.isdisjoint(CLASSIFICATION_CLASSES)
    with pytest.raises(ValueError, match="differ from the detection classes"):
        make_synthetic_classification(str(tmp_path / "bad"), num_per_class=1, classes=["star", "ellipse"])
    with pytest.raises(ValueError, match="unknown classification shape"):
        make_synthetic_classification(str(tmp_path / "bad2"), num_per_class=1, classes=["blob"])


def test_scenes_deterministic(tmp_path):
    kw = dict(num_per_class=2, num_val_per_class=1, seed=3, size=64, classes=SCENE_CLASSES, objects=(2, 3))
    a = make_synthetic_classification(str(tmp_path / "a"), **kw)
    b = make_synthetic_classification(str(tmp_path / "b"), **kw)
    assert a["classes"] == list(SCENE_CLASSES)
    for split in ("train", "val"):
        for c in SCENE_CLASSES:
            for f in sorted(os.listdir(os.path.join(a[split], c))):
                left, right = (open(os.path.join(r[split], c, f), "rb").read() for r in (a, b))
                assert left == right, (split, c, f)
    other = make_synthetic_classification(str(tmp_path / "c"), **{**kw, "seed": 4})
    img = os.path.join("arrow", "00000.png")
    assert open(os.path.join(a["train"], img), "rb").read() != open(os.path.join(other["train"], img), "rb").read()


def test_object_drawn_in_its_box():
    """One object spans its box: pixels change inside the box only."""
    rng = np.random.Generator(np.random.PCG64(0))
    for cls in SCENE_CLASSES:
        pil = Image.new("RGB", (64, 64), (0, 0, 0))
        _draw_object(pil, rng, cls, (10.0, 20.0, 40.0, 50.0))
        ys, xs = np.nonzero(np.asarray(pil).any(axis=2))
        assert xs.min() >= 9 and xs.max() <= 41 and ys.min() >= 19 and ys.max() <= 51, cls
        assert max(xs.max() - xs.min(), ys.max() - ys.min()) >= 25, cls  # it spans its box (a crescent: one way)
