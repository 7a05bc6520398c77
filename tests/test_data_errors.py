"""rethink.data: every bad input is a clear error naming the file and the id, or is dropped and counted."""
import json
import logging
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from rethink.config import get_cfg
from rethink.data import check_datasets, register_coco_instances
from rethink.data.build import TrainingSet
from rethink.data.catalog import unregister
from rethink.data.coco import CocoDataset, load_coco_index, rle_string_to_counts
from rethink.data.errors import DatasetError
from rethink.data.images import read_rgb
from rethink.data.synthetic import compressed_rle, uncompressed_rle
from rethink.data.transforms import DatasetMapper
from rethink.engine import check_run

H, W = 40, 60


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RETHINK_CACHE", str(tmp_path / "cache"))


def ann(aid, **kw):
    a = {"id": aid, "image_id": 7, "category_id": 1, "bbox": [5.0, 5.0, 20.0, 10.0], "iscrowd": 0, "area": 200.0,
         "segmentation": [[5.0, 5.0, 25.0, 5.0, 25.0, 15.0, 5.0, 15.0]]}
    a.update(kw)
    return a


def write(tmp_path, anns, images=None, name="bad.json"):
    images = images if images is not None else [{"id": 7, "file_name": "im7.png", "height": H, "width": W}]
    data = {"info": {}, "images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "a"}, {"id": 5, "name": "b"}]}
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def expect(path, *parts):
    with pytest.raises(DatasetError) as e:
        load_coco_index(path)
    msg = str(e.value)
    assert path in msg, msg
    for p in parts:
        assert p in msg, msg
    return msg


def test_malformed_json_names_file_and_position(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"images": [],\n  "annotations": [,]\n}')
    expect(str(path), "not valid JSON", "line 2 column 19")


def test_unknown_category_id(tmp_path):
    expect(write(tmp_path, [ann(1), ann(17, category_id=99)]), "annotation id 17", "category_id 99",
           "not in 'categories'", "[1, 5]")


def test_unknown_image_id(tmp_path):
    expect(write(tmp_path, [ann(18, image_id=555)]), "annotation id 18", "image_id 555", "not in 'images'")


def test_uncompressed_rle_bad_sum(tmp_path):
    rle = {"size": [H, W], "counts": [10, 20, H * W - 31]}
    expect(write(tmp_path, [ann(19, segmentation=rle, iscrowd=1)]), "annotation id 19", "image id 7",
           f"sum to {H * W - 1}", f"{H}*{W} = {H * W}")


def test_rle_size_mismatch(tmp_path):
    rle = uncompressed_rle(np.ones((10, 10), np.uint8))
    expect(write(tmp_path, [ann(20, segmentation=rle, iscrowd=1)]), "annotation id 20",
           "RLE size [10, 10] does not match the image size [40, 60]")


def test_compressed_rle_bad_sum(tmp_path):
    m = np.zeros((20, 30), np.uint8)
    m[2:5, 3:9] = 1
    rle = compressed_rle(m)
    rle["size"] = [H, W]  # counts describe 600 pixels, not 2400
    expect(write(tmp_path, [ann(21, segmentation=rle)]), "annotation id 21", "compressed RLE counts sum to 600")
    rle["counts"] = "ab\x01"
    expect(write(tmp_path, [ann(22, segmentation=rle)], name="b2.json"), "annotation id 22", "malformed")


def test_rle_string_decoder_matches_pycocotools():
    m = (np.random.default_rng(0).random((23, 17)) > 0.6).astype(np.uint8)
    ref = uncompressed_rle(m)["counts"]
    assert rle_string_to_counts(compressed_rle(m)["counts"].encode()) == ref


def test_other_field_errors(tmp_path):
    im = {"id": 7, "file_name": "im7.png", "height": H, "width": W}
    expect(write(tmp_path, [], images=[im, dict(im)]), "image id 7 appears twice")
    expect(write(tmp_path, [], images=[{"id": 8, "height": H, "width": W}], name="b1.json"), "image id 8",
           "'file_name'")
    expect(write(tmp_path, [ann(3), ann(3)], name="b2.json"), "annotation id 3 appears twice")
    expect(write(tmp_path, [ann(4, bbox=[1, 2, 3])], name="b3.json"), "annotation id 4", "'bbox'")
    expect(write(tmp_path, [ann(5, bbox=[1, 2, "3", 4])], name="b4.json"), "annotation id 5", "'bbox'")
    expect(write(tmp_path, [ann(6, segmentation=[[1, 2, 3, None, 5, 6]])], name="b5.json"), "annotation id 6",
           "polygon coordinates")
    expect(write(tmp_path, [ann(9, iscrowd=2)], name="b6.json"), "annotation id 9", "'iscrowd'")


def test_invalid_polygons_and_boxes_dropped_and_counted(tmp_path, caplog):
    sq = [5.0, 5.0, 25.0, 5.0, 25.0, 15.0, 5.0, 15.0]
    anns = [
        ann(1),
        ann(2, segmentation=[sq, [1.0, 2.0, 3.0, 4.0]]),  # one short polygon dropped, instance kept
        ann(3, segmentation=[[1.0, 2.0, 3.0, 4.0]]),  # its only polygon is too short: instance dropped
        ann(4, segmentation=[sq, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]]),  # odd length polygon dropped
        ann(5, bbox=[10.0, 10.0, 0.0, 5.0]),  # zero width
        ann(6, bbox=[70.0, 10.0, 5.0, 5.0]),  # outside the 60 px wide image: empty after clipping
        ann(7, image_id=8, bbox=[1.0, 1.0, -3.0, 2.0]),  # negative width: image 8 is left without instances
        ann(8, segmentation=[]),  # no polygon at all
    ]
    images = [{"id": 7, "file_name": "im7.png", "height": H, "width": W},
              {"id": 8, "file_name": "im8.png", "height": H, "width": W}]
    path = write(tmp_path, anns, images)
    with caplog.at_level(logging.WARNING, logger="rethink.data.coco"):
        idx = load_coco_index(path, "dropme")
        load_coco_index(path, "dropme")
    assert idx.meta["dropped"] == {"polygons_too_few_points": 2, "polygons_odd_length": 1,
                                   "instances_without_valid_segmentation": 2, "degenerate_boxes": 3}
    assert list(idx.annotations(0)["ann_id"]) == [1, 2, 4]
    assert [len(s) for s in idx.annotations(0)["segmentation"]] == [1, 1, 1]
    assert list(idx.usable_mask()) == [True, False]
    logs = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(logs) == 1  # once per dataset
    assert "dropme" in logs[0] and path in logs[0] and "2 polygons with < 3 points" in logs[0]
    assert "3 degenerate boxes" in logs[0] and "2 instances left without a valid polygon" in logs[0]


