"""COCO evaluation: GT-as-predictions scores 100; every backend gives pycocotools' 12 summary statistics and
per-category AP (hotcoco bit for bit, faster-coco-eval to 1e-9) on crowd regions, images without GT or detections,
an empty result list, categories and slices without GT, more than 100 detections per image, RLE and polygon GT and a
small version of the benchmark set; empty predictions score 0, segm results carry no bbox, and a 2-process gloo
evaluation equals a single-process one."""
import importlib.util
import json
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
import torch.multiprocessing as mp
from pycocotools import mask as mask_util

from rethink.engine import comm
from rethink.evaluation import (
    AP_METRICS,
    BACKENDS,
    REFERENCE_BACKEND,
    COCOEvaluator,
    contiguous_id_map,
    evaluate_coco_results,
    instances_to_coco_json,
    load_coco_gt,
    save_predictions,
    task_results,
)
from rethink.evaluation import coco as coco_eval

# pycocotools' own decode() trips a numpy 2 DeprecationWarning in the test helpers; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

CAT_IDS = (3, 7, 12)  # non-contiguous on purpose: labels 1, 2, 3 map to 3, 7, 12
CATS = [{"id": 12, "name": "dog"}, {"id": 3, "name": "person"}, {"id": 7, "name": "car"}]  # unsorted in the json
IMAGES = [(1, 240, 320), (2, 200, 300), (5, 256, 256), (8, 180, 360), (9, 240, 320), (13, 220, 280)]


def _rect(x, y, w, h):
    return [x, y, x + w, y, x + w, y + h, x, y + h]


def _gt_dict():
    """6 images, 3 categories, small/medium/large polygons, a compressed-RLE object and an iscrowd RLE region."""
    anns = []

    def add(image_id, cat, segm, iscrowd=0):
        h, w = next((h, w) for i, h, w in IMAGES if i == image_id)
        rle = mask_util.merge(mask_util.frPyObjects(segm, h, w)) if isinstance(segm, list) else segm
        if isinstance(segm, dict) and isinstance(segm["counts"], list):
            rle = mask_util.frPyObjects(segm, h, w)
        anns.append({
            "id": len(anns) + 1, "image_id": image_id, "category_id": cat, "segmentation": segm,
            "area": float(mask_util.area(rle)), "bbox": [float(v) for v in mask_util.toBbox(rle)], "iscrowd": iscrowd,
        })

    # image 1: large person, medium car (triangle), small dog
    add(1, 3, [_rect(20, 30, 130, 150)])
    add(1, 7, [[170, 40, 250, 40, 210, 110]])
    add(1, 12, [_rect(270, 200, 18, 20)])
    # image 2: two medium persons, one small car, an iscrowd region of persons (uncompressed RLE, as in COCO)
    add(2, 3, [_rect(10, 10, 60, 70)])
    add(2, 3, [_rect(100, 20, 45, 80)])
    add(2, 7, [_rect(200, 150, 25, 22)])
    crowd = np.zeros((200, 300), dtype=np.uint8)
    crowd[120:190, 20:150] = 1
    counts, prev, run = [], 0, 0
    for v in crowd.flatten(order="F"):  # column-major runs starting with zeros
        if v != prev:
            counts.append(run)
            run, prev = 0, v
        run += 1
    counts.append(run)
    add(2, 3, {"size": [200, 300], "counts": counts}, iscrowd=1)
    # image 5: large dog as compressed RLE (str counts), small person (hexagon-ish polygon in two parts)
    dog = np.zeros((256, 256), dtype=np.uint8)
    dog[40:200, 60:210] = 1
    dog[80:120, 100:140] = 0  # a hole
    dog_rle = mask_util.encode(np.asfortranarray(dog))
    dog_rle["counts"] = dog_rle["counts"].decode("utf-8")
    add(5, 12, dog_rle)
    add(5, 3, [[5, 5, 20, 5, 25, 15, 20, 25, 5, 25, 2, 15], _rect(30, 5, 6, 6)])
    # image 8: medium + large cars, medium dog
    add(8, 7, [_rect(10, 20, 100, 110)])
    add(8, 7, [_rect(150, 30, 50, 40)])
    add(8, 12, [[220, 60, 330, 60, 330, 150]])
    # image 9: no annotations at all
    # image 13: small, medium and large of everything
    add(13, 3, [_rect(5, 5, 25, 25)])
    add(13, 7, [_rect(40, 40, 70, 60)])
    add(13, 12, [_rect(120, 60, 140, 150)])
    add(13, 12, [_rect(5, 150, 20, 15)])
    return {
        "info": {"description": "tiny test set"},
        "images": [{"id": i, "height": h, "width": w, "file_name": f"{i}.jpg"} for i, h, w in IMAGES],
        "categories": CATS,
        "annotations": anns,
    }


