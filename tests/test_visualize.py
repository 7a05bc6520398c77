"""Predictions you can look at: an evaluation writes coco_instances_results.json (COCO results, readable by
pycocotools' loadRes, the numbers it was scored with), the per-category AP table (logged, saved as json and
markdown) and prediction images for TensorBoard; tools/visualize.py draws a run's results and a dataset's ground
truth to PNG files (the drawn colours checked where the boxes and masks are)."""
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pycocotools.mask as mask_util
import pytest
from PIL import Image

from rethink.data import get_dataset_spec
from rethink.engine import Trainer, load_run_config
from rethink.engine.events import TensorboardWriter
from rethink.evaluation import evaluate_coco_results, load_coco_gt
from rethink.evaluation.per_category import format_per_category_table
from rethink.utils.rundir import RunDir
from rethink.visualization import DatasetImages, color_for, write_visualizations
from rethink.visualization.draw import GAP, MASK_ALPHA, TITLE_HEIGHT
from rethink.visualization.render import MIN_DRAWN_SIDE

from .conftest import CONFIGS, ROOT

pytestmark = pytest.mark.usefixtures("isolated_cache")

TINY = str(CONFIGS / "demo" / "scratch_gn_r18_tiny.yaml")
VAL = "synthetic_coco_val"


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """The tiny model as initialised (SEED 3), evaluated by the trainer on the synthetic val set with every
    detection kept (score threshold 0), 20 per image: (run dir, trainer, results, log text)."""
    out = tmp_path_factory.mktemp("evaluated")
    cfg = load_run_config(TINY, ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "TEST.DETECTIONS_PER_IMAGE", "20",
                                 "SEED", "3", "OUTPUT_DIR", str(out)])
    (out / "config.yaml").write_text(cfg.dump())  # as engine.default_setup saves it
    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logging.getLogger("rethink").addHandler(handler)
    old_level = logging.getLogger("rethink").level
    logging.getLogger("rethink").setLevel(logging.INFO)
    try:
        trainer = Trainer(cfg)
        results = trainer.test()
    finally:
        logging.getLogger("rethink").removeHandler(handler)
        logging.getLogger("rethink").setLevel(old_level)
    return out, trainer, results, "\n".join(records)


def test_evaluation_writes_its_detections_as_coco_results(evaluated):
    out, _, results, _ = evaluated
    path = RunDir(out).coco_results_file()
    assert path == str(out / "coco_instances_results.json") and os.path.isfile(path)
    gt_json = get_dataset_spec(VAL).json_file
    gt = load_coco_gt(gt_json, "pycocotools")
    dets = gt.loadRes(path)  # the COCO API reads it as it is
    assert len(dets.anns) == 24 * 20 and set(dets.getImgIds()) <= set(gt.getImgIds())
    saved = json.load(open(path))
    assert all(set(r) == {"image_id", "category_id", "bbox", "score", "segmentation"} for r in saved)
    # the file holds what was scored: pycocotools on it gives the evaluation's AP (hotcoco's) exactly
    for task in ("bbox", "segm"):
        again = evaluate_coco_results(gt, saved, task, "pycocotools")
        assert again.metrics["AP"] == results[VAL][task]["AP"]
        assert again.metrics["AP-triangle"] == results[VAL][task]["AP-triangle"]


def test_per_category_ap_is_logged_and_saved(evaluated):
    out, _, results, log = evaluated
    run = RunDir(out)
    saved = json.load(open(run.per_category_ap_file("json")))
    assert set(saved) == {VAL} and set(saved[VAL]) == {"bbox", "segm"}
    for task in ("bbox", "segm"):
        expected = {k[3:]: v for k, v in results[VAL][task].items() if k.startswith("AP-")}
        assert saved[VAL][task] == expected and set(expected) == {"rectangle", "ellipse", "triangle"}
    md = open(run.per_category_ap_file("md")).read()
    table = format_per_category_table(results[VAL]["bbox"])
    assert f"## {VAL}: bbox AP per category\n\n{table}\n" in md
    assert f"Per-category bbox AP:\n{table}" in log and "Per-category segm AP:\n" in log
    row = table.splitlines()[2]
    assert row.startswith("| rectangle | ") and "| ellipse " in row and "| triangle " in row