def _cfg(*extra):
    cfg = get_cfg()
    cfg.merge_from_list(["INPUT.MIN_SIZE_TRAIN", (H,), "INPUT.MAX_SIZE_TRAIN", 1000, "MODEL.MASK_ON", True,
                         "DATALOADER.NUM_WORKERS", 0, "SEED", 0, *extra])
    return cfg


def test_missing_image_file_is_lazy_and_named(tmp_path):
    path = write(tmp_path, [ann(1)])
    ds = CocoDataset("lazy", path, str(tmp_path / "imgs"))  # no error yet: images are read lazily
    mapper = DatasetMapper(_cfg(), is_train=True)
    with pytest.raises(DatasetError) as e:
        mapper(ds, 0, np.random.default_rng(0))
    msg = str(e.value)
    assert os.path.join(str(tmp_path / "imgs"), "im7.png") in msg and "image id 7" in msg and "lazy" in msg
    with pytest.raises(DatasetError) as e:
        CocoDataset("lazy", path, str(tmp_path / "imgs"), verify_images=True)
    assert "1 of 1 image files are missing" in str(e.value) and "im7.png (image id 7)" in str(e.value)


def test_image_size_mismatch_and_missing_segmentation(tmp_path):
    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.zeros((H + 1, W, 3), np.uint8)).save(tmp_path / "imgs" / "im7.png")
    path = write(tmp_path, [ann(1)])
    ds = CocoDataset("sz", path, str(tmp_path / "imgs"))
    with pytest.raises(DatasetError, match=r"im7.png: image id 7 of dataset sz is 41x60 \(h x w\) but the "
                                           r"annotations say 40x60"):
        DatasetMapper(_cfg(), is_train=True)(ds, 0, np.random.default_rng(0))
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "imgs" / "im7.png")
    a = ann(31)
    del a["segmentation"]
    path = write(tmp_path, [a], name="noseg.json")
    ds = CocoDataset("noseg", path, str(tmp_path / "imgs"))
    for fmt in ("polygon", "bitmask"):
        with pytest.raises(DatasetError, match="annotation id 31 .image id 7. has no segmentation") as e:
            DatasetMapper(_cfg("INPUT.MASK_FORMAT", fmt), is_train=True)(ds, 0, np.random.default_rng(0))
        assert path in str(e.value)
    s = DatasetMapper(_cfg("MODEL.MASK_ON", False), is_train=True)(ds, 0, np.random.default_rng(0))
    assert "masks" not in s["target"] and s["target"]["boxes"].shape == (1, 4)


