"""rethink.data: catalog, subsets, columnar cache, transforms, deterministic loaders, synthetic data.

Everything runs on small synthetic datasets written to a temporary folder; $RETHINK_CACHE points to a
per-session temporary folder.
"""
import hashlib
import json
import multiprocessing as mp
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_util

from rethink.config import get_cfg
from rethink.data import catalog
from rethink.data.build import build_test_loader, build_train_loader, shard_range
from rethink.data.coco import CocoDataset, index_dir, load_coco_index
from rethink.data.errors import DatasetError, DatasetNotFoundError
from rethink.data.samplers import BatchStream
from rethink.data.subsets import PAPER_SELECTIONS, Selection, make_subsets, subset_permutation
from rethink.data.synthetic import make_synthetic_classification, make_synthetic_coco
from rethink.data.transforms import DatasetMapper, resize_shape, transform_boxes, transform_rle
from rethink.structures import InstanceMasks, polygons_to_bitmask
from rethink.structures.masks import encode_bitmask
from rethink.utils.cache import file_sha256

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def session_dirs(tmp_path_factory):
    base = tmp_path_factory.mktemp("data")
    syn = make_synthetic_coco(str(base / "syn"), num_images=48, seed=0, num_val=7)
    return {"base": base, "cache": str(base / "cache"), "syn": syn}


@pytest.fixture(autouse=True)
def _env(session_dirs, monkeypatch):
    monkeypatch.setenv("RETHINK_CACHE", session_dirs["cache"])
    monkeypatch.delenv("RETHINK_DATASETS", raising=False)
    monkeypatch.delenv("DETECTRON2_DATASETS", raising=False)
    yield


@pytest.fixture
def syn(session_dirs):
    s = session_dirs["syn"]
    catalog.register_coco_instances("tsyn_train", s["train"], s["image_root_train"])
    catalog.register_coco_instances("tsyn_val", s["val"], s["image_root_val"])
    yield s
    catalog.unregister("tsyn_train")
    catalog.unregister("tsyn_val")


def make_cfg(*overrides):
    cfg = get_cfg()
    cfg.merge_from_list([
        "DATASETS.TRAIN", ("tsyn_train",), "DATASETS.TEST", ("tsyn_val",), "SOLVER.IMS_PER_BATCH", 4,
        "INPUT.MIN_SIZE_TRAIN", (48, 64, 80), "INPUT.MAX_SIZE_TRAIN", 128, "INPUT.MIN_SIZE_TEST", 64,
        "INPUT.MAX_SIZE_TEST", 128, "MODEL.MASK_ON", True, "DATALOADER.NUM_WORKERS", 0, "SEED", 3,
        *overrides])
    return cfg


def sample_key(s):
    return (s["image_id"], s["position"], s["aug"]["short_edge"], s["aug"]["flip"], tuple(s["image"].shape))


def take(loader, n):
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            break
    return out


# --------------------------------------------------------------------------------------------------
# catalog
# --------------------------------------------------------------------------------------------------
def test_missing_builtin_dataset_lists_files_and_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("RETHINK_DATASETS", str(tmp_path / "nowhere"))
    with pytest.raises(DatasetNotFoundError) as e:
        catalog.get_dataset_spec("coco_2017_train")
    msg = str(e.value)
    assert os.path.join(str(tmp_path / "nowhere"), "coco/annotations/instances_train2017.json") in msg
    assert os.path.join(str(tmp_path / "nowhere"), "coco/train2017") in msg
    assert "$RETHINK_DATASETS" in msg and "DETECTRON2_DATASETS" in msg and "coco/val2017" in msg


def test_dataset_root_env_precedence(tmp_path, monkeypatch, syn):
    for root in ("a", "b"):
        os.makedirs(tmp_path / root / "coco" / "annotations")
        os.makedirs(tmp_path / root / "coco" / "val2017")
        shutil.copy(syn["val"], tmp_path / root / "coco" / "annotations" / "instances_val2017.json")
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "b"))
    assert catalog.get_dataset_spec("coco_2017_val").json_file.startswith(str(tmp_path / "b"))
    monkeypatch.setenv("RETHINK_DATASETS", str(tmp_path / "a"))
    json_file, image_root, *_ = catalog.get_dataset_spec("coco_2017_val")
    assert json_file == str(tmp_path / "a" / "coco" / "annotations" / "instances_val2017.json")
    assert image_root == str(tmp_path / "a" / "coco" / "val2017")


def test_unknown_dataset_and_registration_conflicts(syn):
    with pytest.raises(DatasetNotFoundError, match="tsyn_train"):
        catalog.get_dataset_spec("tsyn_trian")
    catalog.register_coco_instances("tsyn_train", syn["train"], syn["image_root_train"])  # same paths: no-op
    with pytest.raises(DatasetError, match="already registered"):
        catalog.register_coco_instances("tsyn_train", syn["val"], syn["image_root_val"])
    with pytest.raises(DatasetError, match="built-in"):
        catalog.register_coco_instances("coco_2017_val", syn["val"], syn["image_root_val"])


