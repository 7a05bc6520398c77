"""PASCAL VOC: XML reading (detectron2's box convention, difficult kept, errors naming the file and the image
id), the built-in names under the datasets root, VOC mAP on hand-made cases against a direct computation of the
VOC rules written here, the evaluator chosen by dataset kind, the paper's VOC configs and sweep, detectron2's
VOC Faster R-CNN parameter names/shapes, VOC mAP in curves and tables, and a tiny generated-VOC run that
trains, evaluates (mAP rises) and plots on CPU."""
import csv
import json
import os

import numpy as np
import pytest
import torch

from rethink.cluster.sweep import load_sweep, plan_table
from rethink.config import load_config
from rethink.data import DatasetError, DatasetNotFoundError, get_dataset_spec
from rethink.data.build import get_dataset
from rethink.data.synthetic_voc import make_synthetic_voc
from rethink.data.voc import CLASS_NAMES, register_pascal_voc, unregister_pascal_voc
from rethink.engine import load_run_config, main_worker, read_metrics
from rethink.evaluation.build import build_evaluator
from rethink.evaluation.coco import COCOEvaluator
from rethink.evaluation.voc import PascalVOCDetectionEvaluator
from rethink.modeling import build_model
from rethink.results.curves import is_voc_run, plot_curves, reference_for
from rethink.results.report import build_table, write_table
from rethink.results.runs import find_runs

from .conftest import CONFIGS, ROOT
from .test_resnext import D2_CONFIGS, _check_against_detectron2, _entry, _no_init, needs_shapes


# --------------------------------------------------------------------------------------------------
# a hand-written VOC tree
# --------------------------------------------------------------------------------------------------
def obj_xml(name, box, difficult=None):
    diff = "" if difficult is None else f"<difficult>{difficult}</difficult>"
    return (f"<object><name>{name}</name><pose>Left</pose><truncated>0</truncated>{diff}<bndbox>"
            f"<xmin>{box[0]}</xmin><ymin>{box[1]}</ymin><xmax>{box[2]}</xmax><ymax>{box[3]}</ymax></bndbox></object>")


def write_image(folder, voc_id, w, h, objects, text=None):
    (folder / "Annotations").mkdir(parents=True, exist_ok=True)
    (folder / "JPEGImages").mkdir(parents=True, exist_ok=True)
    body = text if text is not None else (f"<annotation><filename>{voc_id}.jpg</filename><size><width>{w}</width>"
                                          f"<height>{h}</height><depth>3</depth></size>{''.join(objects)}</annotation>")
    (folder / "Annotations" / f"{voc_id}.xml").write_text(body)