def test_per_category_table_layout():
    metrics = {"AP": 10.0, "AP50": 20.0, "AP-person": 12.3456, "AP-car": None, "AP-dog": 0.5, "AP-cat": 7.0}
    assert format_per_category_table(metrics) == "\n".join([
        "| category | AP     | category | AP     | category | AP     |",
        "|:---------|:-------|:---------|:-------|:---------|:-------|",
        "| person   | 12.346 | car      | -      | dog      | 0.500  |",
        "| cat      | 7.000  |          |        |          |        |",
    ])
    assert format_per_category_table({"AP": 1.0}) == ""


def test_evaluation_puts_prediction_images_for_tensorboard(evaluated, tmp_path):
    _, trainer, _, _ = evaluated
    images = trainer.storage.pop_images()
    dataset = DatasetImages.from_name(VAL)
    first = sorted(dataset.image_ids.tolist())[:3]
    assert [name for name, _, _ in images] == [f"{VAL}/predictions/{i}" for i in first]
    for image_id, (_, image, _) in zip(first, images):
        height, width = dataset.image(image_id).shape[:2]
        k = -(-MIN_DRAWN_SIDE // max(height, width))
        assert image.dtype == np.uint8  # predictions beside the ground truth, each under its title
        assert image.shape == (height * k + TITLE_HEIGHT, 2 * width * k + GAP, 3)
    writer = TensorboardWriter(str(tmp_path))
    writer.write_images(images)
    writer.close()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    events.Reload()
    assert sorted(events.Tags()["images"]) == sorted(name for name, _, _ in images)
    shown = events.Images(images[0][0])[0]
    assert (shown.width, shown.height) == (images[0][1].shape[1], images[0][1].shape[0])


def _pixel(png, x, y):
    return tuple(int(v) for v in np.asarray(Image.open(png).convert("RGB"))[int(y), int(x)])


def _one_object_image(images):
    """An image of the synthetic set with one ground-truth instance: (image id, its box, its category)."""
    index = images.dataset.index
    for row in range(index.num_images):
        anns = index.annotations(row, with_segmentation=False)
        if len(anns["bbox"]) == 1:
            return index.image_id(row), anns["bbox"][0].tolist(), int(anns["category_id"][0])
    raise AssertionError("no image with one instance")


def test_visualizer_draws_predictions_above_the_threshold_and_the_ground_truth(tmp_path):
    images = DatasetImages.from_name(VAL)
    image_id, gt_box, gt_cat = _one_object_image(images)
    height, width = images.image(image_id).shape[:2]
    k = -(-MIN_DRAWN_SIDE // max(height, width))  # small images are drawn enlarged k times
    cats = sorted(images.names)
    kept, dropped = cats[0], cats[1]
    assert color_for(kept) != color_for(dropped)
    box = [4.0, 6.0, 30.0, 20.0]  # XYWH
    square = np.zeros((height, width), dtype=np.uint8, order="F")
    square[8:20, 8:20] = 1  # a mask inside the box
    rle = mask_util.encode(square)
    rle["counts"] = rle["counts"].decode()
    results = [{"image_id": image_id, "category_id": kept, "bbox": box, "score": 0.9, "segmentation": rle},
               {"image_id": image_id, "category_id": dropped, "bbox": [40.0, 40.0, 20.0, 20.0], "score": 0.3}]
    (png,) = write_visualizations(images, str(tmp_path), results, threshold=0.5, image_ids=[image_id])
    assert os.path.basename(png) == f"{image_id}_{os.path.splitext(images.file_name(image_id))[0]}.png"
    drawn = np.asarray(Image.open(png).convert("RGB"))
    assert drawn.shape == (height * k + TITLE_HEIGHT, 2 * width * k + GAP, 3)
    top = TITLE_HEIGHT
    # the kept prediction: its box's left edge (mid-height) in its category's colour, its mask blended in it
    assert _pixel(png, box[0] * k, top + (box[1] + box[3] / 2) * k) == color_for(kept)
    original = images.image(image_id)[14, 14].astype(np.float64)
    blended = np.round(original * (1 - MASK_ALPHA) + np.asarray(color_for(kept)) * MASK_ALPHA)
    assert np.abs(np.asarray(_pixel(png, 14 * k + k // 2, top + 14 * k + k // 2)) - blended).max() <= 1
    # the one below the threshold is not drawn: its box's edge keeps the image's own pixel
    x, y = 40 * k, top + 50 * k
    assert _pixel(png, x, y) == tuple(int(v) for v in images.image(image_id)[50, 40])
    # right panel: the ground truth's box in its category's colour
    gx, gy = width * k + GAP + gt_box[0] * k, top + (gt_box[1] + gt_box[3] / 2) * k
    assert _pixel(png, gx, gy) == color_for(gt_cat)


def run_tool(*args):
    return subprocess.run([sys.executable, str(ROOT / "tools" / "visualize.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_visualize_tool_on_a_run(evaluated, tmp_path):
    out, _, _, _ = evaluated
    r = run_tool("--run", str(out), "--max-images", "2", "--conf-threshold", "0.05")
    assert r.returncode == 0, r.stderr
    folder = out / "visualize" / "coco_instances_results"
    pngs = sorted(folder.glob("*.png"))
    assert len(pngs) == 2 and "2 images written" in r.stderr
    image_id = int(pngs[0].name.split("_")[0])
    height, width = DatasetImages.from_name(VAL).image(image_id).shape[:2]
    k = -(-MIN_DRAWN_SIDE // max(height, width))
    assert np.asarray(Image.open(pngs[0])).shape[:2] == (height * k + TITLE_HEIGHT, 2 * width * k + GAP)
    # a folder with no results: one line naming it, exit 1
    r = run_tool("--run", str(tmp_path))
    assert r.returncode == 1 and f"{tmp_path}: no coco_instances_results" in r.stderr
    assert "Traceback" not in r.stderr


def test_visualize_tool_on_a_dataset_and_on_results_of_another(tmp_path):
    images = DatasetImages.from_name(VAL)
    image_id, gt_box, gt_cat = _one_object_image(images)
    r = run_tool("--dataset", VAL, "--output", str(tmp_path / "gt"), "--image-ids", str(image_id))
    assert r.returncode == 0, r.stderr
    (png,) = sorted((tmp_path / "gt").glob("*.png"))
    height, width = images.image(image_id).shape[:2]
    k = -(-MIN_DRAWN_SIDE // max(height, width))
    assert np.asarray(Image.open(png)).shape[:2] == (height * k + TITLE_HEIGHT, width * k)  # one panel
    assert _pixel(png, gt_box[0] * k, TITLE_HEIGHT + (gt_box[1] + gt_box[3] / 2) * k) == color_for(gt_cat)
    spec = get_dataset_spec(VAL)  # the same set named by its files
    r = run_tool("--json", spec.json_file, "--image-root", spec.image_root, "--output", str(tmp_path / "bypath"),
                 "--max-images", "3")
    assert r.returncode == 0 and len(list((tmp_path / "bypath").glob("*.png"))) == 3, r.stderr
    other = tmp_path / "other.json"
    other.write_text(json.dumps([{"image_id": 987654, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 1.0}]))
    r = run_tool("--results", str(other), "--dataset", VAL, "--output", str(tmp_path / "x"))
    assert r.returncode == 1 and "987654" in r.stderr and spec.json_file in r.stderr


def test_results_file_names_per_test_set(tmp_path):
    run = RunDir(tmp_path)
    assert run.coco_results_file() == str(tmp_path / "coco_instances_results.json")
    assert run.coco_results_file("voc/2007 test", tta=True) == str(
        tmp_path / "coco_instances_results_TTA.voc_2007_test.json")
    for name in ("coco_instances_results.json", "coco_instances_results.a_val.json", "coco_instances_results_TTA.json",
                 "other.json"):
        (tmp_path / name).write_text("[]")
    assert run.coco_results_files() == [("a_val", False, str(tmp_path / "coco_instances_results.a_val.json")),
                                        (None, False, str(tmp_path / "coco_instances_results.json")),
                                        (None, True, str(tmp_path / "coco_instances_results_TTA.json"))]