def test_unknown_mask_format_named():
    cfg = _cfg()
    cfg.INPUT.MASK_FORMAT = "polygons"  # (the config validation refuses it too)
    with pytest.raises(ValueError, match="INPUT.MASK_FORMAT must be 'polygon' or 'bitmask', got 'polygons'"):
        DatasetMapper(cfg, is_train=True)


# --- image pixel formats: converted to the 8-bit RGB the model takes, or refused naming file and id ---------

def _png16(path, a16: np.ndarray) -> str:
    """A 16-bit PNG (grey [h, w] or RGB [h, w, 3]) written byte by byte, independently of PIL's writer."""
    h, w = a16.shape[:2]
    color = 0 if a16.ndim == 2 else 2
    rows = a16.astype(">u2").reshape(h, -1).tobytes()
    stride = len(rows) // h
    raw = b"".join(b"\x00" + rows[r * stride:(r + 1) * stride] for r in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, color, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return str(path)


RNG = np.random.default_rng(3)
GREY8 = RNG.integers(0, 256, (H, W), dtype=np.uint8)
RGB8 = RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)
LOW = RNG.integers(0, 256, (H, W), dtype=np.uint16)  # low bytes: must not matter
GREY3 = np.repeat(GREY8[:, :, None], 3, axis=2)


def _palette_with_transparency():
    p = Image.fromarray(RGB8).quantize(16)
    p.info["transparency"] = 0
    return p


