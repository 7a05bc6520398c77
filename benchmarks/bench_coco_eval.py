"""Wall time of the two COCO eval backends (faster-coco-eval vs pycocotools) on a synthetic COCO-sized set.

    python benchmarks/bench_coco_eval.py                      # 5000 images, ~7 GT and 100 detections per image
    python benchmarks/bench_coco_eval.py --num-images 500     # quicker

Times, per backend: loading the GT json, then ``evaluate_coco_results`` for bbox and for segm (loadRes + evaluate +
accumulate + summarize, exactly what ``COCOEvaluator.evaluate`` runs per task), and checks that both backends give
the same 12 summary statistics.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time

import numpy as np
import pycocotools.mask as mask_util

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from rethink.evaluation import BACKENDS, evaluate_coco_results, load_coco_gt  # noqa: E402

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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-images", type=int, default=5000)
    parser.add_argument("--instances", type=float, default=7.0, help="mean GT instances per image")
    parser.add_argument("--dets", type=int, default=100, help="detections per image")
    parser.add_argument("--tasks", nargs="+", default=["bbox", "segm"])
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS))
    parser.add_argument("--json-out", help="also write the timings here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
    logging.getLogger("rethink").setLevel(logging.WARNING)  # keep the COCO summaries out of the table

    tic = time.perf_counter()
    gt, results = make_synthetic(args.num_images, args.instances, args.dets)
    logger.info(
        "synthetic set: %d images, %d GT instances, %d detections (%.1f s to build)",
        len(gt["images"]), len(gt["annotations"]), len(results), time.perf_counter() - tic,
    )
    rows, stats = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        gt_path = os.path.join(tmp, "gt.json")
        with open(gt_path, "w") as f:
            json.dump(gt, f)
        del gt
        for backend in args.backends:
            tic = time.perf_counter()
            coco_gt = load_coco_gt(gt_path, backend)
            rows.append((backend, "load GT", time.perf_counter() - tic, None))
            for task in args.tasks:
                tic = time.perf_counter()
                res = evaluate_coco_results(coco_gt, results, task, backend)
                rows.append((backend, task, time.perf_counter() - tic, res.metrics["AP"]))
                stats[backend, task] = res.stats
    logger.info("")
    logger.info("| backend          | step    | wall s  | AP     |")
    logger.info("|------------------|---------|---------|--------|")
    for backend, step, seconds, ap in rows:
        logger.info("| %-16s | %-7s | %7.2f | %6s |", backend, step, seconds, "" if ap is None else f"{ap:.3f}")
    if len(args.backends) == 2:
        for task in args.tasks:
            a, b = (stats[bk, task] for bk in args.backends)
            fast = dict((r[0], r[2]) for r in rows if r[1] == task)
            logger.info(
                "%s: max |stat difference| %.2e, speed-up %s/%s = %.1fx", task, float(np.abs(a - b).max()),
                args.backends[1], args.backends[0], fast[args.backends[1]] / fast[args.backends[0]],
            )
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump([{"backend": b, "step": s, "seconds": t, "AP": ap} for b, s, t, ap in rows], f, indent=1)


if __name__ == "__main__":
    main()
