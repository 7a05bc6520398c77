"""PASCAL VOC detection mAP as detectron2's ``PascalVOCDetectionEvaluator`` reports it.

For every class and every IoU threshold t in 0.50, 0.55, ..., 0.95 (detectron2's ``range(50, 100, 5)``):

1. the class's detections over all images, sorted by score, highest first (scores rounded to 3 decimals,
   as detectron2's results lines ``"%.3f"``; equal scores keep numpy's default argsort order of the
   detections in image-set order, which is detectron2's on one process);
2. each detection, in that order, is compared with every ground-truth box of its class in its image,
   ``difficult`` ones and already matched ones included, by VOC's IoU with inclusive pixel areas
   (``w = x2 - x1 + 1``); the predicted box is moved back to VOC's 1-based coordinates (x1 + 1, y1 + 1)
   and rounded to 0.1 px (detectron2's ``"%.1f"``), the ground truth is the XML's box as written;
3. with the best overlap ``ovmax`` (first box on ties) and ``ovmax > t``: a difficult box -> the detection
   is ignored (neither true nor false positive); an unmatched one -> true positive, now matched; a matched
   one -> false positive. ``ovmax <= t`` (or no box of the class in the image) -> false positive;
4. recall = TP / (number of non-difficult boxes of the class), precision = TP / max(TP + FP, eps);
   AP with the VOC2007 11-point rule (mean over r in ``numpy.arange(0, 1.1, 0.1)`` of the highest
   precision at recall >= r, 0 where none) for a 2007 dataset, else the area under the precision envelope
   (VOC2010+ rule).

Reported (percent, detectron2's names): ``bbox/AP50`` = the mean over classes at t = 0.5 (VOC mAP),
``bbox/AP75`` at t = 0.75, ``bbox/AP`` = the mean of the 10 per-threshold means.

One difference from detectron2: a class without any non-difficult ground-truth box in the evaluated set
has no defined AP (detectron2 divides by zero: 0 with the 11-point rule or without detections, NaN with
the area rule); here it is left out of the means and named in the log, as rethink reports undefined
metrics (rethink.evaluation.coco: ``None``, never NaN). On VOC's real splits every class has boxes, so
the numbers are detectron2's.

The ground truth comes from the converted json of rethink.data.voc (``voc_bbox``, ``difficult``, the
``voc.year``), which holds the XML's values, so the XML files are not read again. Predictions are
gathered to the evaluating rank and put in image-set order: the result does not depend on the number of
ranks.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch

logger = logging.getLogger(__name__)

IOU_THRESHOLDS = tuple(t / 100.0 for t in range(50, 100, 5))
#: the 11 recall points of the VOC2007 rule, as detectron2 draws them (3 * 0.1 = 0.30000000000000004)
RECALL_POINTS_07 = np.arange(0.0, 1.1, 0.1)


def voc_ap(rec: np.ndarray, prec: np.ndarray, use_07_metric: bool) -> float:
    """AP from the recall/precision of the ranked detections (see the module doc, step 4)."""
    rec, prec = np.asarray(rec, dtype=np.float64), np.asarray(prec, dtype=np.float64)
    if use_07_metric:
        total = 0.0
        for r in RECALL_POINTS_07:
            above = prec[rec >= r]
            total += (above.max() if above.size else 0.0) / 11.0
        return float(total)
    mrec = np.concatenate(([0.0], rec, [1.0]))
    envelope = np.maximum.accumulate(np.concatenate(([0.0], prec, [0.0]))[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * envelope[steps + 1]))


def voc_iou(boxes: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """[D, G] IoU of XYXY boxes with VOC's inclusive pixel areas (w = x2 - x1 + 1)."""
    b, g = boxes[:, None, :], gt[None, :, :]
    iw = np.maximum(np.minimum(b[..., 2], g[..., 2]) - np.maximum(b[..., 0], g[..., 0]) + 1.0, 0.0)
    ih = np.maximum(np.minimum(b[..., 3], g[..., 3]) - np.maximum(b[..., 1], g[..., 1]) + 1.0, 0.0)
    inter = iw * ih
    union = ((b[..., 2] - b[..., 0] + 1.0) * (b[..., 3] - b[..., 1] + 1.0)
             + (g[..., 2] - g[..., 0] + 1.0) * (g[..., 3] - g[..., 1] + 1.0) - inter)
    return inter / union