# --------------------------------------------------------------------------------------------------
# subsets
# --------------------------------------------------------------------------------------------------
def test_subsets_nested_byte_identical_with_manifest(tmp_path, syn):
    sels = [Selection.parse(s) for s in ("1of3", "1of10", "1of100", "30", "12", "3")]
    r1 = make_subsets(syn["train"], "tsyn_train", sels, [0], str(tmp_path / "one"))
    r2 = make_subsets(syn["train"], "tsyn_train", sels, [0], str(tmp_path / "two"))
    source = json.load(open(syn["train"]))
    ids = {}
    for sel, (j1, m1), (j2, _) in zip(sels, r1, r2):
        b1 = open(j1, "rb").read()
        assert b1 == open(j2, "rb").read(), "same seed must give byte-identical subsets"
        man = json.load(open(m1))
        assert man["sha256"] == hashlib.sha256(b1).hexdigest()
        assert man["source"]["sha256"] == hashlib.sha256(open(syn["train"], "rb").read()).hexdigest()
        assert man["source"]["path"] == os.path.abspath(syn["train"]) and man["seed"] == 0
        sub = json.loads(b1)
        assert sub["categories"] == source["categories"] and sub["info"] == source["info"]
        assert sub["licenses"] == source["licenses"]
        chosen = [im["id"] for im in sub["images"]]
        assert chosen == sorted(chosen)
        assert sorted(a["id"] for a in sub["annotations"]) == sorted(
            a["id"] for a in source["annotations"] if a["image_id"] in set(chosen))
        assert man["num_images"] == len(chosen) and man["num_annotations"] == len(sub["annotations"])
        ids[sel.tag] = set(chosen)
    n_elig = json.load(open(r1[0][1]))["num_eligible"]
    assert n_elig == 47  # 48 images, the last has no annotation
    assert len(ids["1of3"]) == 16 and len(ids["1of10"]) == 5 and len(ids["1of100"]) == 1
    assert json.load(open(r1[0][1]))["fraction"] == "1/3" and json.load(open(r1[3][1]))["count"] == 30
    assert ids["1of100"] <= ids["1of10"] <= ids["1of3"] <= ids["30"]
    assert ids["3"] <= ids["12"] <= ids["30"]
    # the documented rule, independently
    idx = load_coco_index(syn["train"])
    eligible = np.asarray(idx.a["image_id"])[idx.usable_mask()]
    perm = np.random.Generator(np.random.PCG64(0)).permutation(len(eligible))
    assert ids["12"] == set(eligible[perm[:12]].tolist())
    assert np.array_equal(perm, subset_permutation(len(eligible), 0))
    other = make_subsets(syn["train"], "tsyn_train", [Selection.parse("1of3")], [1], str(tmp_path / "one"))
    assert set(im["id"] for im in json.load(open(other[0][0]))["images"]) != ids["1of3"]


def test_selection_names():
    assert [s.tag for s in PAPER_SELECTIONS] == ["1of3", "1of10", "1of100", "35k", "10k", "3.5k", "1k"]
    assert Selection.parse("3500") == Selection.parse("3.5k") and Selection.parse("1/10").tag == "1of10"
    with pytest.raises(ValueError):
        Selection.parse("ten")
    with pytest.raises(DatasetError, match="needs 100 images but the source has 47"):
        Selection.parse("100").num_images(47)


def test_subset_by_name_created_on_first_use_and_checked(tmp_path, monkeypatch):
    syn = make_synthetic_coco(str(tmp_path / "s"), num_images=12, seed=5, num_val=4)
    monkeypatch.setenv("RETHINK_CACHE", str(tmp_path / "cache"))
    catalog.register_coco_instances("tsub", syn["train"], syn["image_root_train"])
    try:
        spec = catalog.get_dataset_spec("tsub_1of3_s0")
        assert spec.kind == "subset" and spec.parent == "tsub" and spec.image_root == syn["image_root_train"]
        assert spec.json_file == str(tmp_path / "cache" / "subsets" / "tsub_1of3_s0.json")
        assert os.path.isfile(spec.manifest)
        mtime = os.stat(spec.json_file).st_mtime_ns
        assert catalog.get_dataset_spec("tsub_1of3_s0").json_file == spec.json_file
        assert os.stat(spec.json_file).st_mtime_ns == mtime  # reused, not rewritten
        assert catalog.get_dataset_spec("tsub_4_s0").json_file.endswith("tsub_4_s0.json")
        # the subset file is changed -> error naming it
        with open(spec.json_file, "ab") as f:
            f.write(b" ")
        with pytest.raises(DatasetError, match="modified or is corrupt") as e:
            catalog.get_dataset_spec("tsub_1of3_s0")
        assert spec.json_file in str(e.value) and "--force" in str(e.value)
        # the source changed -> stale subset error
        data = json.load(open(syn["train"]))
        data["info"]["description"] = "changed"
        with open(syn["train"], "w") as f:
            json.dump(data, f)
        with pytest.raises(DatasetError, match="stale") as e:
            catalog.get_dataset_spec("tsub_4_s0")
        assert syn["train"] in str(e.value)
    finally:
        catalog.unregister("tsub")


