"""COCO evaluation: GT-as-predictions scores 100, both backends agree to the last bit on noisy predictions, empty
predictions score 0, segm results carry no bbox, and a 2-process gloo evaluation equals a single-process one."""
import json
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
import torch.multiprocessing as mp

from rethink.evaluation import (
    AP_METRICS,
    BACKENDS,
    COCOEvaluator,
    contiguous_id_map,
    instances_to_coco_json,
    save_predictions,
    task_results,
)

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


def test_backends_agree_on_noisy_predictions(gt_json):
    gt = json.load(open(gt_json))
    outputs = _gt_outputs(gt, noisy=True, seed=1)
    (res_fast, ev_fast), (res_py, ev_py) = (_run(gt_json, outputs, b) for b in BACKENDS)
    for task in ("bbox", "segm"):
        np.testing.assert_allclose(ev_fast.stats[task], ev_py.stats[task], rtol=0, atol=1e-9)
    _assert_same_metrics(res_fast, res_py)
    for task in ("bbox", "segm"):
        # noisy: neither perfect nor empty
        assert 5.0 < res_py[task]["AP"] < 95.0
    assert ev_fast.stats["bbox"].tolist() != ev_fast.stats["segm"].tolist()


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


def test_undefined_metrics_are_none_in_both_backends(gt_json):
    gt = json.load(open(gt_json))
    outputs = _gt_outputs(gt)
    # image 9 has no objects, image 5 only a large dog and a small person: no medium object, no car
    per_backend = [_run(gt_json, outputs, b, img_ids=[9, 5]) for b in BACKENDS]
    for results, ev in per_backend:
        for task in ("bbox", "segm"):
            assert results[task]["APm"] is None and results[task]["AP-car"] is None
            assert results[task]["AP"] == pytest.approx(100.0) and results[task]["APs"] == pytest.approx(100.0)
            assert ev.stats[task][4] == -1.0  # raw COCOeval value kept in .stats
            json.loads(json.dumps(results, allow_nan=False))
    _assert_same_metrics(per_backend[0][0], per_backend[1][0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_partial_evaluation_with_img_ids(gt_json, backend):
    gt = json.load(open(gt_json))
    outputs = _gt_outputs(gt)
    some = {i: outputs[i] for i in (1, 8)}
    default, _ = _run(gt_json, some, backend, tasks=("bbox",))  # all images evaluated: others are misses
    partial, _ = _run(gt_json, some, backend, tasks=("bbox",), img_ids=[1, 8])
    assert set(default) == {"bbox"} and default["bbox"]["AP"] < 90.0
    assert partial["bbox"]["AP"] == pytest.approx(100.0)


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
        ev = COCOEvaluator(gt_json, backend="faster_coco_eval")
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