@pytest.mark.parametrize("name,make,expected", [
    ("i16.png", lambda p: Image.fromarray(GREY8.astype(np.uint16) * 257).save(p), GREY3),  # PIL mode I;16
    ("i16_low.png", lambda p: _png16(p, (GREY8.astype(np.uint16) << 8) | LOW), GREY3),
    ("i16b.tiff", lambda p: Image.frombytes("I;16B", (W, H), (GREY8.astype(">u2") * 257).tobytes()).save(p), GREY3),
    ("i32.tiff", lambda p: Image.fromarray(GREY8.astype(np.int32) * 257, "I").save(p), GREY3),
    ("rgb16.png", lambda p: _png16(p, RGB8.astype(np.uint16) * 257), RGB8),
    ("rgb.png", lambda p: Image.fromarray(RGB8).save(p), RGB8),
    ("grey.png", lambda p: Image.fromarray(GREY8).save(p), GREY3),
    ("bits.png", lambda p: Image.fromarray(GREY8 > 127).save(p), np.repeat((GREY8 > 127)[:, :, None], 3, 2) * 255),
    ("la.png", lambda p: Image.fromarray(np.dstack([GREY8, RGB8[..., 0]]), "LA").save(p), GREY3),  # alpha dropped
    ("rgba.png", lambda p: Image.fromarray(np.dstack([RGB8, GREY8])).save(p), RGB8),  # alpha dropped
    ("rgba.tiff", lambda p: Image.fromarray(np.dstack([RGB8, GREY8])).save(p), RGB8),
    ("palette.png", lambda p: _palette_with_transparency().save(p),
     np.asarray(_palette_with_transparency().convert("RGB"))),
    ("cmyk.tiff", lambda p: Image.fromarray(RGB8).convert("CMYK").save(p),
     np.asarray(Image.fromarray(RGB8).convert("CMYK").convert("RGB"))),
])
def test_pixel_formats_convert_to_rgb_uint8(tmp_path, name, make, expected):
    path = str(tmp_path / name)
    make(path)
    got = np.asarray(read_rgb(path, 7, "fmt"))
    assert got.dtype == np.uint8 and got.shape == (H, W, 3)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_jpeg_grey_and_cmyk_convert_to_rgb(tmp_path, mode):
    path = str(tmp_path / f"{mode}.jpg")
    src = Image.fromarray(RGB8).convert(mode)
    src.save(path, quality=100)
    with Image.open(path) as im:
        assert im.mode == mode
    got = np.asarray(read_rgb(path, 7, "jpg")).astype(int)
    want = np.asarray(src.convert("RGB")).astype(int)
    assert got.shape == (H, W, 3) and np.abs(got - want).mean() < 4  # lossy, but the same picture


def test_sixteen_bit_png_trains_as_its_eight_bit_image(tmp_path):
    """Was: a 16-bit PNG was clipped to 255 by PIL and trained as an all-white image."""
    (tmp_path / "imgs").mkdir()
    Image.fromarray((GREY8.astype(np.uint16) << 8) | LOW).save(tmp_path / "imgs" / "im7.png")
    with Image.open(tmp_path / "imgs" / "im7.png") as im:
        assert im.mode == "I;16"
    ds = CocoDataset("sixteen", write(tmp_path, [ann(1)]), str(tmp_path / "imgs"))
    cfg = _cfg("INPUT.FORMAT", "RGB", "INPUT.RANDOM_FLIP", "none")
    image = DatasetMapper(cfg, is_train=True)(ds, 0, np.random.default_rng(0))["image"]
    np.testing.assert_array_equal(image.numpy().transpose(1, 2, 0), GREY3)


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = str(tmp_path / "rot.png")
    Image.fromarray(RGB8).save(path, exif=exif)
    np.testing.assert_array_equal(np.asarray(read_rgb(path, 7, "exif")), np.rot90(RGB8, k=-1))


def _expect_image_error(path, *parts):
    with pytest.raises(DatasetError) as e:
        read_rgb(str(path), 42, "bad")
    msg = str(e.value)
    assert str(path) in msg and "image id 42" in msg and "bad" in msg, msg
    for p in parts:
        assert p in msg, msg
    return msg


def test_undecodable_and_refused_images_name_file_and_id(tmp_path, monkeypatch):
    Image.fromarray(GREY8.astype(np.float32) / 255).save(tmp_path / "float.tiff")
    _expect_image_error(tmp_path / "float.tiff", "PIL mode 'F' is not converted")
    Image.fromarray(GREY8.astype(np.int32) * 1000, "I").save(tmp_path / "i32.tiff")
    _expect_image_error(tmp_path / "i32.tiff", "outside the 16-bit range")
    (tmp_path / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"x" * 64)
    _expect_image_error(tmp_path / "junk.png", "cannot decode the image")
    (tmp_path / "text.jpg").write_text("not an image")
    _expect_image_error(tmp_path / "text.jpg", "cannot decode the image", "UnidentifiedImageError")
    Image.fromarray(RGB8).save(tmp_path / "cut.jpg")
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "cut.jpg").read_bytes()[:200])
    _expect_image_error(tmp_path / "cut.jpg", "cannot decode the image")
    _expect_image_error(tmp_path / "absent.jpg", "image file not found")
    Image.fromarray(RGB8).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", H * W // 4)  # the file is > 2x the limit: PIL's bomb error
    _expect_image_error(tmp_path / "big.png", "decompression bomb")