def test_make_subsets_cli(tmp_path, syn):
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "make_subsets.py"), "--json", syn["train"],
                        "--name", "mini", "--subsets", "1of3", "10", "--seeds", "0", "1", "--output-dir", str(out)],
                       capture_output=True, text=True, env=dict(os.environ), cwd=ROOT)
    assert r.returncode == 0, r.stderr
    names = sorted(os.listdir(out))
    for n in ("mini_1of3_s0", "mini_1of3_s1", "mini_10_s0", "mini_10_s1"):
        assert n + ".json" in names and n + ".manifest.json" in names
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "make_subsets.py"), "--dataset", "coco_2017_train",
                        "--output-dir", str(out)], capture_output=True, text=True, cwd=str(tmp_path),
                       env={k: v for k, v in os.environ.items()
                            if k not in ("RETHINK_DATASETS", "DETECTRON2_DATASETS")})
    assert r.returncode != 0 and "instances_train2017.json" in r.stderr


# --------------------------------------------------------------------------------------------------
# columnar cache
# --------------------------------------------------------------------------------------------------
def test_columnar_cache_contents_and_reuse(syn):
    idx = load_coco_index(syn["train"])
    src = json.load(open(syn["train"]))
    assert idx.cat_ids == [1, 3, 7] and idx.label_to_cat_id == {1: 1, 2: 3, 3: 7}
    assert isinstance(idx.a["poly_xy"], np.memmap) and isinstance(idx.a["bbox"], np.memmap)
    assert idx.num_images == len(src["images"]) and idx.num_annotations == len(src["annotations"])
    by_id = {a["id"]: a for a in src["annotations"]}
    images = sorted(src["images"], key=lambda im: im["id"])
    kinds = set()
    for i, im in enumerate(images):
        assert idx.image_id(i) == im["id"] and idx.file_name(i) == im["file_name"]
        assert (idx.a["height"][i], idx.a["width"][i]) == (im["height"], im["width"])
        anns = idx.annotations(i)
        assert list(anns["ann_id"]) == sorted(a["id"] for a in src["annotations"] if a["image_id"] == im["id"])
        for k, aid in enumerate(anns["ann_id"]):
            a = by_id[int(aid)]
            np.testing.assert_allclose(anns["bbox"][k], a["bbox"], rtol=1e-6)
            assert idx.label_to_cat_id[int(anns["label"][k])] == a["category_id"] == anns["category_id"][k]
            assert anns["iscrowd"][k] == a["iscrowd"]
            seg = anns["segmentation"][k]
            if isinstance(a["segmentation"], list):
                kinds.add("polygon")
                assert len(seg) == len(a["segmentation"])
                for p, q in zip(seg, a["segmentation"]):
                    np.testing.assert_allclose(p, q, rtol=1e-6)
            else:
                kinds.add("compressed" if isinstance(a["segmentation"]["counts"], str) else "uncompressed")
                if isinstance(a["segmentation"]["counts"], str):
                    ref = {"size": a["segmentation"]["size"], "counts": a["segmentation"]["counts"].encode()}
                else:
                    ref = mask_util.frPyObjects(a["segmentation"], im["height"], im["width"])
                assert np.array_equal(mask_util.decode(seg), mask_util.decode(ref))
    assert kinds == {"polygon", "compressed", "uncompressed"}
    d = index_dir(file_sha256(syn["train"]))
    mtime = os.stat(os.path.join(d, "meta.json")).st_mtime_ns
    assert load_coco_index(syn["train"]).cache_dir == d
    assert os.stat(os.path.join(d, "meta.json")).st_mtime_ns == mtime  # not rebuilt
    assert sorted(f for f in os.listdir(d) if f.endswith(".npy"))  # plain npy files


def _build_in_child(args):
    json_file, cache = args
    os.environ["RETHINK_CACHE"] = cache
    from rethink.data.coco import load_coco_index as load

    idx = load(json_file)
    return idx.cache_dir, idx.num_annotations


def test_concurrent_cache_build_single_result(tmp_path):
    syn = make_synthetic_coco(str(tmp_path / "s"), num_images=30, seed=9, num_val=4)
    cache = str(tmp_path / "cache")
    with mp.get_context("fork").Pool(4) as pool:
        res = pool.map(_build_in_child, [(syn["train"], cache)] * 4)
    assert len(set(res)) == 1
    entries = os.listdir(os.path.join(cache, "coco_index"))
    assert [e for e in entries if not e.endswith(".lock")] == [os.path.basename(res[0][0])]  # no temp leftovers


# --------------------------------------------------------------------------------------------------
# transforms, masks
# --------------------------------------------------------------------------------------------------
def test_resize_shape_matches_detectron2():
    assert resize_shape(480, 640, 800, 1333) == (800, 1067)
    assert resize_shape(640, 480, 800, 1333) == (1067, 800)
    assert resize_shape(500, 1500, 800, 1333) == (444, 1333)  # long edge capped
    assert resize_shape(427, 640, 640, 1333) == (640, 959)  # int(x + 0.5)
    assert resize_shape(100, 100, 64, 1333) == (64, 64)