@pytest.fixture(scope="module")
def gt_json(tmp_path_factory):
    path = tmp_path_factory.mktemp("coco") / "instances_tiny.json"
    path.write_text(json.dumps(_gt_dict()))
    return str(path)


def _decode(segm, h, w):
    if isinstance(segm, list):
        rle = mask_util.merge(mask_util.frPyObjects(segm, h, w))
    elif isinstance(segm["counts"], list):
        rle = mask_util.frPyObjects(segm, h, w)
    else:
        rle = segm
    return mask_util.decode(rle)


def _gt_outputs(gt, noisy=False, seed=0):
    """Per-image model outputs (torchvision format, labels 1..K) built from the GT; ``noisy`` jitters boxes and
    masks, randomizes (distinct) scores, drops some objects, mislabels some and adds false positives."""
    rng = np.random.default_rng(seed)
    cat_to_label = {c: label for label, c in contiguous_id_map(CAT_IDS).items()}
    outputs = {}
    for image_id, h, w in IMAGES:
        boxes, labels, masks = [], [], []
        for ann in gt["annotations"]:
            if ann["image_id"] != image_id or ann["iscrowd"]:
                continue
            x, y, bw, bh = ann["bbox"]
            box = np.array([x, y, x + bw, y + bh], dtype=np.float64)
            mask = _decode(ann["segmentation"], h, w).astype(np.float32)
            label = cat_to_label[ann["category_id"]]
            if noisy:
                if rng.random() < 0.1:
                    continue
                box = box + rng.normal(0, 0.06 * max(bw, bh), 4)
                mask = np.roll(mask, tuple(rng.integers(-3, 4, 2)), axis=(0, 1)) * rng.uniform(0.4, 1.0)
                if rng.random() < 0.2:
                    label = int(rng.choice([lb for lb in (1, 2, 3) if lb != label]))
            boxes.append(box)
            labels.append(label)
            masks.append(mask)
        if noisy:
            for _ in range(rng.integers(0, 4)):  # false positives
                bw, bh = rng.uniform(8, 120, 2)
                x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
                mask = np.zeros((h, w), np.float32)
                mask[int(y) : int(y + bh), int(x) : int(x + bw)] = rng.uniform(0.3, 1.0)
                boxes.append(np.array([x, y, x + bw, y + bh]))
                labels.append(int(rng.integers(1, 4)))
                masks.append(mask)
        n = len(boxes)
        outputs[image_id] = {
            "boxes": torch.tensor(np.array(boxes).reshape(n, 4), dtype=torch.float32),
            "scores": torch.tensor(rng.permutation(n) / max(n, 1) * 0.9 + 0.05 + rng.uniform(0, 0.01, n)
                                   if noisy else np.ones(n), dtype=torch.float32),
            "labels": torch.tensor(labels, dtype=torch.int64).reshape(n),
            "masks": torch.tensor(np.array(masks).reshape(n, 1, h, w)),
        }
    return outputs