def write_split(folder, split, ids):
    (folder / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    (folder / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(i + "\n" for i in ids))


@pytest.fixture
def voc_root(tmp_path, monkeypatch):
    """<root>/VOC2012 with two images of its val split (one object difficult, one without the tag)."""
    monkeypatch.setenv("RETHINK_DATASETS", str(tmp_path / "datasets"))
    monkeypatch.setenv("RETHINK_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "datasets" / "VOC2012"
    write_image(folder, "2008_000002", 500, 375, [obj_xml("dog", (1, 1, 500, 375), 0),
                                                  obj_xml("person", (48, 240, 195, 371), 1)])
    write_image(folder, "2008_000123", 333, 200, [obj_xml("tvmonitor", (10, 20, 30, 40))])
    write_split(folder, "val", ["2008_000002", "2008_000123"])
    return folder


def test_xml_read_as_detectron2(voc_root):
    spec = get_dataset_spec("voc_2012_val")
    assert (spec.kind, spec.evaluator_type, spec.image_root) == ("voc", "pascal_voc", str(voc_root))
    data = json.loads(open(spec.json_file).read())
    assert data["voc"] == {"dirname": str(voc_root), "split": "val", "year": 2012, "classes": list(CLASS_NAMES)}
    assert [c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])] == list(CLASS_NAMES)
    assert [(im["id"], im["file_name"], im["height"], im["width"], im["voc_id"]) for im in data["images"]] == [
        (2008000002, "JPEGImages/2008_000002.jpg", 375, 500, "2008_000002"),
        (2008000123, "JPEGImages/2008_000123.jpg", 200, 333, "2008_000123")]
    by_name = {CLASS_NAMES[a["category_id"] - 1]: a for a in data["annotations"]}
    # detectron2: (xmin - 1, ymin - 1, xmax, ymax): a box from pixel 1 to W covers the whole image
    assert by_name["dog"]["bbox"] == [0.0, 0.0, 500.0, 375.0] and by_name["dog"]["difficult"] == 0
    assert by_name["person"]["bbox"] == [47.0, 239.0, 148.0, 132.0] and by_name["person"]["difficult"] == 1
    assert by_name["person"]["voc_bbox"] == [48.0, 240.0, 195.0, 371.0]
    assert by_name["tvmonitor"]["difficult"] == 0  # no <difficult> tag: not difficult
    # the loader trains on difficult objects too (detectron2 keeps them)
    ds = get_dataset("voc_2012_val")
    assert ds.index.num_annotations == 3 and ds.index.usable_mask().all()
    assert ds.image_path(0) == str(voc_root / "JPEGImages" / "2008_000002.jpg")
    # a subset of a VOC set is evaluated as VOC
    sub = get_dataset_spec("voc_2012_val_1_s0")
    assert (sub.kind, sub.parent, sub.evaluator_type, sub.image_root) == ("subset", "voc_2012_val", "pascal_voc",
                                                                         str(voc_root))


def test_conversion_is_cached_by_file_stats(voc_root):
    first = get_dataset_spec("voc_2012_val").json_file
    assert get_dataset_spec("voc_2012_val").json_file == first
    write_image(voc_root, "2008_000123", 333, 200, [obj_xml("cat", (10, 20, 30, 40))])  # edited annotation
    second = get_dataset_spec("voc_2012_val").json_file
    assert second != first
    assert {a["category_id"] for a in json.loads(open(second).read())["annotations"]} == {
        CLASS_NAMES.index("dog") + 1, CLASS_NAMES.index("person") + 1, CLASS_NAMES.index("cat") + 1}


@pytest.mark.parametrize("text,match", [
    ("<annotation><size><width>10</width><height>10</height></size><object><name>dog</name>",
     "malformed XML"),
    ("<annotation><size><width>10</width></size></annotation>", "missing <height>"),
    (f"<annotation><size><width>10</width><height>10</height></size>{obj_xml('unicorn', (1, 1, 5, 5))}"
     f"</annotation>", "class 'unicorn' is not one of"),
    ("<annotation><size><width>10</width><height>10</height></size><object><name>dog</name><bndbox><xmin>1</xmin>"
     "<ymin>1</ymin><xmax>five</xmax><ymax>5</ymax></bndbox></object></annotation>", "<xmax> is not a number"),
    (f"<annotation><size><width>10</width><height>10</height></size>{obj_xml('dog', (1, 1, 5, 5), 2)}"
     f"</annotation>", "<difficult> must be 0 or 1"),
])
def test_bad_xml_names_the_file_and_the_image(voc_root, text, match):
    write_image(voc_root, "2008_000123", 0, 0, [], text=text)
    with pytest.raises(DatasetError, match=match) as e:
        get_dataset_spec("voc_2012_val")
    assert str(voc_root / "Annotations" / "2008_000123.xml") in str(e.value) and "image id 2008_000123" in str(e.value)


def test_missing_voc_says_where_it_looked(voc_root):
    with pytest.raises(DatasetNotFoundError, match="VOC2007/ImageSets/Main/test.txt \\(missing\\)") as e:
        get_dataset_spec("voc_2007_test")
    assert "$RETHINK_DATASETS" in str(e.value)
    (voc_root / "Annotations" / "2008_000123.xml").unlink()
    with pytest.raises(DatasetError, match="2008_000123.xml: annotation file not found \\(image id 2008_000123"):
        get_dataset_spec("voc_2012_val")