def test_box_transform_and_flip():
    b = np.array([[10, 20, 30, 40]], dtype=np.float32)  # XYWH in a 100x200 (h x w) image
    np.testing.assert_allclose(transform_boxes(b, 100, 200, 50, 100, False), [[5, 10, 20, 30]])
    np.testing.assert_allclose(transform_boxes(b, 100, 200, 50, 100, True), [[80, 10, 95, 30]])
    np.testing.assert_allclose(transform_boxes(np.array([[-5, -5, 300, 300]]), 100, 200, 100, 200, False),
                               [[0, 0, 200, 100]])


def _write_coco(path, images, anns, cats=((1, "a"), (4, "b"))):
    data = {"images": images, "annotations": anns, "categories": [{"id": i, "name": n} for i, n in cats]}
    with open(path, "w") as f:
        json.dump(data, f)
    return str(path)


def test_masks_match_pycocotools_ann_to_mask(tmp_path):
    h, w = 40, 60
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(tmp_path / "im.png")
    m = np.zeros((h, w), np.uint8)
    m[5:30, 10:22] = 1
    m[8:12, 40:55] = 1
    from rethink.data.synthetic import compressed_rle, uncompressed_rle

    poly = [[10.25, 5.5, 30.75, 6.0, 25.5, 33.25, 8.0, 30.0], [40.0, 2.0, 55.5, 2.0, 50.0, 12.0]]
    anns = [
        {"id": 1, "image_id": 7, "category_id": 4, "bbox": [8.0, 2.0, 47.5, 31.25], "segmentation": poly, "iscrowd": 0,
         "area": 10.0},
        {"id": 2, "image_id": 7, "category_id": 1, "bbox": [10, 5, 45, 25], "segmentation": compressed_rle(m),
         "iscrowd": 0, "area": 1.0},
        {"id": 3, "image_id": 7, "category_id": 1, "bbox": [10, 5, 45, 25], "segmentation": uncompressed_rle(m),
         "iscrowd": 0, "area": 1.0},
        {"id": 4, "image_id": 7, "category_id": 1, "bbox": [10, 5, 45, 25], "segmentation": uncompressed_rle(m),
         "iscrowd": 1, "area": 1.0},
    ]
    js = _write_coco(tmp_path / "a.json", [{"id": 7, "file_name": "im.png", "height": h, "width": w}], anns)
    from pycocotools.coco import COCO

    coco = COCO(js)
    ds = CocoDataset("masks", js, str(tmp_path))
    cfg = make_cfg("INPUT.MIN_SIZE_TRAIN", (h,), "INPUT.MAX_SIZE_TRAIN", 1000, "INPUT.RANDOM_FLIP", "none")
    s = DatasetMapper(cfg, is_train=True)(ds, 0, np.random.default_rng(0))
    t = s["target"]
    assert s["aug"]["size"] == (h, w) and isinstance(t["masks"], InstanceMasks) and t["labels"].dtype == torch.int64
    assert t["labels"].tolist() == [2, 1, 1]  # crowd excluded; labels 1..K over sorted ids [1, 4]
    assert t["masks"].image_size == (h, w) and len(t["masks"]) == 3
    assert isinstance(t["masks"].items[0], list) and all(p.dtype == np.float64 for p in t["masks"].items[0])
    assert isinstance(t["masks"].items[1], dict) and isinstance(t["masks"].items[2], dict)  # RLE stays RLE
    dense = t["masks"].to_bitmasks()
    assert dense.dtype == torch.uint8 and dense.shape == (3, h, w)
    for k, aid in enumerate((1, 2, 3)):
        assert np.array_equal(dense[k].numpy(), coco.annToMask(coco.anns[aid])), aid
    assert dense[1].sum() == m.sum()
    # flipped + resized x2: RLE masks mirror exactly, polygons are rasterised after moving the points
    cfg = make_cfg("INPUT.MIN_SIZE_TRAIN", (2 * h,), "INPUT.MAX_SIZE_TRAIN", 1000)
    mapper = DatasetMapper(cfg, is_train=True)
    seed = next(i for i in range(100) if mapper.draw(np.random.default_rng(i))[1])
    f = mapper(ds, 0, np.random.default_rng(seed))
    assert f["aug"]["flip"] and f["aug"]["size"] == (2 * h, 2 * w) and f["image"].shape == (3, 2 * h, 2 * w)
    big = np.kron(m, np.ones((2, 2), np.uint8))
    fdense = f["target"]["masks"].to_bitmasks()
    assert fdense.shape == (3, 2 * h, 2 * w) and np.array_equal(fdense[1].numpy(), big[:, ::-1])
    moved = [np.array([2 * w - 2 * x if i % 2 == 0 else 2 * x for i, x in enumerate(p)]) for p in poly]
    for p, q in zip(f["target"]["masks"].items[0], moved):  # the polygons themselves, then their raster
        np.testing.assert_array_equal(p, q)  # (the coordinates are exact in the cache's float32)
    ref = polygons_to_bitmask(moved, 2 * h, 2 * w).astype(np.uint8)
    assert np.array_equal(fdense[0].numpy(), ref)
    np.testing.assert_allclose(f["target"]["boxes"][0].numpy(), [2 * w - 2 * 55.5, 4, 2 * w - 16, 66.5])