def _assert_same_metrics(a, b, tol=1e-7):
    """Same tasks, keys, undefined (None) entries and values to ``tol`` percent (= 1e-9 as COCOeval fractions):
    pycocotools divides by tp + fp + eps, so a perfect precision is 1 - 2e-16 there and exactly 1 in
    faster-coco-eval."""
    assert a.keys() == b.keys()
    for task in a:
        assert list(a[task]) == list(b[task])
        for key, value in b[task].items():
            if value is None:
                assert a[task][key] is None, (task, key)
            else:
                assert a[task][key] == pytest.approx(value, rel=0, abs=tol), (task, key)


def _run(gt_json, outputs, backend, image_ids=None, **kwargs):
    ev = COCOEvaluator(gt_json, backend=backend, **kwargs)
    ev.reset()
    ids = list(outputs) if image_ids is None else image_ids
    for i in range(0, len(ids), 2):  # batches of 2
        ev.process(ids[i : i + 2], [outputs[j] for j in ids[i : i + 2]])
    return ev.evaluate(), ev


def test_contiguous_labels_and_coco_json_format():
    assert contiguous_id_map([12, 3, 7]) == {1: 3, 2: 7, 3: 12}
    masks = torch.zeros(2, 1, 10, 12)
    masks[0, 0, 2:5, 3:9] = 0.9
    masks[1, 0, 0:4, 0:2] = 0.5  # exactly 0.5 is background (> 0.5 is foreground)
    masks[1, 0, 5:7, 5:6] = 0.51
    out = {"boxes": torch.tensor([[3.0, 2.0, 9.0, 5.0], [1.5, 2.5, 4.0, 8.0]]), "scores": torch.tensor([0.9, 0.3]),
           "labels": torch.tensor([3, 1]), "masks": masks}
    res = instances_to_coco_json(out, torch.tensor(7), contiguous_id_map(CAT_IDS))
    assert [r["category_id"] for r in res] == [12, 3]
    assert res[0]["bbox"] == [3.0, 2.0, 6.0, 3.0] and res[1]["bbox"] == [1.5, 2.5, 2.5, 5.5]
    assert res[0]["image_id"] == 7 and isinstance(res[0]["image_id"], int)
    assert res[1]["score"] == pytest.approx(0.3)
    assert all(isinstance(r["segmentation"]["counts"], str) for r in res)
    assert mask_util.area(res[0]["segmentation"]) == 18 and mask_util.area(res[1]["segmentation"]) == 2
    assert (mask_util.decode(res[0]["segmentation"]) == (masks[0, 0] > 0.5).numpy()).all()
    json.dumps(res)
    no_masks = {k: v for k, v in out.items() if k != "masks"}
    assert all("segmentation" not in r for r in instances_to_coco_json(no_masks, 7, contiguous_id_map(CAT_IDS)))
    with pytest.raises(ValueError, match="label 4"):
        instances_to_coco_json({**out, "labels": torch.tensor([4, 1])}, 7, contiguous_id_map(CAT_IDS))


@pytest.mark.parametrize("backend", BACKENDS)
def test_ground_truth_as_predictions_scores_100(gt_json, backend):
    gt = json.load(open(gt_json))
    results, ev = _run(gt_json, _gt_outputs(gt), backend)
    assert set(results) == {"bbox", "segm"}
    for task in ("bbox", "segm"):
        for key in AP_METRICS + ("AP-person", "AP-car", "AP-dog"):
            assert results[task][key] == pytest.approx(100.0, abs=1e-9), (task, key, results[task])
        # every AP and AR is defined and perfect, but AR@1 (images with 2 objects of a category)
        np.testing.assert_allclose(np.delete(ev.stats[task], 6), 1.0, atol=1e-12)
        assert 0.5 < ev.stats[task][6] < 1.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_predictions_score_zero(gt_json, backend):
    empty = {i: {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64),
                 "masks": torch.zeros(0, 1, h, w)} for i, h, w in IMAGES}
    results, ev = _run(gt_json, empty, backend)
    nothing, _ = _run(gt_json, {}, backend)  # no process() call at all
    for res in (results, nothing):
        assert set(res) == {"bbox", "segm"}
        for task in ("bbox", "segm"):
            assert res[task] == {k: 0.0 for k in AP_METRICS + ("AP-person", "AP-car", "AP-dog")}


