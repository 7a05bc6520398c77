"""CPU cost per image of turning detections into COCO results: paste the 28x28 mask probabilities into
the image, binarise, RLE-encode, convert to result dicts. Ours (detectron2's grid_sample paste per box
region + RLE computed over each mask's region) against the reference path (torchvision's integer-box
paste + pycocotools' full-image encode), in one run, as a ratio.

    python benchmarks/bench_eval_postprocess.py                     # 100 detections at 640x480, 20 images
    python benchmarks/bench_eval_postprocess.py --detections 50 --height 800 --width 1333

Prints the median milliseconds per image of each step and the total, with torch on one thread (as one
evaluating rank's CPU share). Both paths give the same boxes; their masks differ by the paste (that is
the point of detectron2's paste), so only times are compared here; tests/test_evaluation.py checks that
the region RLE equals pycocotools' encoding bit for bit.
"""
import argparse
import logging
import statistics
import time

import numpy as np
import torch
from pycocotools import mask as mask_util
from torchvision.models.detection.roi_heads import paste_masks_in_image as torchvision_paste

from rethink.evaluation.coco import instances_to_coco_json
from rethink.modeling.mask_ops import paste_masks_in_image

log = logging.getLogger("bench_eval_postprocess")


def detections(n: int, h: int, w: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.9, h * 0.9])
    wh = 4 + torch.rand(n, 2, generator=g) * torch.tensor([w * 0.35, h * 0.35])
    boxes = torch.cat([xy, torch.minimum(xy + wh, torch.tensor([float(w), float(h)]))], 1)
    return {"boxes": boxes, "scores": torch.rand(n, generator=g), "labels": torch.randint(1, 81, (n,), generator=g),
            "mask_probs": torch.rand(n, 28, 28, generator=g)}


def reference(det, h, w, cats):
    t0 = time.perf_counter()
    masks = torchvision_paste(det["mask_probs"][:, None], det["boxes"], (h, w))[:, 0] > 0.5
    t1 = time.perf_counter()
    rles = mask_util.encode(np.asfortranarray(masks.to(torch.uint8).numpy().transpose(1, 2, 0)))
    for r in rles:
        r["counts"] = r["counts"].decode()
    xywh = det["boxes"].clone()
    xywh[:, 2:] -= xywh[:, :2]
    results = [{"image_id": 1, "category_id": cats[int(c)], "bbox": b, "score": float(s), "segmentation": r}
               for b, s, c, r in zip(xywh.tolist(), det["scores"], det["labels"], rles)]
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, results


def ours(det, h, w, cats):
    t0 = time.perf_counter()
    masks = paste_masks_in_image(det["mask_probs"], det["boxes"], (h, w))
    t1 = time.perf_counter()
    results = instances_to_coco_json({"boxes": det["boxes"], "scores": det["scores"], "labels": det["labels"],
                                      "masks": masks}, 1, cats)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, results


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--detections", type=int, default=100)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--images", type=int, default=20)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    cats = {i: i for i in range(1, 81)}
    times = {"reference": ([], []), "ours": ([], [])}
    for k in range(args.images + 2):  # two warm-up images
        det = detections(args.detections, args.height, args.width, seed=k)
        for name, fn in (("reference", reference), ("ours", ours)):
            paste_s, encode_s, results = fn(det, args.height, args.width, cats)
            assert len(results) == args.detections
            if k >= 2:
                times[name][0].append(paste_s)
                times[name][1].append(encode_s)
    rows = []
    for name, (paste, encode) in times.items():
        total = [a + b for a, b in zip(paste, encode)]
        rows.append((name, 1000 * statistics.median(paste), 1000 * statistics.median(encode),
                     1000 * statistics.median(total)))
    log.info("%d detections at %dx%d, median of %d images, torch on 1 thread (ms per image)",
             args.detections, args.width, args.height, args.images)
    log.info("%-10s %8s %16s %8s", "path", "paste", "encode+convert", "total")
    for name, paste, encode, total in rows:
        log.info("%-10s %8.1f %16.1f %8.1f", name, paste, encode, total)
    log.info("reference / ours: %.1fx", rows[0][3] / rows[1][3])


if __name__ == "__main__":
    main()
