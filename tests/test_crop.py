"""INPUT.CROP in the training mapper, with detectron2's semantics (rethink.data.transforms):
crop of the original image before the resize and flip, boxes and masks cut by it (boxes recomputed
from the masks with MODEL.MASK_ON), emptied instances dropped, crop sizes within the configured
ranges, the crop drawn first from the per-sample generator, bad values refused naming the key."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from rethink.config import ConfigError, get_cfg, load_config
from rethink.data.coco import CocoDataset
from rethink.data.transforms import DatasetMapper, check_crop, crop_polygon, sample_crop
from rethink.structures import polygons_to_bitmask

from .conftest import CONFIGS

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

H, W = 40, 60
CROP = (10, 20, 30, 30)  # y0, x0, h, w
TRIANGLE = [10.0, 10.0, 40.0, 10.0, 10.0, 40.0]  # x, y pairs; cut by the crop's left edge x = 20


def _cfg(*overrides):
    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.MASK_ON", True, "INPUT.MAX_SIZE_TRAIN", 1000, "INPUT.CROP.ENABLED", True,
                         "INPUT.CROP.TYPE", "absolute", "INPUT.CROP.SIZE", [30, 30], *overrides])
    return cfg


@pytest.fixture(scope="module")
def sample_ds(tmp_path_factory):
    """A 40x60 image whose pixels encode their coordinates, with: the triangle (cut by the crop), a
    polygon wholly outside the crop, an RLE rectangle half inside, a crowd instance."""
    root = tmp_path_factory.mktemp("crop")
    ys, xs = np.mgrid[0:H, 0:W]
    rgb = np.stack([xs * 4, ys * 6, np.full_like(xs, 7)], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(root / "im.png")
    from pycocotools import mask as mask_util

    m = np.zeros((H, W), np.uint8)
    m[20:30, 45:55] = 1
    rle = mask_util.encode(np.asfortranarray(m))
    rle["counts"] = rle["counts"].decode()
    anns = [
        {"id": 1, "image_id": 5, "category_id": 1, "bbox": [10, 10, 30, 30], "segmentation": [TRIANGLE],
         "iscrowd": 0, "area": 450.0},
        {"id": 2, "image_id": 5, "category_id": 2, "bbox": [0, 0, 15, 8],
         "segmentation": [[0.0, 0.0, 15.0, 0.0, 15.0, 8.0, 0.0, 8.0]], "iscrowd": 0, "area": 120.0},
        {"id": 3, "image_id": 5, "category_id": 2, "bbox": [45, 20, 10, 10], "segmentation": rle, "iscrowd": 0,
         "area": 100.0},
        {"id": 4, "image_id": 5, "category_id": 1, "bbox": [20, 10, 30, 30], "segmentation": rle, "iscrowd": 1,
         "area": 100.0},
    ]
    data = {"images": [{"id": 5, "file_name": "im.png", "height": H, "width": W}], "annotations": anns,
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    (root / "a.json").write_text(json.dumps(data))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RETHINK_CACHE", str(root / "cache"))
        yield CocoDataset("crop_test", str(root / "a.json"), str(root)), rgb, m


def _seed_for(mapper, crop, flip=None):
    for seed in range(20000):
        rng = np.random.default_rng(seed)
        if mapper.draw_crop(rng, H, W) == crop and (flip is None or mapper.draw(rng)[1] == flip):
            return seed
    raise AssertionError("no seed gives that crop")


def test_boxes_masks_and_image_cut_by_the_crop(sample_ds):
    ds, rgb, m = sample_ds
    mapper = DatasetMapper(_cfg("INPUT.MIN_SIZE_TRAIN", (30,), "INPUT.RANDOM_FLIP", "none"), is_train=True)
    s = mapper(ds, 0, np.random.default_rng(_seed_for(mapper, CROP)))
    assert s["aug"]["crop"] == CROP and s["aug"]["size"] == (30, 30) and (s["height"], s["width"]) == (H, W)
    y0, x0, ch, cw = CROP
    assert torch.equal(s["image"], torch.from_numpy(rgb[y0:y0 + ch, x0:x0 + cw, ::-1].transpose(2, 0, 1).copy()))
    t = s["target"]
    # polygon wholly outside dropped, crowd excluded; the triangle's box is the cut triangle's extent
    # (0, 0)-(20, 20), not the cut original box (0, 0)-(20, 30) (detectron2's recompute_boxes)
    assert t["labels"].tolist() == [1, 2]
    torch.testing.assert_close(t["boxes"], torch.tensor([[0.0, 0, 20, 20], [25, 10, 30, 20]]))
    [poly] = t["masks"].items[0]
    assert sorted(map(tuple, poly.reshape(-1, 2).tolist())) == [(0.0, 0.0), (0.0, 20.0), (20.0, 0.0)]
    dense = t["masks"].to_bitmasks().numpy()
    assert np.array_equal(dense[1], m[y0:y0 + ch, x0:x0 + cw])
    # without masks: the original boxes moved and clipped to the crop, emptied ones dropped
    mapper = DatasetMapper(_cfg("INPUT.MIN_SIZE_TRAIN", (30,), "INPUT.RANDOM_FLIP", "none", "MODEL.MASK_ON", False),
                           is_train=True)
    t = mapper(ds, 0, np.random.default_rng(_seed_for(mapper, CROP)))["target"]
    assert t["labels"].tolist() == [1, 2] and "masks" not in t
    torch.testing.assert_close(t["boxes"], torch.tensor([[0.0, 0, 20, 30], [25, 10, 30, 20]]))


def test_crop_then_resize_then_flip(sample_ds):
    ds, _, m = sample_ds
    mapper = DatasetMapper(_cfg("INPUT.MIN_SIZE_TRAIN", (60,)), is_train=True)  # crop 30x30 -> 60x60
    s = mapper(ds, 0, np.random.default_rng(_seed_for(mapper, CROP, flip=True)))
    assert s["aug"]["crop"] == CROP and s["aug"]["flip"] and s["aug"]["size"] == (60, 60)
    t = s["target"]
    assert t["labels"].tolist() == [1, 2]
    # triangle (0,0),(20,0),(0,20) x2, mirrored: x -> 60 - x; RLE rectangle cols 25..29 -> 50..59 -> 0..9
    torch.testing.assert_close(t["boxes"], torch.tensor([[20.0, 0, 60, 40], [0, 20, 10, 40]]))
    y0, x0, ch, cw = CROP
    expected = np.kron(m[y0:y0 + ch, x0:x0 + cw], np.ones((2, 2), np.uint8))[:, ::-1]
    assert np.array_equal(t["masks"].to_bitmasks()[1].numpy(), expected)
    # bitmask format: every mask an RLE, boxes their pixel extent (BitMasks.get_bounding_boxes)
    mapper = DatasetMapper(_cfg("INPUT.MIN_SIZE_TRAIN", (60,), "INPUT.MASK_FORMAT", "bitmask"), is_train=True)
    t = mapper(ds, 0, np.random.default_rng(_seed_for(mapper, CROP, flip=True)))["target"]
    assert all(isinstance(it, dict) for it in t["masks"].items)
    dense = t["masks"].to_bitmasks().numpy()
    for k in range(len(dense)):
        ys, xs = np.nonzero(dense[k])
        assert t["boxes"][k].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_crop_is_drawn_first_and_only_when_enabled(sample_ds):
    ds, _, _ = sample_ds
    cfg = _cfg("INPUT.MIN_SIZE_TRAIN", (20, 30, 40), "INPUT.CROP.TYPE", "relative_range", "INPUT.CROP.SIZE",
               [0.5, 0.6])
    mapper = DatasetMapper(cfg, is_train=True)
    for seed in range(5):
        s = mapper(ds, 0, np.random.default_rng(seed))
        rng = np.random.default_rng(seed)
        crop = sample_crop(rng, H, W, "relative_range", (0.5, 0.6))  # size pair, y0, x0 ...
        short, flip = mapper.draw(rng)  # ... then short edge, flip
        assert s["aug"]["crop"] == crop and (s["aug"]["short_edge"], s["aug"]["flip"]) == (short, flip)
        again = mapper(ds, 0, np.random.default_rng(seed))
        assert torch.equal(again["image"], s["image"]) and torch.equal(again["target"]["boxes"], s["target"]["boxes"])
    cfg.defrost()
    cfg.INPUT.CROP.ENABLED = False
    plain = DatasetMapper(cfg, is_train=True)
    for seed in range(5):
        s = plain(ds, 0, np.random.default_rng(seed))
        assert s["aug"]["crop"] is None
        assert (s["aug"]["short_edge"], s["aug"]["flip"]) == plain.draw(np.random.default_rng(seed))
    test = DatasetMapper(_cfg(), is_train=False)  # never at test time
    assert test(ds, 0, np.random.default_rng(0))["aug"]["crop"] is None


@pytest.mark.parametrize("crop_type,size", [("relative", (0.5, 0.25)), ("relative_range", (0.3, 0.7)),
                                            ("absolute", (25, 100)), ("absolute_range", (10, 35))])
def test_crop_sizes_within_the_configured_ranges(crop_type, size):
    rng = np.random.default_rng(0)
    h, w = 40, 60
    seen = set()
    for _ in range(400):
        y0, x0, ch, cw = sample_crop(rng, h, w, crop_type, size)
        assert 0 <= y0 <= h - ch and 0 <= x0 <= w - cw
        seen.add((ch, cw))
        if crop_type == "relative":
            assert (ch, cw) == (20, 15)
        elif crop_type == "relative_range":
            assert int(h * np.float32(0.3) + 0.5) <= ch <= h and int(w * np.float32(0.7) + 0.5) <= cw <= w
        elif crop_type == "absolute":
            assert (ch, cw) == (25, 60)  # capped at the image
        else:
            assert 10 <= ch <= 35 and 10 <= cw <= 35
    if crop_type == "absolute_range":  # both ends reached
        assert {c[0] for c in seen} >= {10, 35} and {c[1] for c in seen} >= {10, 35}
    if crop_type == "relative_range":
        assert len(seen) > 50


def test_concave_polygon_split_by_the_crop_rasterises_as_its_pieces():
    """A U cut below its bar falls apart in two legs: detectron2 (shapely) returns two polygons, we
    one joined along the crop border; the masks are the same."""
    u = [0, 0, 30, 0, 30, 30, 20, 30, 20, 10, 10, 10, 10, 30, 0, 30]
    crop = (15, 2, 12, 25)
    y0, x0, ch, cw = crop
    legs = [[0, y0, 10, y0, 10, y0 + ch, 0, y0 + ch], [20, y0, 30, y0, 30, y0 + ch, 20, y0 + ch]]
    ours = polygons_to_bitmask([crop_polygon(u, crop)], ch, cw)
    pieces = polygons_to_bitmask([crop_polygon(p, crop) for p in legs], ch, cw)
    assert ours.sum() == 8 * 12 + 7 * 12 and np.array_equal(ours, pieces)
    assert crop_polygon([0, 0, 5, 0, 5, 5, 0, 5], crop) is None  # outside
    assert crop_polygon([0, 0, 2, 0, 2, 30, 0, 30], crop) is None  # touches the crop only along x = 2


@pytest.mark.parametrize("key,value,match", [
    ("INPUT.CROP.TYPE", "random", r"INPUT\.CROP\.TYPE = 'random': must be one of"),
    ("INPUT.CROP.SIZE", "[0.0, 0.5]", r"INPUT\.CROP\.SIZE = \[0\.0, 0\.5\]: 'relative_range' crops take fractions"),
    ("INPUT.CROP.SIZE", "[0.9, 1.5]", r"INPUT\.CROP\.SIZE .*fractions of the image in \(0, 1\]"),
    ("INPUT.CROP.SIZE", "[0.9]", r"INPUT\.CROP\.SIZE = \[0\.9\]: two values"),
])
def test_bad_crop_values_refused_naming_the_key(key, value, match):
    base = CONFIGS / "scratch_gn_r50.yaml"
    with pytest.raises(ConfigError, match=rf"^command line: {match}"):
        load_config(base, ["INPUT.CROP.ENABLED", "True", key, value])
    with pytest.raises(ConfigError, match=r"INPUT\.CROP\.SIZE = \[100, 50\]: 'absolute_range' takes \(min, max\)"):
        load_config(base, ["INPUT.CROP.ENABLED", "True", "INPUT.CROP.TYPE", "absolute_range", "INPUT.CROP.SIZE",
                           "[100, 50]"])
    with pytest.raises(ConfigError, match=r"INPUT\.CROP\.SIZE = \[0\.5, 0\.5\]: 'absolute' crops take sizes in pixels"):
        load_config(base, ["INPUT.CROP.ENABLED", "True", "INPUT.CROP.TYPE", "absolute", "INPUT.CROP.SIZE",
                           "[0.5, 0.5]"])
    load_config(base, ["INPUT.CROP.TYPE", "random"])  # unused while disabled, as in detectron2
    cfg = load_config(base, ["INPUT.CROP.ENABLED", "True"])  # detectron2's default: relative_range 0.9
    assert DatasetMapper(cfg, is_train=True).crop_size == (pytest.approx(0.9), pytest.approx(0.9))


def test_mapper_refuses_bad_crop_naming_the_key():
    with pytest.raises(ValueError, match=r"INPUT\.CROP\.TYPE must be one of"):
        check_crop("center", (0.5, 0.5))
    with pytest.raises(ValueError, match=r"INPUT\.CROP\.SIZE .*'absolute_range'"):
        check_crop("absolute_range", (50, 20))
    with pytest.raises(ValueError, match=r"INPUT\.CROP\.SIZE"):
        DatasetMapper(_cfg("INPUT.CROP.TYPE", "relative", "INPUT.CROP.SIZE", [1.2, 0.5]), is_train=True)