def test_undefined_metrics_are_none_in_every_backend(gt_json):
    gt = json.load(open(gt_json))
    outputs = _gt_outputs(gt)
    # image 9 has no objects, image 5 only a large dog and a small person: no medium object, no car
    per_backend = {b: _run(gt_json, outputs, b, img_ids=[9, 5]) for b in BACKENDS}
    for results, ev in per_backend.values():
        for task in ("bbox", "segm"):
            assert results[task]["APm"] is None and results[task]["AP-car"] is None
            assert results[task]["AP"] == pytest.approx(100.0) and results[task]["APs"] == pytest.approx(100.0)
            assert ev.stats[task][4] == -1.0  # raw COCOeval value kept in .stats
            json.loads(json.dumps(results, allow_nan=False))
    for b in BACKENDS:
        _assert_same_metrics(per_backend[b][0], per_backend[REFERENCE_BACKEND][0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_partial_evaluation_with_img_ids(gt_json, backend):
    gt = json.load(open(gt_json))
    outputs = _gt_outputs(gt)
    some = {i: outputs[i] for i in (1, 8)}
    default, _ = _run(gt_json, some, backend, tasks=("bbox",))  # all images evaluated: others are misses
    partial, _ = _run(gt_json, some, backend, tasks=("bbox",), img_ids=[1, 8])
    assert set(default) == {"bbox"} and default["bbox"]["AP"] < 90.0
    assert partial["bbox"]["AP"] == pytest.approx(100.0)


# --------------------------------------------------------------------------------------------------------------------
# parity with pycocotools, case by case
# --------------------------------------------------------------------------------------------------------------------
NO_GT_CAT = {"id": 20, "name": "cat"}  # a category of the dataset without a single annotation
PARITY_CAT_IDS = CAT_IDS + (NO_GT_CAT["id"],)
CROWD_BOX = (20, 120, 130, 70)  # x, y, w, h of image 2's iscrowd region (see _gt_dict)
#: tolerance (COCOeval fractions) against pycocotools; None = bit-identical. faster-coco-eval computes a perfect
#: precision as exactly 1 where pycocotools gets 1 - 2e-16 (it divides by tp + fp + eps).
PARITY_TOL = {"pycocotools": None, "hotcoco": None, "faster_coco_eval": 1e-9}


@pytest.fixture(scope="module")
def parity_gt_json(tmp_path_factory):
    gt = _gt_dict()
    gt["categories"] = gt["categories"] + [NO_GT_CAT]
    path = tmp_path_factory.mktemp("coco_parity") / "instances_parity.json"
    path.write_text(json.dumps(gt))
    return str(path)


@pytest.fixture(scope="module")
def parity_gt(parity_gt_json):
    """One ground-truth object per backend, reused across cases as COCOEvaluator reuses it across evaluations."""
    return {b: load_coco_gt(parity_gt_json, b) for b in BACKENDS}


def _results(outputs, image_ids=None):
    cmap = contiguous_id_map(PARITY_CAT_IDS)
    ids = list(outputs) if image_ids is None else image_ids
    return [r for i in ids for r in instances_to_coco_json(outputs[i], i, cmap)]


def _rect_result(image_id, cat, x, y, w, h, score):
    """A detection whose mask is its box, as a compressed RLE (str counts) from the box polygon."""
    ih, iw = next((ih, iw) for i, ih, iw in IMAGES if i == image_id)
    rle = mask_util.frPyObjects([_rect(x, y, w, h)], ih, iw)[0]
    rle["counts"] = rle["counts"].decode("utf-8")
    return {"image_id": image_id, "category_id": cat, "bbox": [float(x), float(y), float(w), float(h)],
            "score": float(score), "segmentation": rle}


def _case(name, gt):
    """(COCO results, img_ids) of one parity case."""
    noisy = _gt_outputs(gt, noisy=True, seed=1)
    rng = np.random.default_rng(7)
    if name == "noisy":
        return _results(noisy), None
    if name == "crowd_regions":
        # noisy predictions plus persons inside image 2's crowd region (matched to it, so ignored), a car there
        # (a false positive: a crowd only absorbs its own category) and persons straddling its border
        x, y, w, h = CROWD_BOX
        extra = [_rect_result(2, 3, x + 5, y + 5, 40, 30, 0.95), _rect_result(2, 3, x + 60, y + 20, 50, 40, 0.9),
                 _rect_result(2, 3, x + 2, y + 2, w - 4, h - 4, 0.85), _rect_result(2, 7, x + 10, y + 10, 30, 30, 0.8),
                 _rect_result(2, 3, x - 40, y - 30, 70, 60, 0.7), _rect_result(2, 3, x + w - 30, y + 40, 60, 40, 0.6)]
        return _results(noisy) + extra, None
    if name == "images_without_gt":
        # confident false positives of every category on image 9, which has no annotation
        extra = [_rect_result(9, c, 10 + 30 * k, 20 + 10 * k, 60, 50, 0.99 - 0.01 * k) for k, c in enumerate(CAT_IDS)]
        return _results(noisy) + extra, None
    if name == "images_without_detections":
        return _results(noisy, image_ids=[1, 8]), None  # 2, 5, 9 and 13 have none: their objects are misses
    if name == "empty_results":
        return [], None
    if name == "category_without_gt":
        extra = [_rect_result(i, NO_GT_CAT["id"], 15, 25, 80, 60, s) for i, s in ((1, 0.99), (5, 0.5), (13, 0.7))]
        return _results(noisy) + extra, None
    if name == "slice_without_gt":
        return _results(noisy), [9, 5]  # no medium object, no car, no cat in the slice: -1 / None there
    if name == "more_than_100_detections":
        # 150 detections on images 1 and 13: the true objects below ~100 lower-scored ones on some categories, and
        # scores rounded to 0.05 so that many tie (order then follows the results list, in every backend)
        results = []
        for image_id in (1, 13):
            ih, iw = next((ih, iw) for i, ih, iw in IMAGES if i == image_id)
            for k in range(150):
                w, h = rng.uniform(10, 150, 2)
                x, y = rng.uniform(0, iw - w), rng.uniform(0, ih - h)
                cat = int(rng.choice(CAT_IDS))
                results.append(_rect_result(image_id, cat, x, y, w, h, round(rng.uniform(0.05, 1.0) / 0.05) * 0.05))
            for ann in gt["annotations"]:
                if ann["image_id"] == image_id:
                    x, y, w, h = ann["bbox"]
                    results.append(_rect_result(image_id, ann["category_id"], x + 1, y, w, h, 0.5))
        return results + [r for r in _results(noisy) if r["image_id"] not in (1, 13)], None
    raise ValueError(name)


PARITY_CASES = ("noisy", "crowd_regions", "images_without_gt", "images_without_detections", "empty_results",
                "category_without_gt", "slice_without_gt", "more_than_100_detections")


def _assert_parity(got, ref, tol):
    """12 summary statistics and the metric dict (AP..APl, AP-<category>) of ``got`` equal those of ``ref``:
    exactly when ``tol`` is None, else to ``tol`` (fractions). Undefined entries (-1 / None) must match."""
    assert got.stats.shape == (12,) and ref.stats.shape == (12,)
    assert list(got.metrics) == list(ref.metrics)
    assert [k for k, v in got.metrics.items() if v is None] == [k for k, v in ref.metrics.items() if v is None]
    if tol is None:
        assert got.stats.tolist() == ref.stats.tolist()
        assert got.metrics == ref.metrics
    else:
        np.testing.assert_allclose(got.stats, ref.stats, rtol=0, atol=tol)
        for key, value in ref.metrics.items():
            if value is not None:
                assert got.metrics[key] == pytest.approx(value, rel=0, abs=tol * 100), key


@pytest.mark.parametrize("case", PARITY_CASES)
def test_backends_match_pycocotools(parity_gt_json, parity_gt, case):
    gt = json.load(open(parity_gt_json))
    results, img_ids = _case(case, gt)
    for task in ("bbox", "segm"):
        ref = evaluate_coco_results(parity_gt[REFERENCE_BACKEND], results, task, REFERENCE_BACKEND, img_ids=img_ids)
        for backend in BACKENDS:
            got = evaluate_coco_results(parity_gt[backend], results, task, backend, img_ids=img_ids)
            _assert_parity(got, ref, PARITY_TOL[backend])
        m = ref.metrics
        # each case exercises what it names (checked on the reference)
        assert m["AP-cat"] is None  # never any cat GT
        if case == "empty_results":
            assert ref.stats.tolist() == [0.0] * 12 and results == []
        elif case == "slice_without_gt":
            assert m["APm"] is None and m["AP-car"] is None and ref.stats[4] == ref.stats[10] == -1.0
        else:
            assert 0.0 < m["AP"] < 100.0 and all(m[f"AP-{c['name']}"] is not None for c in CATS)
        if case == "more_than_100_detections":
            assert max(np.unique([r["image_id"] for r in results], return_counts=True)[1]) > 100
            assert ref.stats[8] < 1.0  # AR@100 misses some objects ranked past the 100th detection


def test_crowd_detections_are_ignored(parity_gt_json, parity_gt):
    """Persons on the crowd region change neither AP nor AR@100 (they match the crowd and are ignored); the car
    there is a false positive. Same in every backend."""
    gt = json.load(open(parity_gt_json))
    perfect = [{**r, "score": 0.5} for r in _results(_gt_outputs(gt))]
    x, y, w, h = CROWD_BOX
    on_crowd = [_rect_result(2, 3, x + 5, y + 5, 40, 30, 0.95), _rect_result(2, 3, x + 2, y + 2, w - 4, h - 4, 0.85)]
    car = [_rect_result(2, 7, x + 10, y + 10, 30, 30, 0.99)]
    for backend in BACKENDS:
        for task in ("bbox", "segm"):
            base = evaluate_coco_results(parity_gt[backend], perfect, task, backend)
            crowd = evaluate_coco_results(parity_gt[backend], perfect + on_crowd, task, backend)
            fp = evaluate_coco_results(parity_gt[backend], perfect + car, task, backend)
            # AP and AR@100 unchanged; AR@1 may drop since an ignored detection still takes one of the maxDets
            assert crowd.stats[:6].tolist() == base.stats[:6].tolist(), (backend, task)
            assert crowd.stats[8] == base.stats[8] and crowd.stats[6] < base.stats[6], (backend, task)
            assert fp.metrics["AP-car"] < base.metrics["AP-car"] == pytest.approx(100.0), (backend, task)


def _bench_module():
    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "bench_coco_eval.py")
    spec = importlib.util.spec_from_file_location("bench_coco_eval", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_backends_match_pycocotools_on_benchmark_set(tmp_path):
    """A 40-image version of benchmarks/bench_coco_eval.py's set: 80 categories, polygon GT of every size, 1%
    crowd, 120 detections per image (noisy hits and background), evaluated per-category."""
    gt, results = _bench_module().make_synthetic(40, 7.0, 120, seed=3)
    path = tmp_path / "bench_gt.json"
    path.write_text(json.dumps(gt))
    for task in ("bbox", "segm"):
        ref = evaluate_coco_results(load_coco_gt(path, REFERENCE_BACKEND), results, task, REFERENCE_BACKEND)
        assert 5.0 < ref.metrics["AP"] < 95.0
        for backend in BACKENDS:
            got = evaluate_coco_results(load_coco_gt(path, backend), results, task, backend)
            _assert_parity(got, ref, PARITY_TOL[backend])


def test_segm_results_carry_no_bbox(gt_json, tmp_path):
    gt = json.load(open(gt_json))
    outputs = _gt_outputs(gt, noisy=True)
    results = [r for i, out in outputs.items() for r in instances_to_coco_json(out, i, contiguous_id_map(CAT_IDS))]
    assert results and all("bbox" in r and "segmentation" in r for r in results)
    segm = task_results(results, "segm")
    assert segm and all("bbox" not in r and "segmentation" in r for r in segm)
    assert all("segmentation" not in r for r in task_results(results, "bbox"))
    assert all("bbox" in r for r in results)  # the combined results are left alone

    # the evaluator saves the combined results (atomically) and they round-trip
    _, ev = _run(gt_json, outputs, "faster_coco_eval", output_dir=tmp_path)
    assert json.load(open(tmp_path / "coco_instances_results.json")) == ev.coco_results
    assert "bbox" in ev.coco_results[0]
    save_predictions(tmp_path / "again.json", results[:3])
    assert json.load(open(tmp_path / "again.json")) == results[:3]
    assert sorted(os.listdir(tmp_path)) == ["again.json", "coco_instances_results.json"]  # no temp files left

    with pytest.raises(ValueError, match="no masks"):
        ev.process([1], [{k: v for k, v in outputs[1].items() if k != "masks"}])


def _distributed_worker(rank, world_size, init_file, gt_json, out_file):
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    try:
        gt = json.load(open(gt_json))
        outputs = _gt_outputs(gt, noisy=True, seed=3)
        ids = [i for i, _, _ in IMAGES]
        mine = ids[rank::world_size]
        if rank == 1:
            mine = mine + [ids[0]]  # a padding duplicate, as a DistributedSampler would add
        ev = COCOEvaluator(gt_json, backend="faster_coco_eval", gather=comm.gather_to_main,
                           is_main=comm.is_main_process())
        ev.reset()
        for i in mine:
            ev.process([i], [outputs[i]])
        results = ev.evaluate()
        if rank == 0:
            with open(out_file, "w") as f:
                json.dump({"results": results, "stats": {k: v.tolist() for k, v in ev.stats.items()}}, f)
        else:
            assert results == {} and ev.stats == {}
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()


def test_two_process_gloo_equals_single_process(gt_json, tmp_path):
    out_file = tmp_path / "rank0.json"
    mp.spawn(_distributed_worker, args=(2, str(tmp_path / "init"), gt_json, str(out_file)), nprocs=2, join=True)
    got = json.load(open(out_file))
    gt = json.load(open(gt_json))
    single, ev = _run(gt_json, _gt_outputs(gt, noisy=True, seed=3), "faster_coco_eval")
    assert got["results"] == single
    assert got["stats"] == {k: v.tolist() for k, v in ev.stats.items()}


def test_encode_masks_over_regions_equals_pycocotools():
    """RLEs computed from each mask's bounding region equal pycocotools' encoding of the full mask,
    string for string: empty and full masks, runs crossing columns, masks on every border."""
    rng = np.random.default_rng(0)
    h, w = 37, 53
    masks = np.zeros((10, h, w), dtype=bool)
    masks[1] = True                                  # full image: one run of ones
    masks[2, :, 5] = True                            # one full column
    masks[3, 0, :] = masks[3, -1, :] = True          # top and bottom rows: runs joined across columns
    masks[4, 0, 0] = masks[4, -1, -1] = True         # opposite corners
    masks[5, 10:20, 30:53] = True                    # touches the right border
    masks[6] = rng.random((h, w)) < 0.5              # noise
    masks[7, 3:9, 2:4] = rng.random((6, 2)) < 0.7
    masks[8, :, :] = rng.random((h, w)) < 0.02
    masks[9, 5:, :] = True                           # bottom part, full width
    ours = coco_eval.encode_masks(torch.from_numpy(masks))
    theirs = mask_util.encode(np.asfortranarray(masks.astype(np.uint8).transpose(1, 2, 0)))
    assert [r["counts"] for r in ours] == [r["counts"].decode() for r in theirs]
    assert all(r["size"] == [h, w] for r in ours)
    assert coco_eval.encode_masks(torch.from_numpy(masks.astype(np.float32)) * 0.9) == ours  # probabilities > 0.5