# --- the start-up check (rethink.data.preflight, run by rethink.engine.check_run before any iteration) -----

@pytest.fixture
def registered():
    names = []

    def register(name, json_file, image_root):
        register_coco_instances(name, json_file, image_root, overwrite=True)
        names.append(name)
        return name

    yield register
    for n in names:
        unregister(n)


def _images(n):
    return [{"id": 100 + i, "file_name": f"im{100 + i}.png", "height": H, "width": W} for i in range(n)]


def test_startup_check_lists_missing_train_images(tmp_path, registered):
    (tmp_path / "imgs").mkdir()
    for i in (100, 101):
        (tmp_path / "imgs" / f"im{i}.png").write_bytes(b"")
    path = write(tmp_path, [ann(1, image_id=100)], images=_images(12))
    name = registered("pf_missing", path, str(tmp_path / "imgs"))
    with pytest.raises(DatasetError) as e:
        check_datasets([name], [])
    msg = str(e.value)
    assert f"dataset pf_missing ({path}): 10 of 12 image files are missing under {tmp_path / 'imgs'}" in msg, msg
    assert "im102.png (image id 102)" in msg and "im106.png (image id 106)" in msg and "im107.png" not in msg
    assert "... and 5 more" in msg
    check_datasets([], [])  # nothing asked, nothing checked


def test_startup_check_parses_the_test_json(tmp_path, registered):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "im7.png").write_bytes(b"")
    good = registered("pf_good", write(tmp_path, [ann(1)]), str(tmp_path / "imgs"))
    bad_json = tmp_path / "val.json"
    bad_json.write_text('{"images": [\n  {"id": 1,}]}')
    bad = registered("pf_badval", str(bad_json), str(tmp_path / "imgs"))
    with pytest.raises(DatasetError, match=r"val\.json: not valid JSON: .* line 2 column 12"):
        check_datasets([good], [bad])
    empty = registered("pf_empty", write(tmp_path, [], name="empty.json"), str(tmp_path / "imgs"))
    with pytest.raises(DatasetError) as e:
        check_datasets([good], [empty])
    assert str(e.value).startswith(str(tmp_path / "empty.json") + ": dataset pf_empty (in DATASETS.TEST) has no "
                                   "annotations"), str(e.value)
    with pytest.raises(DatasetError, match=r"empty\.json: dataset pf_empty \(in DATASETS.TRAIN\) .*nothing to train"):
        check_datasets([empty], [good])
    check_datasets([good], [good])


def test_check_run_checks_datasets_before_the_first_iteration(tmp_path, registered):
    (tmp_path / "imgs").mkdir()
    path = write(tmp_path, [ann(1)])
    name = registered("pf_run", path, str(tmp_path / "imgs"))
    cfg = _cfg("DATASETS.TRAIN", (name,), "DATASETS.TEST", (), "MODEL.DEVICE", "cpu")
    with pytest.raises(DatasetError, match=r"1 of 1 image files are missing.*\n.*im7\.png \(image id 7\)"):
        check_run(cfg)
    check_run(cfg, eval_only=True)  # evaluation reads no training images


def test_no_usable_training_instance_names_the_json(tmp_path):
    path = write(tmp_path, [ann(1, iscrowd=1)])
    register_coco_instances("pf_crowd", path, str(tmp_path))
    try:
        with pytest.raises(DatasetError) as e:
            TrainingSet(["pf_crowd"])
    finally:
        unregister("pf_crowd")
    msg = str(e.value)
    assert f"pf_crowd ({path}): 1 annotations in the file, 1 valid" in msg and "0 of 1 images" in msg, msg