def test_loader_boxes_and_masks_consistent(syn):
    cfg = make_cfg()
    n_flip = 0
    for batch in take(build_train_loader(cfg, 0, 1), 6):
        for s in batch:
            t, (H, W) = s["target"], s["aug"]["size"]
            assert s["image"].shape == (3, H, W) and s["image"].dtype == torch.uint8
            assert isinstance(t["masks"], InstanceMasks) and t["masks"].image_size == (H, W)
            dense = t["masks"].to_bitmasks()
            assert dense.shape == (len(t["boxes"]), H, W) and len(t["boxes"]) == len(t["labels"]) > 0
            assert min(H, W) == s["aug"]["short_edge"] or max(H, W) == 128
            n_flip += s["aug"]["flip"]
            for box, mask in zip(t["boxes"].numpy(), dense.numpy()):
                ys, xs = np.nonzero(mask)
                assert len(xs)
                assert xs.min() >= box[0] - 1.5 and xs.max() + 1 <= box[2] + 1.5
                assert ys.min() >= box[1] - 1.5 and ys.max() + 1 <= box[3] + 1.5
    assert 0 < n_flip < 24


def test_image_channel_order(syn):
    ds = CocoDataset("tsyn_train", syn["train"], syn["image_root_train"])
    rgb = np.asarray(Image.open(ds.image_path(0)).convert("RGB"))
    h, w = rgb.shape[:2]
    for fmt, ref in (("BGR", rgb[:, :, ::-1]), ("RGB", rgb)):
        cfg = make_cfg("INPUT.FORMAT", fmt, "INPUT.MIN_SIZE_TEST", 0)
        s = DatasetMapper(cfg, is_train=False)(ds, 0)
        assert s["image"].dtype == torch.uint8 and (s["height"], s["width"]) == (h, w)
        assert s["image"].is_contiguous() and np.array_equal(s["image"].permute(1, 2, 0).numpy(), ref)


def _old_float_image(ds, i, fmt, size, flip):
    """The image as the mapper produced it before it returned uint8: read as RGB, channels in `fmt`,
    resized with PIL bilinear, flipped, float32 CHW."""
    img = np.asarray(Image.open(ds.image_path(i)).convert("RGB"))
    if fmt == "BGR":
        img = img[:, :, ::-1]
    img = np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize(size[::-1], Image.BILINEAR))
    if flip:
        img = img[:, ::-1]
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).to(torch.float32)


def test_image_uint8_equals_previous_float_image(tmp_path, syn):
    jpg = make_synthetic_coco(str(tmp_path / "jpg"), num_images=4, seed=2, num_val=1, image_format="jpg")
    datasets = [CocoDataset("tsyn_train", syn["train"], syn["image_root_train"]),
                CocoDataset("tjpg", jpg["train"], jpg["image_root_train"])]
    seen = set()
    for ds in datasets:
        for fmt in ("BGR", "RGB"):
            for is_train in (True, False):
                mapper = DatasetMapper(make_cfg("INPUT.FORMAT", fmt), is_train=is_train)
                for i in range(4):
                    s = mapper(ds, i, np.random.default_rng(10 * i + 1) if is_train else None)
                    assert s["image"].dtype == torch.uint8 and s["image"].is_contiguous()
                    assert s["image"].shape == (3, *s["aug"]["size"])
                    ref = _old_float_image(ds, i, fmt, s["aug"]["size"], s["aug"]["flip"])
                    assert torch.equal(s["image"].to(torch.float32), ref)
                    seen.add((s["aug"]["flip"], s["aug"]["size"] != (ds.index.a["height"][i], ds.index.a["width"][i])))
    assert seen == {(False, True), (True, True)}  # flipped and not, every image resized


def test_polygon_and_bitmask_formats_give_the_same_masks(syn):
    ds = CocoDataset("tsyn_train", syn["train"], syn["image_root_train"])
    poly_mapper = DatasetMapper(make_cfg(), is_train=True)
    bit_mapper = DatasetMapper(make_cfg("INPUT.MASK_FORMAT", "bitmask"), is_train=True)
    n_poly = n_flip = 0
    for i in range(16):
        a = poly_mapper(ds, i, np.random.default_rng(i))
        b = bit_mapper(ds, i, np.random.default_rng(i))
        assert a["aug"] == b["aug"] and torch.equal(a["image"], b["image"])
        ta, tb = a["target"], b["target"]
        assert torch.equal(ta["boxes"], tb["boxes"]) and torch.equal(ta["labels"], tb["labels"])
        H, W = a["aug"]["size"]
        assert ta["masks"].image_size == tb["masks"].image_size == (H, W) and len(tb["masks"]) == len(ta["boxes"])
        assert all(isinstance(it, dict) and tuple(it["size"]) == (H, W) for it in tb["masks"].items)
        assert torch.equal(ta["masks"].to_bitmasks(), tb["masks"].to_bitmasks())
        for pa, rb in zip(ta["masks"].items, tb["masks"].items):
            if isinstance(pa, list):  # bitmask mode's RLE is polygons_to_bitmask of the moved polygons
                n_poly += 1
                assert rb == encode_bitmask(polygons_to_bitmask(pa, H, W)), i
        n_flip += a["aug"]["flip"]
    assert n_poly > 30 and 0 < n_flip < 16