def class_ap(det_image: np.ndarray, det_score: np.ndarray, det_box: np.ndarray, gt_image: np.ndarray,
             gt_box: np.ndarray, gt_difficult: np.ndarray, use_07_metric: bool,
             thresholds: Sequence[float] = IOU_THRESHOLDS) -> Optional[List[float]]:
    """One class's AP at each IoU threshold (module doc, steps 1-4), or None without non-difficult boxes.
    Detections: image index, rounded score, XYXY box in VOC coordinates, in image-set order. Ground truth:
    image index, XYXY box as in the XML, difficult flag."""
    npos = int((~gt_difficult).sum())
    if npos == 0:
        return None
    order = np.argsort(-det_score)  # numpy's default kind, as detectron2
    det_image, det_box = det_image[order], det_box[order]
    n = len(order)
    ovmax = np.full(n, -np.inf)
    jmax = np.zeros(n, dtype=np.int64)  # index into the class's ground truth
    gt_rows = {}
    for g, im in enumerate(gt_image.tolist()):
        gt_rows.setdefault(im, []).append(g)
    by_image: Dict[int, List[int]] = {}
    for d, im in enumerate(det_image.tolist()):
        if im in gt_rows:
            by_image.setdefault(im, []).append(d)
    for im, ds in by_image.items():
        rows = np.asarray(gt_rows[im])
        iou = voc_iou(det_box[ds], gt_box[rows])
        ovmax[ds] = iou.max(axis=1)
        jmax[ds] = rows[iou.argmax(axis=1)]
    aps = []
    for t in thresholds:
        over = ovmax > t
        hit = over & ~gt_difficult[jmax]  # difficult matches are ignored
        tp = np.zeros(n)
        hits = np.flatnonzero(hit)
        _, first = np.unique(jmax[hits], return_index=True)  # the first detection on each box, in score order
        tp[hits[first]] = 1.0
        fp = (~over | hit).astype(np.float64) - tp
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        rec = tp / float(npos)
        prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        aps.append(voc_ap(rec, prec, use_07_metric) * 100.0)
    return aps