def test_registered_voc_folder_and_its_year(tmp_path, monkeypatch):
    monkeypatch.setenv("RETHINK_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "mine"
    write_image(folder, "a", 20, 20, [obj_xml("bird", (2, 2, 9, 9))])
    write_image(folder, "b", 20, 20, [obj_xml("bird", (5, 5, 15, 15))])
    write_split(folder, "test", ["b", "a"])
    register_pascal_voc("my_voc", str(folder), "test", 2007, class_names=("bird", "fish"))
    try:
        spec = get_dataset_spec("my_voc")
        data = json.loads(open(spec.json_file).read())
        assert [im["id"] for im in data["images"]] == [1, 2]  # ids not all digits: the line numbers
        assert data["voc"]["year"] == 2007 and [c["name"] for c in data["categories"]] == ["bird", "fish"]
        with pytest.raises(DatasetError, match="built-in dataset name"):
            register_pascal_voc("voc_2007_test", str(folder), "test", 2007)
    finally:
        unregister_pascal_voc("my_voc")


# --------------------------------------------------------------------------------------------------
# VOC mAP against a direct computation of the VOC rules
# --------------------------------------------------------------------------------------------------
def reference_iou(a, b):
    """VOC overlap: boxes are inclusive pixel ranges, so a box from x1 to x2 is x2 - x1 + 1 wide."""
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / ((a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - inter)


def reference_ap(dets, gts, thresh, use_07):
    """dets: [(image, score, box in VOC coordinates)], gts: [(image, box, difficult)] of one class. Detections
    in decreasing score; each takes the ground truth it overlaps most; over the threshold: difficult -> ignored,
    first taker -> TP, later -> FP; otherwise FP."""
    npos = sum(1 for g in gts if not g[2])
    if npos == 0:
        return None
    taken = set()
    flags = []  # True TP, False FP (ignored detections leave no flag)
    for image, _, box in sorted(dets, key=lambda d: -d[1]):
        cands = [(reference_iou(box, g[1]), k) for k, g in enumerate(gts) if g[0] == image]
        best, k = max(cands, key=lambda c: (c[0], -c[1])) if cands else (0.0, None)
        if cands and best > thresh:
            if gts[k][2]:
                continue
            flags.append(k not in taken)
            taken.add(k)
        else:
            flags.append(False)
    recall, precision, tp = [], [], 0
    for i, f in enumerate(flags, 1):
        tp += f
        recall.append(tp / npos)
        precision.append(tp / i)
    if use_07:  # the mean of the best precision at recall >= 0, 0.1, ..., 1 (detectron2 draws them as k * 0.1)
        return sum(max([p for r, p in zip(recall, precision) if r >= k * 0.1], default=0.0) for k in range(11)) / 11
    ap, prev = 0.0, 0.0  # each recall step times the best precision from there on
    for i, r in enumerate(recall):
        if r > prev:
            ap += (r - prev) * max(precision[i:])
            prev = r
    return ap


def voc_json(tmp_path, year, images, gts, classes=("cat", "dog")):
    """A converted-json stand-in: images [(id, voc_id)], gts [(image id, class index, xyxy, difficult)]."""
    data = {"voc": {"dirname": "", "split": "test", "year": year, "classes": list(classes)},
            "categories": [{"id": k + 1, "name": c} for k, c in enumerate(classes)],
            "images": [{"id": i, "file_name": f"JPEGImages/{v}.jpg", "height": 100, "width": 100, "voc_id": v}
                       for i, v in images],
            "annotations": [{"id": n + 1, "image_id": i, "category_id": c + 1, "bbox": [b[0] - 1, b[1] - 1, 1, 1],
                             "iscrowd": 0, "difficult": d, "voc_bbox": list(b)} for n, (i, c, b, d) in enumerate(gts)]}
    path = tmp_path / f"voc{year}.json"
    path.write_text(json.dumps(data))
    return str(path)


def run_evaluator(json_file, outputs, gather=None):
    ev = PascalVOCDetectionEvaluator(json_file, gather=gather)
    ev.reset()
    for image_id, out in outputs:
        ev.process([image_id], [{k: torch.as_tensor(v) for k, v in out.items()}])
    return ev, ev.evaluate()["bbox"]


def test_hand_made_case_by_hand(tmp_path):
    """One class, boxes 0-based as the model gives them (x1 + 1, y1 + 1 in VOC's coordinates): detection 1 takes
    box A (TP), detection 2 takes A again (FP), detection 3 takes the difficult box (ignored), detection 4 box B
    (TP). Recall .5 .5 .5 1, precision 1 .5 .5 2/3: area rule .5 x 1 + .5 x 2/3; the 11-point rule 6 points at 1
    and 5 at 2/3."""
    gts = [(1, 0, (1, 1, 10, 10), 0), (1, 0, (31, 31, 40, 40), 1), (2, 0, (1, 1, 20, 20), 0)]
    out1 = {"boxes": [[0, 0, 10, 10], [0, 0, 9, 9], [30, 30, 40, 40]], "scores": [0.9, 0.8, 0.7], "labels": [1, 1, 1]}
    out2 = {"boxes": [[0, 0, 20, 20]], "scores": [0.6], "labels": [1]}
    for year, expected in ((2012, 100 * (0.5 + 0.5 * 2 / 3)), (2007, 100 * (6 + 5 * 2 / 3) / 11)):
        _, res = run_evaluator(voc_json(tmp_path, year, [(1, "a"), (2, "b")], gts), [(1, out1), (2, out2)])
        assert res["AP50"] == pytest.approx(expected, abs=1e-9)
    assert res["AP75"] == pytest.approx(res["AP50"])  # the matches are exact


def test_inclusive_pixel_overlap(tmp_path):
    """VOC box (1, 1, 2, 2) is 2 x 2 pixels; the model's (0, 0, 3, 2) is (1, 1, 3, 2) there, 3 x 2 pixels: overlap
    4 / 6 > 0.5 by VOC's rule (1 / 2, not > 0.5, with exclusive areas)."""
    path = voc_json(tmp_path, 2012, [(1, "a")], [(1, 0, (1, 1, 2, 2), 0)])
    _, res = run_evaluator(path, [(1, {"boxes": [[0, 0, 3, 2]], "scores": [0.5], "labels": [1]})])
    assert res["AP50"] == 100.0 and res["AP75"] == 0.0
    assert res["AP"] == pytest.approx(100.0 * 4 / 10)  # over 0.5 at t = 0.50, 0.55, 0.60, 0.65
    # an overlap of exactly 0.5 (50 of 100 pixels) is not a match: "> t"
    path = voc_json(tmp_path, 2012, [(1, "a")], [(1, 0, (1, 1, 10, 10), 0)])
    _, res = run_evaluator(path, [(1, {"boxes": [[0, 0, 10, 5]], "scores": [0.5], "labels": [1]})])
    assert res["AP50"] == 0.0


@pytest.mark.parametrize("year", [2007, 2012])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_cases_equal_the_direct_computation(tmp_path, year, seed):
    rng = np.random.default_rng(seed)
    images = [(10 + 3 * i, f"{i:06d}") for i in range(10)]
    gts = []
    for image_id, _ in images:
        for _ in range(int(rng.integers(0, 6))):
            x, y = rng.integers(1, 60, size=2)
            w, h = rng.integers(5, 40, size=2)
            gts.append((image_id, int(rng.integers(0, 3)), (int(x), int(y), int(x + w), int(y + h)),
                        int(rng.random() < 0.2)))
    outputs, dets = [], {c: [] for c in range(3)}
    scores = rng.permutation(1000)[:100] / 1000 + 0.0004  # distinct after rounding to 3 decimals
    n = 0
    for image_id, _ in images:
        k = int(rng.integers(1, 10))
        boxes = []
        for _ in range(k):
            own = [g for g in gts if g[0] == image_id]
            if own and rng.random() < 0.8:  # near a ground-truth box
                b = np.array(rng.choice([g[2] for g in own]), dtype=float) + rng.normal(0, 2, size=4)
                boxes.append([b[0] - 1, b[1] - 1, b[2], b[3]])
            else:
                x, y = rng.uniform(0, 60, size=2)
                boxes.append([x, y, x + rng.uniform(5, 40), y + rng.uniform(5, 40)])
        boxes = np.round(np.array(boxes, dtype=np.float32).reshape(-1, 4), 1)
        own_labels = [g[1] + 1 for g in gts if g[0] == image_id]
        labels = np.array([rng.choice(own_labels) if own_labels and rng.random() < 0.7 else rng.integers(1, 4)
                           for _ in range(k)], dtype=np.int64)
        s = scores[n:n + k]
        n += k
        outputs.append((image_id, {"boxes": boxes, "scores": s.astype(np.float32), "labels": labels}))
        for b, sc, lab in zip(boxes.tolist(), s.tolist(), labels.tolist()):
            voc_box = (round(b[0] + 1, 1), round(b[1] + 1, 1), round(b[2], 1), round(b[3], 1))
            dets[lab - 1].append((image_id, sc, voc_box))
    path = voc_json(tmp_path, year, images, gts, classes=("a", "b", "c"))
    ev, res = run_evaluator(path, outputs)
    per_t = []
    for t in [x / 100 for x in range(50, 100, 5)]:
        aps = [reference_ap(dets[c], [(g[0], g[2], g[3]) for g in gts if g[1] == c], t, year == 2007)
               for c in range(3)]
        aps = [a * 100 for a in aps if a is not None]
        per_t.append(sum(aps) / len(aps))
    assert res["AP50"] == pytest.approx(per_t[0], abs=1e-9)
    assert res["AP75"] == pytest.approx(per_t[5], abs=1e-9)
    assert res["AP"] == pytest.approx(sum(per_t) / 10, abs=1e-9)
    assert 0 < res["AP50"] < 100
    # two ranks, each with half of the images (in any order): the same numbers
    halves = [outputs[1::2], outputs[0::2]]
    evs = [PascalVOCDetectionEvaluator(path, gather=lambda preds, k=k: None if k else gathered) for k in range(2)]
    gathered = []
    for e, half in zip(evs, halves):
        e.reset()
        for image_id, out in half:
            e.process([image_id], [out])
        gathered.append(e._predictions)
    assert evs[1].evaluate() == {}
    assert evs[0].evaluate()["bbox"] == res


def test_classes_without_ground_truth_are_left_out(tmp_path, caplog):
    path = voc_json(tmp_path, 2012, [(1, "a")], [(1, 0, (1, 1, 10, 10), 0), (1, 1, (20, 20, 30, 30), 1)])
    ev, res = run_evaluator(path, [(1, {"boxes": [[0, 0, 10, 10], [19, 19, 30, 30]], "scores": [0.9, 0.8],
                                        "labels": [1, 2]})])
    assert res == {"AP": 100.0, "AP50": 100.0, "AP75": 100.0}  # "dog" (only a difficult box) has no AP
    assert ev.per_class["dog"] is None and "left out of the mean: dog" in caplog.text


def test_evaluator_chosen_by_dataset_kind(voc_root):
    voc = get_dataset_spec("voc_2012_val")
    assert isinstance(build_evaluator(voc, "pycocotools", ("bbox",)), PascalVOCDetectionEvaluator)
    with pytest.raises(ValueError, match="boxes only"):
        build_evaluator(voc, "pycocotools", ("bbox", "segm"))
    coco_like = voc._replace(evaluator_type="coco")
    assert isinstance(build_evaluator(coco_like, "pycocotools", ("bbox",)), COCOEvaluator)


# --------------------------------------------------------------------------------------------------
# configs, sweep, detectron2's model
# --------------------------------------------------------------------------------------------------
VOC_FASTER_RCNN_R50 = "faster_rcnn_R_50_FPN VOC"


@needs_shapes
def test_detectron2_voc_faster_rcnn_names_and_shapes():
    entry = _entry(VOC_FASTER_RCNN_R50)
    cfg = load_config(D2_CONFIGS / entry["config"], list(entry["overrides"]))
    assert not cfg.MODEL.MASK_ON and cfg.MODEL.ROI_HEADS.NUM_CLASSES == 20
    with _no_init():
        model = build_model(cfg)
    _check_against_detectron2(model, entry, 41_392_436)


@pytest.mark.parametrize("init", ["scratch", "pretrained"])
def test_paper_voc_configs(init):
    cfg = load_config(CONFIGS / "voc" / f"{init}_gn_r101.yaml")
    s = cfg.SOLVER
    assert (s.MAX_ITER, tuple(s.STEPS), s.IMS_PER_BATCH, s.BASE_LR, s.WARMUP_ITERS) == (
        (144_000, (132_000, 140_000), 16, 0.02, 100) if init == "scratch"
        else (18_000, (12_000, 16_000), 16, 0.02, 100))
    assert tuple(cfg.DATASETS.TRAIN) == ("voc_2007_trainval", "voc_2012_train")
    assert tuple(cfg.DATASETS.TEST) == ("voc_2012_val",)
    assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == tuple(range(480, 801, 32)) and cfg.INPUT.MIN_SIZE_TEST == 800
    assert (cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.RESNETS.NORM, cfg.MODEL.FPN.NORM, cfg.MODEL.ROI_BOX_HEAD.NORM) == (
        101, "GN", "GN", "GN")
    assert (cfg.MODEL.WEIGHTS == "") == (init == "scratch")
    with _no_init():
        model = build_model(cfg)
    shapes = {k: tuple(v.shape) for k, v in model.named_parameters()}
    assert not any("mask" in k for k in shapes)
    assert shapes["roi_heads.box_predictor.cls_score.weight"] == (21, 1024)
    assert shapes["roi_heads.box_predictor.bbox_pred.weight"] == (80, 1024)
    # the paper's COCO R101 GN model less its mask head, with 20 + 1 classes
    with _no_init():
        coco = build_model(load_config(CONFIGS / f"{init}_gn_r101.yaml"))
    coco_shapes = {k: tuple(v.shape) for k, v in coco.named_parameters() if "mask" not in k}
    assert set(coco_shapes) == set(shapes)
    assert {k for k in shapes if shapes[k] != coco_shapes[k]} == {
        f"roi_heads.box_predictor.{n}.{p}" for n in ("cls_score", "bbox_pred") for p in ("weight", "bias")}


def test_voc_sweep_dry_run_gpu_hours():
    sweep = load_sweep(str(ROOT / "launch" / "sweeps" / "voc.yaml"), root="/tmp/sweeps")
    runs = {r.name: r for r in sweep.runs}
    assert sorted(runs) == ["pretrained_s0", "scratch_s0"]
    assert (runs["scratch_s0"].max_iter, runs["pretrained_s0"].max_iter) == (144_000, 18_000)
    assert runs["scratch_s0"].gpu_hours(sweep.resources) == pytest.approx(144_000 * 0.45 * 8 / 3600)
    assert "162000 iterations, ~162 GPU-hours" in plan_table(sweep)


# --------------------------------------------------------------------------------------------------
# curves and tables
# --------------------------------------------------------------------------------------------------
def make_voc_run(root, init, evals):
    d = root / init
    d.mkdir(parents=True)
    cfg = load_config(CONFIGS / "voc" / f"{init}_gn_r101.yaml", ["SEED", "0"])
    (d / "config.yaml").write_text(cfg.dump())
    lines = [{"iteration": it, "bbox/AP": ap50 / 2, "bbox/AP50": ap50, "bbox/AP75": ap50 / 2}
             for it, ap50 in evals.items()]
    (d / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return d


def test_voc_runs_in_curves_and_table(tmp_path):
    make_voc_run(tmp_path / "runs", "pretrained", {9000: 80.0, 18000: 82.0})
    make_voc_run(tmp_path / "runs", "scratch", {72000: 70.0, 144000: 78.1})
    runs = find_runs([str(tmp_path / "runs")])
    assert all(is_voc_run(r) for r in runs)
    assert {r.axes["init"]: reference_for(r).voc_map for r in runs} == {"pretrained": 82.7, "scratch": 77.6}
    rows = {r["init"]: r for r in build_table(runs)}
    assert (rows["scratch"]["voc_mAP"], rows["scratch"]["paper_voc_mAP"], rows["scratch"]["delta_voc"]) == (
        78.1, 77.6, 0.5)
    assert (rows["pretrained"]["voc_mAP_best"], rows["pretrained"]["delta_voc"]) == (82.0, -0.7)
    assert rows["pretrained"].get("paper_box_AP") is None  # no COCO number for a VOC run
    md = open(write_table(list(rows.values()), str(tmp_path / "table"))["md"]).read()
    assert "voc_mAP" in md and "paper_voc_mAP" in md
    paths = plot_curves(runs, str(tmp_path / "curves"))
    got = {(r["group"].split()[0], int(r["iteration"])): r for r in csv.DictReader(open(paths["csv"]))}
    assert float(got[("scratch", 144000)]["voc_map_mean"]) == 78.1
    assert float(got[("scratch", 144000)]["box_ap_mean"]) == pytest.approx(39.05)
    assert os.path.getsize(paths["png"]) > 1000


# --------------------------------------------------------------------------------------------------
# the tiny generated-VOC run
# --------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_tiny_voc_run_trains_evaluates_and_plots(tmp_path, monkeypatch):
    monkeypatch.setenv("RETHINK_DATASETS", str(tmp_path / "datasets"))
    monkeypatch.setenv("RETHINK_CACHE", str(tmp_path / "cache"))
    make_synthetic_voc(str(tmp_path / "datasets"))
    out = tmp_path / "run"
    cfg = load_run_config(str(CONFIGS / "demo" / "scratch_gn_r18_tiny.yaml"), [
        "MODEL.MASK_ON", "False", "MODEL.ROI_HEADS.NUM_CLASSES", "20",
        "DATASETS.TRAIN", "('voc_2007_trainval', 'voc_2012_train')", "DATASETS.TEST", "('voc_2012_val',)",
        "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "192", "INPUT.MIN_SIZE_TEST", "96",
        "INPUT.MAX_SIZE_TEST", "192", "SOLVER.MAX_ITER", "40", "SOLVER.STEPS", "(32,)", "SOLVER.WARMUP_ITERS", "10",
        "TEST.EVAL_PERIOD", "20", "SOLVER.CHECKPOINT_PERIOD", "1000", "OUTPUT_DIR", str(out)])
    main_worker(cfg)
    evals = [m for m in read_metrics(str(out / "metrics.jsonl")) if "bbox/AP50" in m]
    assert [m["iteration"] for m in evals] == [20, 40]
    assert {"bbox/AP", "bbox/AP50", "bbox/AP75"} <= set(evals[-1]) and "segm/AP" not in evals[-1]
    assert evals[-1]["bbox/AP50"] > evals[0]["bbox/AP50"] + 5  # VOC mAP rises
    [run] = find_runs([str(out)])
    assert is_voc_run(run)
    paths = plot_curves([run], str(tmp_path / "curves"))
    rows = list(csv.DictReader(open(paths["csv"])))
    assert [float(r["voc_map_mean"]) for r in rows] == pytest.approx([m["bbox/AP50"] for m in evals], abs=1e-3)
    [row] = build_table([run])
    assert row["voc_mAP"] == evals[-1]["bbox/AP50"]
