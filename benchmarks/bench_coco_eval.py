"""Wall time of the COCO eval backends (pycocotools, faster-coco-eval, hotcoco) side by side, on a synthetic
COCO-sized set, as ratios to pycocotools (the reference), with their agreement on the 12 summary statistics.

    python benchmarks/bench_coco_eval.py                      # 5000 images, ~7 GT and 100 detections per image
    python benchmarks/bench_coco_eval.py --num-images 500     # quicker
    python benchmarks/bench_coco_eval.py --threads 1          # hotcoco on one thread (RAYON_NUM_THREADS=1)

Times, per backend: loading the GT json, then ``evaluate_coco_results`` for bbox and for segm (loadRes + evaluate +
accumulate + summarize + per-category AP, exactly what ``COCOEvaluator.evaluate`` runs per task), then "bbox from
outputs": the whole ``COCOEvaluator`` on boxes, from the model's outputs (per image: float32 XYXY boxes, scores and
labels as torch tensors) through ``process`` (turning them into COCO results) and ``evaluate``, as an evaluation
during training runs it. ``--repeat N`` runs each evaluation N times and reports the median. Speed-up = pycocotools
seconds / backend seconds. The last columns compare each backend's 12 summary statistics and per-category AP with
pycocotools' ("identical" = equal as float64 numbers).
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import os
import sys
import tempfile
import time

import numpy as np
import pycocotools.mask as mask_util
import torch

from rethink.evaluation import BACKENDS, REFERENCE_BACKEND, COCOEvaluator, evaluate_coco_results, load_coco_gt
from rethink.evaluation.coco import contiguous_id_map

logger = logging.getLogger("bench_coco_eval")
CAT_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]  # COCO's 80 category ids


def _polygon(rng, cx, cy, w, h):
    """A convex-ish polygon (octagon with jittered radii) inside the box centered at (cx, cy)."""
    ang = np.linspace(0, 2 * np.pi, 8, endpoint=False) + rng.uniform(0, 0.3)
    r = rng.uniform(0.7, 1.0, 8)
    xs = cx + 0.5 * w * r * np.cos(ang)
    ys = cy + 0.5 * h * r * np.sin(ang)
    return np.stack([xs, ys], 1).reshape(-1).round(2).tolist()


def make_synthetic(num_images, instances, dets, seed=0, height=480, width=640):
    rng = np.random.default_rng(seed)
    images, anns, results = [], [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "height": height, "width": width, "file_name": f"{image_id:012d}.jpg"})
        n_gt = int(rng.poisson(instances))
        gt_boxes = []
        for _ in range(n_gt):
            side = float(np.exp(rng.uniform(np.log(8), np.log(400))))  # log-uniform: small, medium and large
            w, h = side * rng.uniform(0.6, 1.4), side * rng.uniform(0.6, 1.4)
            w, h = min(w, width - 2), min(h, height - 2)
            cx, cy = rng.uniform(w / 2, width - w / 2), rng.uniform(h / 2, height - h / 2)
            poly = _polygon(rng, cx, cy, w, h)
            rle = mask_util.frPyObjects([poly], height, width)[0]
            cat = int(rng.choice(CAT_IDS))
            anns.append({
                "id": len(anns) + 1, "image_id": image_id, "category_id": cat, "segmentation": [poly],
                "area": float(mask_util.area(rle)), "bbox": mask_util.toBbox(rle).tolist(),
                "iscrowd": int(rng.random() < 0.01),
            })
            gt_boxes.append((cx, cy, w, h, cat))
        polys, boxes, cats = [], [], []
        for k in range(dets):
            if k < 3 * len(gt_boxes):  # up to 3 noisy hits per object, some with the wrong class
                cx, cy, w, h, cat = gt_boxes[k % len(gt_boxes)]
                s = rng.normal(0, 0.1, 4)
                cx, cy, w, h = cx + s[0] * w, cy + s[1] * h, w * np.exp(s[2]), h * np.exp(s[3])
                cat = cat if rng.random() < 0.8 else int(rng.choice(CAT_IDS))
            else:  # background false positives
                w, h = rng.uniform(8, 300, 2)
                cx, cy, cat = rng.uniform(0, width), rng.uniform(0, height), int(rng.choice(CAT_IDS))
            x0, y0 = max(cx - w / 2, 0.0), max(cy - h / 2, 0.0)
            x1, y1 = min(cx + w / 2, width - 1.0), min(cy + h / 2, height - 1.0)
            polys.append(_polygon(rng, (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, 1.0), max(y1 - y0, 1.0)))
            boxes.append([x0, y0, max(x1 - x0, 0.0), max(y1 - y0, 0.0)])
            cats.append(cat)
        rles = mask_util.frPyObjects(polys, height, width)
        hits = np.arange(dets) < 3 * len(gt_boxes)
        scores = np.where(hits, rng.uniform(0.3, 1.0, dets), rng.uniform(0.05, 0.6, dets))
        for rle, box, cat, score in zip(rles, boxes, cats, scores):
            rle["counts"] = rle["counts"].decode("utf-8")
            results.append({"image_id": image_id, "category_id": cat, "bbox": [float(v) for v in box],
                            "score": float(score), "segmentation": rle})
    gt = {"images": images, "annotations": anns, "categories": [{"id": c, "name": f"c{c}"} for c in CAT_IDS]}
    return gt, results


def model_outputs(results, cat_ids):
    """The detections of `results` as a model gives them: per image, torch float32 XYXY boxes, scores and contiguous
    labels (1..K), without masks. Returns [(image_id, output)]."""
    to_label = {c: k for k, c in contiguous_id_map(cat_ids).items()}
    by_image = {}
    for r in results:
        by_image.setdefault(r["image_id"], []).append(r)
    outputs = []
    for image_id in sorted(by_image):
        rs = by_image[image_id]
        boxes = np.array([r["bbox"] for r in rs], dtype=np.float64)
        boxes[:, 2:] += boxes[:, :2]
        outputs.append((image_id, {"boxes": torch.tensor(boxes, dtype=torch.float32),
                                   "scores": torch.tensor([r["score"] for r in rs], dtype=torch.float32),
                                   "labels": torch.tensor([to_label[r["category_id"]] for r in rs])}))
    return outputs


def evaluate_outputs(gt_path, coco_gt, outputs, backend):
    """COCOEvaluator on boxes from model outputs (process, then evaluate); the ground truth is loaded already."""
    evaluator = COCOEvaluator(gt_path, backend=backend, tasks=("bbox",))
    evaluator._coco_gt = coco_gt  # timed apart ("load GT")
    evaluator.reset()
    for image_id, output in outputs:
        evaluator.process([image_id], [output])
    evaluator.evaluate()
    return evaluator


def _compare(stats, ref_stats, metrics, ref_metrics) -> str:
    """'identical' or the largest difference (summary stats as fractions, per-category AP in percent)."""
    if stats.tolist() == ref_stats.tolist() and metrics == ref_metrics:
        return "identical"
    if list(metrics) != list(ref_metrics) or [v is None for v in metrics.values()] != [
            v is None for v in ref_metrics.values()]:
        return "DIFFERENT keys or undefined entries"
    d_stat = float(np.abs(stats - ref_stats).max())
    d_cat = max((abs(v - ref_metrics[k]) / 100.0 for k, v in metrics.items() if v is not None), default=0.0)
    return f"max |diff| {max(d_stat, d_cat):.1e}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-images", type=int, default=5000)
    parser.add_argument("--instances", type=float, default=7.0, help="mean GT instances per image")
    parser.add_argument("--dets", type=int, default=100, help="detections per image")
    parser.add_argument("--tasks", nargs="+", default=["bbox", "segm"])
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS,
                        help="pycocotools, the reference, is always run (first)")
    parser.add_argument("--repeat", type=int, default=1, help="evaluations per backend and task (median reported)")
    parser.add_argument("--threads", type=int, help="cap hotcoco's rayon threads (RAYON_NUM_THREADS)")
    parser.add_argument("--json-out", help="also write the timings here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
    logging.getLogger("rethink").setLevel(logging.WARNING)  # keep the COCO summaries out of the table
    if args.threads:
        os.environ["RAYON_NUM_THREADS"] = str(args.threads)  # read when hotcoco starts its thread pool
    backends = [REFERENCE_BACKEND] + [b for b in dict.fromkeys(args.backends) if b != REFERENCE_BACKEND]
    versions = {}
    for b in backends:
        try:
            versions[b] = importlib.metadata.version(b.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            versions[b] = "?"

    tic = time.perf_counter()
    gt, results = make_synthetic(args.num_images, args.instances, args.dets)
    logger.info(
        "synthetic set: %d images, %d GT instances, %d detections (%.1f s to build); %d CPUs usable, "
        "RAYON_NUM_THREADS=%s", len(gt["images"]), len(gt["annotations"]), len(results),
        time.perf_counter() - tic, len(os.sched_getaffinity(0)), os.environ.get("RAYON_NUM_THREADS", "(all)"),
    )
    seconds, outcome = {}, {}
    outputs = model_outputs(results, CAT_IDS)
    from_outputs = "bbox from outputs"
    with tempfile.TemporaryDirectory() as tmp:
        gt_path = os.path.join(tmp, "gt.json")
        with open(gt_path, "w") as f:
            json.dump(gt, f)
        del gt
        for backend in backends:
            tic = time.perf_counter()
            coco_gt = load_coco_gt(gt_path, backend)
            seconds[backend, "load GT"] = time.perf_counter() - tic
            for task in args.tasks:
                times = []
                for _ in range(max(args.repeat, 1)):
                    tic = time.perf_counter()
                    res = evaluate_coco_results(coco_gt, results, task, backend)
                    times.append(time.perf_counter() - tic)
                seconds[backend, task] = float(np.median(times))
                outcome[backend, task] = res
                logger.info("%s %s: %.2f s, AP %.3f", backend, task, seconds[backend, task], res.metrics["AP"])
            times = []
            for _ in range(max(args.repeat, 1)):
                tic = time.perf_counter()
                evaluator = evaluate_outputs(gt_path, coco_gt, outputs, backend)
                times.append(time.perf_counter() - tic)
            seconds[backend, from_outputs] = float(np.median(times))
            outcome[backend, from_outputs] = evaluator.stats["bbox"]
            logger.info("%s %s: %.2f s, AP %.3f", backend, from_outputs, seconds[backend, from_outputs],
                        100 * evaluator.stats["bbox"][0])
            del coco_gt, evaluator

    ref = REFERENCE_BACKEND
    head = ["step"] + [f"{b} {versions[b]} s" for b in backends] + [f"{b} speed-up" for b in backends[1:]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for step in ["load GT"] + list(args.tasks) + [from_outputs]:
        cells = [step] + [f"{seconds[b, step]:.2f}" for b in backends]
        cells += [f"{seconds[ref, step] / seconds[b, step]:.1f}x" for b in backends[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    logger.info("")
    logger.info("%s", "\n".join(lines))
    logger.info("")
    logger.info("agreement with %s (12 summary statistics + %d per-category AP):", ref,
                sum(k.startswith("AP-") for k in outcome[ref, args.tasks[0]].metrics))
    for task in args.tasks:
        r = outcome[ref, task]
        logger.info("  %s: AP %.3f; %s", task, r.metrics["AP"], "; ".join(
            f"{b} {_compare(outcome[b, task].stats, r.stats, outcome[b, task].metrics, r.metrics)}"
            for b in backends[1:]))
    same = {b: outcome[b, from_outputs].tolist() == outcome[ref, from_outputs].tolist() for b in backends[1:]}
    logger.info("  %s: AP %.3f; %s", from_outputs, 100 * outcome[ref, from_outputs][0], "; ".join(
        f"{b} {'identical' if same[b] else 'DIFFERENT'} (12 summary statistics)" for b in backends[1:]))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump([{"backend": b, "step": s, "seconds": t, "speedup_vs_pycocotools": seconds[ref, s] / t}
                       for (b, s), t in seconds.items()], f, indent=1)


if __name__ == "__main__":
    main()