def _round_predictions(boxes: np.ndarray, scores: np.ndarray):
    """detectron2's results lines: x1 + 1, y1 + 1 (float32), every coordinate "%.1f", the score "%.3f"."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    boxes[:, :2] += np.float32(1.0)
    box = np.array([float(f"{v:.1f}") for v in boxes.reshape(-1).tolist()], dtype=np.float64).reshape(-1, 4)
    score = np.array([float(f"{v:.3f}") for v in np.asarray(scores, dtype=np.float32).tolist()], dtype=np.float64)
    return box, score


class PascalVOCDetectionEvaluator:
    """VOC mAP of box detections (see the module doc); the interface of rethink.evaluation.COCOEvaluator::

        evaluator = PascalVOCDetectionEvaluator(spec.json_file)   # rethink.data.voc's converted json
        evaluator.reset()
        evaluator.process(image_ids, outputs)   # outputs: boxes XYXY (original image), scores, labels 1..K
        evaluator.evaluate()   # {"bbox": {"AP": .., "AP50": .., "AP75": ..}} on the evaluating rank, {} elsewhere

    `gather` / `is_main` as for COCOEvaluator (distributed evaluation); `dataset_name` for the log.
    """

    def __init__(self, json_file: str | os.PathLike, gather: Optional[Callable[[Any], Optional[List[Any]]]] = None,
                 is_main: bool = True, dataset_name: str = ""):
        self.json_file = os.fspath(json_file)
        self.gather, self.is_main = gather, is_main
        self.dataset_name = dataset_name or os.path.basename(self.json_file)
        self._gt = None
        self._predictions: List[dict] = []
        #: after evaluate(): {class name: [AP at each IoU threshold] or None}
        self.per_class: Dict[str, Optional[List[float]]] = {}

    def _ground_truth(self) -> dict:
        if self._gt is None:
            with open(self.json_file) as f:
                data = json.load(f)
            voc = data.get("voc")
            if not isinstance(voc, dict) or voc.get("year") not in (2007, 2012):
                raise ValueError(f"{self.json_file}: not a VOC dataset converted by rethink.data.voc (no 'voc' "
                                 f"entry with the year 2007 or 2012): PASCAL VOC evaluation needs one")
            cats = sorted(c["id"] for c in data["categories"])
            names = {c["id"]: c["name"] for c in data["categories"]}
            position = {im["id"]: k for k, im in enumerate(data["images"])}
            anns = data.get("annotations", [])
            self._gt = {
                "year": int(voc["year"]), "classes": [names[c] for c in cats], "position": position,
                "label": np.array([cats.index(a["category_id"]) for a in anns], dtype=np.int64),
                "image": np.array([position[a["image_id"]] for a in anns], dtype=np.int64),
                "box": np.array([a["voc_bbox"] for a in anns], dtype=np.float64).reshape(-1, 4),
                "difficult": np.array([bool(a.get("difficult", 0)) for a in anns], dtype=bool),
            }
        return self._gt

    def reset(self) -> None:
        self._predictions = []
        self.per_class = {}

    def process(self, image_ids: Sequence[Any], outputs: Sequence[Mapping[str, Any]]) -> None:
        if len(image_ids) != len(outputs):
            raise ValueError(f"{len(image_ids)} image ids but {len(outputs)} outputs")
        for image_id, out in zip(image_ids, outputs):
            image_id = int(image_id.item() if isinstance(image_id, torch.Tensor) else image_id)
            box, score = _round_predictions(_numpy(out["boxes"]), _numpy(out["scores"]))
            self._predictions.append({"image_id": image_id, "box": box, "score": score,
                                      "label": _numpy(out["labels"]).astype(np.int64).reshape(-1)})

    def evaluate(self) -> Dict[str, Dict[str, Optional[float]]]:
        """Collective when distributed: every rank calls it; results on the evaluating rank, {} elsewhere."""
        if self.gather is not None:
            per_rank = self.gather(self._predictions)
            if per_rank is None:
                return {}
            predictions = [p for rank in per_rank for p in rank]
        else:
            predictions = list(self._predictions)
        gt = self._ground_truth()
        unique: Dict[int, dict] = {}
        for p in predictions:
            if p["image_id"] not in gt["position"]:
                raise ValueError(f"{self.json_file}: a prediction for image id {p['image_id']}, which is not in "
                                 f"dataset {self.dataset_name}")
            unique.setdefault(p["image_id"], p)
        ordered = sorted(unique.values(), key=lambda p: gt["position"][p["image_id"]])
        empty = {"box": np.zeros((0, 4)), "score": np.zeros(0), "label": np.zeros(0, dtype=np.int64)}
        det_box, det_score, det_label = (np.concatenate([empty[k]] + [p[k] for p in ordered])
                                         for k in ("box", "score", "label"))
        det_image = np.concatenate([np.zeros(0, dtype=np.int64)] + [
            np.full(len(p["score"]), gt["position"][p["image_id"]], dtype=np.int64) for p in ordered])
        use_07 = gt["year"] == 2007
        logger.info("Evaluating %s with the VOC%s AP rule: %d detections on %d of %d images", self.dataset_name,
                    "2007 11-point" if use_07 else "2010+ area", len(det_score), len(ordered), len(gt["position"]))
        per_class = {}
        for k, name in enumerate(gt["classes"]):
            d, g = det_label == k + 1, gt["label"] == k
            per_class[name] = class_ap(det_image[d], det_score[d], det_box[d], gt["image"][g], gt["box"][g],
                                       gt["difficult"][g], use_07)
        self.per_class = per_class
        defined = [v for v in per_class.values() if v is not None]
        undefined = [c for c, v in per_class.items() if v is None]
        if undefined:
            logger.warning("%s: no non-difficult ground truth for %d classes, left out of the mean: %s",
                           self.dataset_name, len(undefined), ", ".join(undefined))
        if not defined:
            return {"bbox": {"AP": None, "AP50": None, "AP75": None}}
        means = [np.mean([v[i] for v in defined]) for i in range(len(IOU_THRESHOLDS))]  # over classes, as detectron2
        result = {"AP": float(np.mean(means)), "AP50": float(means[0]), "AP75": float(means[5])}
        table = "\n".join(f"  {c:<12} " + ("-" if v is None else f"{v[0]:.2f}") for c, v in per_class.items())
        logger.info("%s VOC AP50 per class:\n%s\nbbox: AP %.3f, AP50 %.3f, AP75 %.3f", self.dataset_name, table,
                    result["AP"], result["AP50"], result["AP75"])
        return {"bbox": result}


def _numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)