@pytest.mark.parametrize("mask_format", ["polygon", "bitmask"])
def test_rle_annotation_resized_and_flipped(tmp_path, mask_format):
    from rethink.data.synthetic import compressed_rle, uncompressed_rle

    h, w = 40, 60
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(tmp_path / "im.png")
    rng = np.random.default_rng(0)
    m = np.zeros((h, w), np.uint8)
    m[3:31, 7:50] = rng.random((28, 43)) < 0.6  # ragged: nearest sampling shows in every row and column
    box = [7.0, 3.0, 43.0, 28.0]
    anns = [{"id": 1, "image_id": 7, "category_id": 1, "bbox": box, "segmentation": compressed_rle(m), "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 4, "bbox": box, "segmentation": uncompressed_rle(m), "iscrowd": 0},
            {"id": 3, "image_id": 7, "category_id": 4, "bbox": [40.0, 30.0, 1e-6, 5.0],  # empty once moved
             "segmentation": [[40.0, 30.0, 41.0, 30.0, 41.0, 35.0]], "iscrowd": 0},
            {"id": 4, "image_id": 7, "category_id": 1, "bbox": [2.0, 2.0, 6.0, 6.0],
             "segmentation": [[2.0, 2.0, 8.0, 2.0, 8.0, 8.0, 2.0, 8.0]], "iscrowd": 0}]
    js = _write_coco(tmp_path / "rle.json", [{"id": 7, "file_name": "im.png", "height": h, "width": w}], anns)
    ds = CocoDataset("rle", js, str(tmp_path))
    mapper = DatasetMapper(make_cfg("INPUT.MIN_SIZE_TRAIN", (57,), "INPUT.MAX_SIZE_TRAIN", 1000,
                                    "INPUT.MASK_FORMAT", mask_format), is_train=True)
    newh, neww = 57, 86  # 60 * 57 / 40 = 85.5 -> int(86.0): a non-integer scale
    for flip in (False, True):
        seed = next(i for i in range(100) if mapper.draw(np.random.default_rng(i))[1] == flip)
        s = mapper(ds, 0, np.random.default_rng(seed))
        assert s["aug"]["size"] == (newh, neww) and s["aug"]["flip"] == flip
        t = s["target"]
        assert t["labels"].tolist() == [1, 2, 1] and len(t["masks"]) == 3  # ann 3 removed from all three
        ref = np.asarray(Image.fromarray(m).resize((neww, newh), Image.NEAREST))  # detectron2's apply_segmentation
        assert 0 < ref.sum() != m.sum()
        if flip:
            ref = ref[:, ::-1]
        dense = t["masks"].to_bitmasks().numpy()
        for k in (0, 1):
            it = t["masks"].items[k]
            assert isinstance(it, dict) and tuple(it["size"]) == (newh, neww) and isinstance(it["counts"], bytes)
            assert np.array_equal(dense[k], ref), (k, flip)
        sq = np.array([2.0, 2.0, 8.0, 2.0, 8.0, 8.0, 2.0, 8.0]) * np.tile([neww / w, newh / h], 4)  # ann 4 moved
        if flip:
            sq[0::2] = neww - sq[0::2]
        assert np.array_equal(dense[2], polygons_to_bitmask([sq], newh, neww)) and dense[2].sum() > 50
        ys, xs = np.nonzero(dense[2])
        b = t["boxes"][2].numpy()
        assert xs.min() >= b[0] - 1 and xs.max() + 1 <= b[2] + 1 and ys.min() >= b[1] - 1 and ys.max() + 1 <= b[3] + 1


def test_transform_rle_equals_dense_path():
    """The transposed fast path is the dense decode -> NEAREST resize -> flip -> encode, bit for bit."""
    rng = np.random.default_rng(0)
    for h, w, nh, nw in [(40, 60, 57, 86), (384, 640, 800, 1333), (427, 640, 741, 1111), (500, 375, 1067, 800),
                         (333, 500, 800, 1201), (90, 90, 90, 90), (100, 100, 37, 37)]:
        m = np.zeros((h, w), np.uint8)
        m[h // 5: h * 4 // 5, w // 7: w * 5 // 6] = rng.random((h * 4 // 5 - h // 5, w * 5 // 6 - w // 7)) < 0.5
        rle = mask_util.encode(np.asfortranarray(m))
        for flip in (False, True):
            ref = np.asarray(Image.fromarray(m).resize((nw, nh), Image.NEAREST)) if (nh, nw) != (h, w) else m
            ref = ref[:, ::-1] if flip else ref
            assert transform_rle(rle, nh, nw, flip) == encode_bitmask(ref), (h, w, nh, nw, flip)


@pytest.mark.parametrize("mask_format", ["polygon", "bitmask"])
def test_sample_pickles_round_trip(syn, mask_format):
    ds = CocoDataset("tsyn_train", syn["train"], syn["image_root_train"])
    mapper = DatasetMapper(make_cfg("INPUT.MASK_FORMAT", mask_format), is_train=True)
    for i in range(4):  # image 0 holds a compressed RLE instance, image 2 an uncompressed one
        s = mapper(ds, i, np.random.default_rng(i))
        blob = pickle.dumps(s, protocol=pickle.HIGHEST_PROTOCOL)
        assert len(blob) < s["image"].nbytes + 20000  # the masks add little to the image
        r = pickle.loads(blob)
        assert r["image"].dtype == torch.uint8 and torch.equal(r["image"], s["image"])
        for k in ("image_id", "height", "width", "file_name", "aug"):
            assert r[k] == s[k]
        ts, tr = s["target"], r["target"]
        assert torch.equal(tr["boxes"], ts["boxes"]) and torch.equal(tr["labels"], ts["labels"])
        assert isinstance(tr["masks"], InstanceMasks) and tr["masks"].image_size == ts["masks"].image_size
        for a, b in zip(ts["masks"].items, tr["masks"].items):
            if isinstance(a, dict):
                assert a == b
            else:
                assert len(a) == len(b) and all(np.array_equal(p, q) and q.dtype == np.float64 for p, q in zip(a, b))
        assert torch.equal(tr["masks"].to_bitmasks(), ts["masks"].to_bitmasks())


# --------------------------------------------------------------------------------------------------
# loaders: determinism
# --------------------------------------------------------------------------------------------------
def test_train_loader_same_for_any_num_workers(syn):
    a = take(build_train_loader(make_cfg("DATALOADER.NUM_WORKERS", 0), 0, 1), 5)
    b = take(build_train_loader(make_cfg("DATALOADER.NUM_WORKERS", 2), 0, 1), 5)
    for x, y in zip(a, b):
        assert [sample_key(s) for s in x] == [sample_key(s) for s in y]
        for s, t in zip(x, y):
            assert torch.equal(s["image"], t["image"]) and torch.equal(s["target"]["boxes"], t["target"]["boxes"])
            assert s["target"]["masks"].image_size == t["target"]["masks"].image_size
            assert torch.equal(s["target"]["masks"].to_bitmasks(), t["target"]["masks"].to_bitmasks())
    c = take(build_train_loader(make_cfg("SEED", 4), 0, 1), 5)
    assert [sample_key(s) for x in a for s in x] != [sample_key(s) for x in c for s in x]


@pytest.mark.parametrize("grouping", [True, False])
def test_rank_shards_cover_global_batch(syn, grouping):
    cfg = make_cfg("DATALOADER.ASPECT_RATIO_GROUPING", grouping, "MODEL.MASK_ON", False)
    whole = take(build_train_loader(cfg, 0, 1), 4)
    r0 = take(build_train_loader(cfg, 0, 2), 4)
    r1 = take(build_train_loader(cfg, 1, 2), 4)
    for w, a, b in zip(whole, r0, r1):
        assert len(a) == len(b) == 2
        assert [sample_key(s) for s in w] == [sample_key(s) for s in a + b]
    with pytest.raises(ValueError, match="not divisible by the world size 3"):
        build_train_loader(cfg, 0, 3)


@pytest.mark.parametrize("grouping", [True, False])
def test_resume_equals_uninterrupted_and_ignores_max_iter(syn, grouping):
    cfg = make_cfg("DATALOADER.ASPECT_RATIO_GROUPING", grouping, "SOLVER.MAX_ITER", 7, "MODEL.MASK_ON", False)
    long_cfg = make_cfg("DATALOADER.ASPECT_RATIO_GROUPING", grouping, "SOLVER.MAX_ITER", 100000,
                        "SOLVER.STEPS", (50000,), "MODEL.MASK_ON", False)
    full = build_train_loader(cfg, 1, 2)
    keys = full.batch_keys(0, 60)  # 60 iterations of 4 = 5 epochs of 47 images
    assert build_train_loader(long_cfg, 1, 2).batch_keys(0, 60) == keys
    for k in (1, 11, 12, 37, 59):
        assert build_train_loader(cfg, 1, 2, start_iter=k).batch_keys(k, 60 - k) == keys[k:]
    # real samples too (resize/flip draws), and the iteration counter
    loader = build_train_loader(cfg, 1, 2)
    batches = take(loader, 9)
    assert loader.iteration == 9
    resumed = build_train_loader(long_cfg, 1, 2, start_iter=6)
    tail = take(resumed, 3)
    assert [[sample_key(s) for s in b] for b in tail] == [[sample_key(s) for s in b] for b in batches[6:]]
    assert resumed.iteration == 9


def test_aspect_grouping_and_epochs(syn):
    loader = build_train_loader(make_cfg("DATALOADER.ASPECT_RATIO_GROUPING", True), 0, 1)
    ts = loader.train_set
    seen = []
    for batch in loader.batch_keys(0, 40):
        groups = {int(ts.group_ids[i]) for i, _ in batch}
        assert len(groups) == 1  # one aspect group per global batch
        seen += [p for _, p in batch]
    assert len(set(seen)) == len(seen)  # every stream position used once
    # without grouping: each epoch is a permutation of the training set
    plain = BatchStream(len(ts), 4, 3)
    idx = np.concatenate([i for _, i, _ in (next(plain.iter_from(k)) for k in range(47))])
    assert sorted(idx[:47].tolist()) == list(range(47))
    assert len(ts) == 47  # FILTER_EMPTY_ANNOTATIONS dropped the image without annotations
    loader = build_train_loader(make_cfg("DATALOADER.FILTER_EMPTY_ANNOTATIONS", False), 0, 1)
    assert len(loader.train_set) == 48


# --------------------------------------------------------------------------------------------------
# test loader
# --------------------------------------------------------------------------------------------------
def test_test_loader_shards(syn):
    cfg = make_cfg()
    src = json.load(open(syn["val"]))
    seen = []
    for r in range(3):
        loader = build_test_loader(cfg, "tsyn_val", r, 3)
        assert len(loader) == len(shard_range(7, r, 3))
        for batch in loader:
            assert len(batch) == 1
            s = batch[0]
            assert "target" not in s and not s["aug"]["flip"]
            H, W = s["image"].shape[1:]
            assert (H, W) == resize_shape(s["height"], s["width"], 64, 128)
            seen.append(s["image_id"])
    assert seen == sorted(im["id"] for im in src["images"])  # contiguous shards, all images
    assert [len(shard_range(7, r, 3)) for r in range(3)] == [3, 2, 2]
    assert loader.label_to_cat_id == {1: 1, 2: 3, 3: 7}


# --------------------------------------------------------------------------------------------------
# synthetic data
# --------------------------------------------------------------------------------------------------
def test_synthetic_deterministic(tmp_path, syn):
    again = make_synthetic_coco(str(tmp_path / "again"), num_images=48, seed=0, num_val=7)
    for split in ("train", "val"):
        assert open(again[split], "rb").read() == open(syn[split], "rb").read()
    a = sorted(os.listdir(syn["image_root_train"]))
    assert a == sorted(os.listdir(again["image_root_train"]))
    assert all(open(os.path.join(syn["image_root_train"], f), "rb").read() ==
               open(os.path.join(again["image_root_train"], f), "rb").read() for f in a[:5])
    d = json.load(open(syn["train"]))
    assert [c["id"] for c in d["categories"]] == [7, 1, 3]
    assert any(a["iscrowd"] for a in d["annotations"])
    assert any(isinstance(a["segmentation"], dict) and not a["iscrowd"] for a in d["annotations"])
    sizes = {(im["height"], im["width"]) for im in d["images"]}
    assert all(64 <= h <= 160 and 64 <= w <= 160 for h, w in sizes) and len(sizes) > 10
    cls = make_synthetic_classification(str(tmp_path / "cls"), num_per_class=3, seed=0)
    assert sorted(os.listdir(cls["train"])) == cls["classes"] and len(os.listdir(os.path.join(cls["val"], "star"))) == 2
    assert set(cls["classes"]).isdisjoint({"rectangle", "ellipse", "triangle"})


def test_builtin_synthetic_names(tmp_path, monkeypatch):
    monkeypatch.setattr("rethink.data.synthetic.BUILTIN_NUM_IMAGES", 8)
    monkeypatch.setenv("RETHINK_CACHE", str(tmp_path / "c"))
    spec = catalog.get_dataset_spec("synthetic_coco_val")
    assert spec.kind == "synthetic" and os.path.isfile(spec.json_file)
    assert catalog.get_dataset_spec("synthetic_coco_train_1of2_s0").parent == "synthetic_coco_train"
    assert len(json.load(open(spec.json_file))["images"]) == 4  # a quarter of 8 (min 4)
    # the demo's pair: the same generator with its own sizes, in its own folder
    monkeypatch.setitem(catalog.SYNTHETIC_SIZES, "synthetic_demo", (12, 5))
    demo = catalog.get_dataset_spec("synthetic_demo_train"), catalog.get_dataset_spec("synthetic_demo_val")
    assert [len(json.load(open(s.json_file))["images"]) for s in demo] == [12, 5]
    assert os.path.dirname(demo[0].json_file) != os.path.dirname(spec.json_file)
    assert catalog.get_dataset_spec("synthetic_demo_train_1of3_s0").parent == "synthetic_demo_train"
