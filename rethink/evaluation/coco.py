"""COCO box/mask/keypoint evaluation with detectron2's ``COCOEvaluator`` semantics.

Three interchangeable backends compute the same numbers:

* ``"faster_coco_eval"``: ``faster_coco_eval.COCO`` + ``COCOeval_faster`` (C++ evaluate/accumulate);
  equal to pycocotools to ~1e-16 (a perfect precision is exactly 1 here, ``1 - 2e-16`` in pycocotools);
* ``"pycocotools"``: the reference ``pycocotools.coco.COCO`` + ``pycocotools.cocoeval.COCOeval``;
* ``"hotcoco"`` (default): ``hotcoco.COCO`` + ``hotcoco.COCOeval`` (Rust, multi-threaded through rayon: set
  ``RAYON_NUM_THREADS`` to cap it); bit-identical to pycocotools: the same 12 summary statistics and precision
  arrays, hence the same per-category AP (``tests/test_evaluation.py`` checks this with ``==``).

Conventions (shared with the rest of ``rethink``):

* model labels are contiguous ``1..K``; label ``i`` is the ``i``-th smallest category id of the dataset json
  (``sorted(cat_ids)[i - 1]``), see :func:`contiguous_id_map`;
* model outputs are torchvision ``MaskRCNN`` eval outputs already rescaled to the original image size:
  ``dict(boxes=[N, 4] XYXY abs, scores=[N], labels=[N] int64 in 1..K, masks=[N, 1, H, W] probabilities)``;
  ``masks`` may be absent when only ``"bbox"`` is evaluated; ``keypoints=[N, K, 3]`` (x, y, score) in pixels for
  the ``"keypoints"`` task (added to the results as COCO pixel indices by :func:`add_keypoint_results`).

Keypoints: OKS with COCO's sigmas or ``kpt_oks_sigmas`` (``TEST.KEYPOINT_OKS_SIGMAS``), 10 summary statistics
(AP, AP50, AP75, APm, APl, then AR likewise), detectron2's metrics the first five; the detections keep their
``bbox`` (as in detectron2: the COCO API then takes a detection's area from its box).

Undefined metrics: every backend reports ``-1`` for a summary statistic with no ground truth in its slice (e.g.
``APs`` on a dataset without small objects) and detectron2 turns that into ``NaN``. Here every undefined metric --
summary or per-category -- is reported as ``None`` (JSON ``null``), identically for every backend, so the metric
dicts never contain NaN and stay valid strict JSON. Consumers plotting or logging metrics should skip ``None``.
The raw 12 summary statistics (fractions, ``-1`` where undefined) stay available as ``COCOEvaluator.stats``.
"""
from __future__ import annotations

import contextlib
import copy
import gc
import io
import itertools
import json
import logging
import os
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np
import pycocotools.mask as mask_util
import torch

from ..utils.atomic import atomic_write
from .per_category import format_per_category_table

logger = logging.getLogger(__name__)

BACKENDS = ("faster_coco_eval", "pycocotools", "hotcoco")
#: the reference implementation the others are checked against
REFERENCE_BACKEND = "pycocotools"
TASKS = ("bbox", "segm", "keypoints")
#: detectron2's metric names, in the order of the first 6 of COCOeval's 12 summary statistics.
AP_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
#: names of all 12 summary statistics, in COCOeval order.
STAT_NAMES = AP_METRICS + ("AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
#: the keypoint task's: detectron2's metrics (the first 5 of COCOeval's 10 statistics), then all 10
KEYPOINT_AP_METRICS = ("AP", "AP50", "AP75", "APm", "APl")
KEYPOINT_STAT_NAMES = KEYPOINT_AP_METRICS + ("AR", "AR50", "AR75", "ARm", "ARl")
RESULTS_FILENAME = "coco_instances_results.json"


# --------------------------------------------------------------------------------------------------------------------
# predictions -> COCO results
# --------------------------------------------------------------------------------------------------------------------
def contiguous_id_map(cat_ids: Iterable[int]) -> Dict[int, int]:
    """``{contiguous label (1..K): COCO category id}`` with label ``i`` = the ``i``-th smallest category id."""
    return {i + 1: int(c) for i, c in enumerate(sorted(int(c) for c in cat_ids))}


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def encode_region(crop: np.ndarray, top: int, left: int, height: int, width: int) -> dict:
    """COCO RLE of a ``height x width`` binary mask that is zero outside ``crop`` (``h x w``, placed at
    ``(top, left)``), computed from the crop alone: identical to ``pycocotools.mask.encode`` of the full mask,
    at the cost of the crop's area instead of the image's."""
    h, w = crop.shape
    padded = np.zeros((w, h + 2), dtype=bool)  # columns as rows (COCO RLE is column-major), a zero at each end
    padded[:, 1:-1] = crop.T
    flat = padded.reshape(-1)
    col, row = np.divmod(np.flatnonzero(flat[1:] != flat[:-1]) + 1, h + 2)  # where each run starts
    bounds = (left + col) * height + top + row - 1  # in the full image's column-major order
    # a run of ones ending at a column's last row and one starting at the next column's first row are one run
    values, count = np.unique(bounds, return_counts=True)
    bounds = values[(count == 1) & (values < height * width)]
    counts = np.diff(np.concatenate([[0], bounds, [height * width]]))
    return mask_util.frPyObjects({"size": [height, width], "counts": counts.tolist()}, height, width)


def encode_masks(masks: Any, threshold: float = 0.5) -> List[dict]:
    """Binarize ``masks`` (``[N, 1, H, W]`` or ``[N, H, W]`` probabilities or booleans) at ``> threshold`` and
    RLE-encode them, each over its own bounding region (:func:`encode_region`).

    Returns COCO compressed RLEs ``{"size": [H, W], "counts": str}`` (counts decoded to ``str`` for json).
    """
    if isinstance(masks, torch.Tensor):
        masks = masks.detach()
        if masks.dim() == 4:
            masks = masks[:, 0]
        binary = masks if masks.dtype == torch.bool else masks > threshold  # on the device: less to transfer
        binary = binary.cpu().numpy()
    else:
        masks = np.asarray(masks)
        if masks.ndim == 4:
            masks = masks[:, 0]
        binary = masks if masks.dtype == bool else masks > threshold
    if binary.ndim != 3:
        raise ValueError(f"masks must have shape [N, 1, H, W] or [N, H, W], got {tuple(binary.shape)}")
    n, height, width = binary.shape
    rows_any, cols_any = binary.any(axis=2), binary.any(axis=1)
    rles = []
    for k in range(n):
        rows, cols = np.flatnonzero(rows_any[k]), np.flatnonzero(cols_any[k])
        if len(rows) == 0:
            rle = mask_util.frPyObjects({"size": [height, width], "counts": [height * width]}, height, width)
        else:
            crop = binary[k, rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
            rle = encode_region(crop, int(rows[0]), int(cols[0]), height, width)
        rle["counts"] = rle["counts"].decode("utf-8")
        rles.append(rle)
    return rles


def detection_rows(output: Mapping[str, Any], image_id: int, contiguous_to_cat: Mapping[int, int]) -> np.ndarray:
    """One image's model output as COCO results in numpy, one row per detection: ``[N, 7]`` float64 of image_id,
    x, y, w, h (XYWH abs), score, category_id (COCO id): the array form ``loadRes`` takes. No Python object per
    detection (nothing for the garbage collector to walk: 40k dicts and lists cost more than hotcoco's evaluation)."""
    boxes = _to_numpy(output["boxes"]).astype(np.float64, copy=False).reshape(-1, 4)
    n = boxes.shape[0]
    scores = _to_numpy(output["scores"]).reshape(-1)
    labels = _to_numpy(output["labels"]).reshape(-1).astype(np.int64, copy=False)
    if len(scores) != n or len(labels) != n:
        raise ValueError(f"image {image_id}: {n} boxes but {len(scores)} scores and {len(labels)} labels")
    table = np.full(max(contiguous_to_cat, default=0) + 1, -1, dtype=np.int64)
    table[np.fromiter(contiguous_to_cat.keys(), np.int64)] = np.fromiter(contiguous_to_cat.values(), np.int64)
    unknown = (labels < 0) | (labels >= len(table))
    unknown[~unknown] = table[labels[~unknown]] < 0
    if unknown.any():
        raise ValueError(
            f"image {image_id}: label {int(labels[unknown][0])} has no COCO category (known labels: "
            f"{sorted(contiguous_to_cat)}); labels must be contiguous 1..K"
        )
    rows = np.empty((n, 7), dtype=np.float64)
    rows[:, 0] = int(image_id)
    rows[:, 1:3] = boxes[:, :2]
    rows[:, 3:5] = boxes[:, 2:] - boxes[:, :2]
    rows[:, 5] = scores
    rows[:, 6] = table[labels]
    return rows


def rows_to_coco_json(rows: np.ndarray, segmentation: Optional[Sequence[dict]] = None) -> List[dict]:
    """COCO result dicts of :func:`detection_rows` (and, when given, one RLE per row as ``segmentation``)."""
    cols = zip(rows[:, 0].astype(np.int64).tolist(), rows[:, 6].astype(np.int64).tolist(), rows[:, 1:5].tolist(),
               rows[:, 5].tolist())
    if segmentation is None:
        return [{"image_id": i, "category_id": c, "bbox": b, "score": s} for i, c, b, s in cols]
    return [{"image_id": i, "category_id": c, "bbox": b, "score": s, "segmentation": m}
            for (i, c, b, s), m in zip(cols, segmentation)]


def _image_segmentation(output: Mapping[str, Any], image_id: int, n: int) -> Optional[List[dict]]:
    """The RLEs of an output's masks (None without masks or detections), one per detection."""
    if output.get("masks") is None or n == 0:
        return None
    rles = encode_masks(output["masks"])
    if len(rles) != n:
        raise ValueError(f"image {image_id}: {n} boxes but {len(rles)} masks")
    return rles


def instances_to_coco_json(
    output: Mapping[str, Any], image_id: int, contiguous_to_cat: Mapping[int, int]
) -> List[dict]:
    """Convert one image's model output to COCO result dicts (detectron2's ``instances_to_coco_json``).

    Each dict has ``image_id``, ``category_id`` (COCO id), ``bbox`` (XYWH abs), ``score`` and, when the output has
    ``masks``, ``segmentation`` (compressed RLE of ``mask > 0.5``). This is the format of
    ``coco_instances_results.json``; use :func:`task_results` to get the per-task lists fed to the COCO API (the
    ``segm`` ones carry no ``bbox`` so that mask areas define small/medium/large, as in detectron2).
    """
    rows = detection_rows(output, image_id, contiguous_to_cat)
    return rows_to_coco_json(rows, _image_segmentation(output, image_id, len(rows)))


def image_results_to_coco_json(image: Mapping[str, Any]) -> List[dict]:
    """COCO result dicts of one image's entry of :class:`COCOEvaluator` (``rows``, ``segmentation``,
    ``keypoints``)."""
    return add_keypoint_results(rows_to_coco_json(image["rows"], image["segmentation"]), image["keypoints"])


def _image_results_text(image: Mapping[str, Any]) -> str:
    """The JSON text of :func:`image_results_to_coco_json` (objects joined by ", ", no brackets), formatted
    from the arrays: numbers as ``json`` writes them (``repr``), no dict built. Keypoints or a non-finite number:
    through ``json``."""
    rows = image["rows"]
    if image["keypoints"] is not None or not np.isfinite(rows).all():
        return json.dumps(image_results_to_coco_json(image))[1:-1]
    ids, cats = rows[:, 0].astype(np.int64).tolist(), rows[:, 6].astype(np.int64).tolist()
    nums = rows[:, 1:6].tolist()
    heads = [f'{{"image_id": {i}, "category_id": {c}, "bbox": [{x!r}, {y!r}, {w!r}, {h!r}], "score": {sc!r}'
             for i, c, (x, y, w, h, sc) in zip(ids, cats, nums)]
    if image["segmentation"] is None:
        return "}, ".join(heads) + ("}" if heads else "")
    tails = [f', "segmentation": {{"size": [{m["size"][0]}, {m["size"][1]}], "counts": {json.dumps(m["counts"])}}}}}'
             for m in image["segmentation"]]
    return ", ".join(h + t for h, t in zip(heads, tails))


def save_image_results(path: str | os.PathLike, images: Sequence[Mapping[str, Any]]) -> str:
    """Atomically write the COCO results json (``coco_instances_results.json``'s format) of :class:`COCOEvaluator`'s
    per-image entries: the same file as :func:`save_predictions` of their dicts, written from the arrays."""
    path = os.fspath(path)
    texts = [t for t in (_image_results_text(im) for im in images) if t]
    atomic_write(path, lambda f: f.write("[" + ", ".join(texts) + "]"), binary=False)
    logger.info("Saved %d COCO results to %s", sum(len(im["rows"]) for im in images), path)
    return path


def add_keypoint_results(results: List[dict], keypoints: Any) -> List[dict]:
    """Add ``keypoints`` ([N, K, 3] x, y, score in pixels, or None) to one image's N results from
    :func:`instances_to_coco_json`, as COCO keypoint results: flat [x, y, score] * K with x, y - 0.5 (pixel
    centres back to COCO's pixel indices, as detectron2)."""
    if keypoints is None or not results:
        return results
    kps = _to_numpy(keypoints).astype(np.float64).reshape(len(results), -1, 3).copy()
    kps[:, :, :2] -= 0.5
    for r, k in zip(results, kps.reshape(len(results), -1).tolist()):
        r["keypoints"] = k
    return results


def task_results(results: Sequence[Mapping[str, Any]], task: str) -> List[dict]:
    """Fresh per-task copies of combined COCO results, safe to hand to ``loadRes`` (which mutates them).

    ``"bbox"`` results drop ``segmentation``; ``"segm"`` results drop ``bbox`` (otherwise the COCO API would take
    the box area as the instance area) and require ``segmentation``.
    """
    if task == "bbox":
        return [{k: v for k, v in r.items() if k != "segmentation"} for r in results]
    if task == "segm":
        out = []
        for r in results:
            if "segmentation" not in r:
                raise ValueError(
                    f"segm evaluation needs masks, but a prediction of image {r.get('image_id')} has none; "
                    "evaluate tasks=('bbox',) for box-only models"
                )
            out.append({k: v for k, v in r.items() if k != "bbox"})
        return out
    if task == "keypoints":
        if any("keypoints" not in r for r in results):
            raise ValueError("keypoint evaluation needs keypoints, but a prediction has none; evaluate tasks without "
                             "'keypoints' for models without MODEL.KEYPOINT_ON")
        return [{k: v for k, v in r.items() if k != "segmentation"} for r in results]
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")


def save_predictions(path: str | os.PathLike, results: Sequence[Mapping[str, Any]]) -> str:
    """Atomically write COCO results json to ``path`` (temp file in the same folder, fsync, ``os.replace``).

    ``path`` may be a folder, in which case ``coco_instances_results.json`` is written inside it.
    Returns the file path.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, RESULTS_FILENAME)
    atomic_write(path, lambda f: json.dump(list(results), f), binary=False)
    logger.info("Saved %d COCO results to %s", len(results), path)
    return path


# --------------------------------------------------------------------------------------------------------------------
# backends
# --------------------------------------------------------------------------------------------------------------------
def _check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown COCO eval backend {backend!r}; expected one of {BACKENDS}")
    return backend


@contextlib.contextmanager
def _stdout_to_log(level: int = logging.DEBUG):
    """Capture what the COCO API prints and send it to the logger instead."""
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            yield buf
    finally:
        text = buf.getvalue().rstrip()
        if text:
            logger.log(level, "%s", text)


def _import_hotcoco():
    try:
        import hotcoco
    except ImportError as e:
        raise ImportError(
            f"COCO eval backend 'hotcoco' is not installed ({e}); `pip install 'hotcoco>=1.3,<2'` or set "
            "TEST.EVALUATOR to hotcoco, faster_coco_eval or pycocotools"
        ) from None
    return hotcoco


def _coco_class(backend: str):
    if backend == "pycocotools":
        from pycocotools.coco import COCO
    elif backend == "hotcoco":
        COCO = _import_hotcoco().COCO
    else:
        from faster_coco_eval import COCO
    return COCO


def _cocoeval(backend: str, coco_gt, coco_dt, task: str, print_function, kpt_oks_sigmas=None):
    """The backend's ``COCOeval`` object for ``task`` (keypoints: with ``kpt_oks_sigmas`` when given); only
    faster-coco-eval takes a print function, the others print to stdout (captured by the caller)."""
    coco_eval = _make_cocoeval(backend, coco_gt, coco_dt, task, print_function)
    if task == "keypoints" and kpt_oks_sigmas:
        coco_eval.params.kpt_oks_sigmas = (list(map(float, kpt_oks_sigmas)) if backend == "hotcoco"
                                           else np.array(kpt_oks_sigmas, dtype=np.float64))
    return coco_eval


def _make_cocoeval(backend: str, coco_gt, coco_dt, task: str, print_function):
    if backend == "pycocotools":
        from pycocotools.cocoeval import COCOeval

        return COCOeval(coco_gt, coco_dt, task)
    if backend == "hotcoco":
        return _import_hotcoco().COCOeval(coco_gt, coco_dt, task)
    from faster_coco_eval import COCOeval_faster

    return COCOeval_faster(coco_gt, coco_dt, task, print_function=print_function)


def load_coco_gt(json_file: str | os.PathLike, backend: str = "hotcoco"):
    """Load a COCO ground-truth json into the ``COCO`` class of ``backend`` (printing goes to the logger)."""
    _check_backend(backend)
    coco_cls = _coco_class(backend)
    tic = time.perf_counter()
    with _stdout_to_log():
        if backend == "faster_coco_eval":
            coco = coco_cls(os.fspath(json_file), print_function=logger.debug)
        else:
            coco = coco_cls(os.fspath(json_file))
    for warning in getattr(coco, "load_warnings", None) or []:  # hotcoco: what it found odd in the json
        logger.warning("%s: %s", json_file, warning)
    logger.info(
        "Loaded COCO ground truth %s (%d images, %d annotations, %d categories) with %s in %.2f s",
        json_file, len(coco.imgs), len(coco.anns), len(coco.cats), backend, time.perf_counter() - tic,
    )
    return coco


def _empty_results(coco_gt, backend: str):
    """A results ``COCO`` object with no detections (``loadRes([])`` raises in pycocotools, and is not reliable
    across faster-coco-eval versions; hotcoco's ``loadRes([])`` is documented and used as is)."""
    if backend == "hotcoco":
        return coco_gt.loadRes([])
    with _stdout_to_log():
        if backend == "pycocotools":
            res = _coco_class(backend)()
        else:
            res = _coco_class(backend)(print_function=logger.debug)
        res.dataset = {
            "info": copy.deepcopy(coco_gt.dataset.get("info", {})),
            "images": list(coco_gt.dataset["images"]),
            "categories": copy.deepcopy(coco_gt.dataset.get("categories", [])),
            "annotations": [],
        }
        res.createIndex()
    return res


@contextlib.contextmanager
def _gc_paused():
    """Pause the cyclic garbage collector: evaluation allocates a dict or more per detection (500k on COCO val at 100
    per image) and no reference cycles, and the collector's passes over them cost more than some backends' whole
    evaluation (hotcoco bbox on the 5k-image benchmark, measured: 3.3-4.9 s with the collector, 1.3-1.7 s without)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@dataclass
class TaskResult:
    """One task's evaluation: ``metrics`` in percent (detectron2 keys, ``None`` where undefined), the raw 12
    summary ``stats`` (fractions, ``-1`` where undefined) and the printed ``summary`` table."""

    metrics: "OrderedDict[str, Optional[float]]"
    stats: np.ndarray
    summary: str = ""
    num_results: int = 0
    seconds: float = 0.0


def _percent_or_none(value: float) -> Optional[float]:
    value = float(value)
    return value * 100.0 if np.isfinite(value) and value >= 0 else None


def evaluate_coco_results(
    coco_gt,
    results: Sequence[Mapping[str, Any]],
    task: str,
    backend: str = "hotcoco",
    img_ids: Optional[Sequence[int]] = None,
    per_category: bool = True,
    kpt_oks_sigmas: Optional[Sequence[float]] = None,
) -> TaskResult:
    """Evaluate COCO results (combined format, see :func:`instances_to_coco_json`; for boxes also the
    :func:`detection_rows` array) for one ``task``.

    ``coco_gt`` must come from :func:`load_coco_gt` with the same ``backend``. ``img_ids`` restricts the evaluated
    images (default: every image of the dataset, as detectron2). No results at all is not an error: it scores 0
    wherever the metric is defined. ``kpt_oks_sigmas``: the keypoint task's OKS sigmas (default COCO's 17).
    """
    _check_backend(backend)
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    with _gc_paused():
        return _evaluate_coco_results(coco_gt, results, task, backend, img_ids, per_category, kpt_oks_sigmas)


def bbox_results_array(results: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """COCO results as the ``[N, 7]`` float64 array ``loadRes`` also takes: image_id, x, y, w, h, score,
    category_id (one pass, no dict per detection handed to the backend); an array is returned as it is."""
    if isinstance(results, np.ndarray):
        return results.reshape(-1, 7)
    rows = ((r["image_id"], *r["bbox"], r["score"], r["category_id"]) for r in results)
    return np.fromiter(itertools.chain.from_iterable(rows), np.float64, 7 * len(results)).reshape(-1, 7)


def _check_num_keypoints(coco_gt, results, kpt_oks_sigmas) -> None:
    """detectron2's check: the detections, the ground truth and the sigmas count the same keypoints."""
    gt = next((len(a["keypoints"]) // 3 for a in coco_gt.anns.values() if a.get("keypoints")), None)
    if gt is None:
        raise ValueError("keypoint evaluation: the ground truth has no keypoint annotations")
    sigmas = len(kpt_oks_sigmas) if kpt_oks_sigmas else 17  # COCO's default sigmas: its 17 person keypoints
    dt = len(results[0]["keypoints"]) // 3 if results and "keypoints" in results[0] else gt
    if not gt == dt == sigmas:
        raise ValueError(f"keypoint evaluation: {gt} keypoints in the ground truth, {dt} predicted, {sigmas} OKS "
                         f"sigmas (TEST.KEYPOINT_OKS_SIGMAS): they must agree")


def _evaluate_coco_results(coco_gt, results, task, backend, img_ids, per_category, kpt_oks_sigmas) -> TaskResult:
    tic = time.perf_counter()
    if task == "keypoints":
        _check_num_keypoints(coco_gt, results, kpt_oks_sigmas)
    if task == "bbox" and backend == "hotcoco":  # the array: a third of the time of copied dicts, same numbers
        dts = bbox_results_array(results)
        det_img_ids = np.unique(dts[:, 0]).astype(np.int64).tolist()
    else:
        if isinstance(results, np.ndarray):  # detection_rows: boxes only
            results = rows_to_coco_json(results.reshape(-1, 7))
        dts = task_results(results, task)
        det_img_ids = {d["image_id"] for d in dts}
    known = coco_gt.imgs
    unknown = {i for i in det_img_ids if i not in known}
    if unknown:
        raise ValueError(
            f"predictions for {len(unknown)} image ids not in the ground truth, e.g. {sorted(unknown)[:5]}"
        )

    if img_ids is not None:
        img_ids = sorted({int(i) for i in img_ids})
        missing = [i for i in img_ids if i not in known]
        if missing:
            raise ValueError(f"img_ids not in the ground truth: {missing[:5]}{' ...' if len(missing) > 5 else ''}")

    summary_lines: List[str] = []
    with _stdout_to_log() as buf, warnings.catch_warnings():
        coco_dt = coco_gt.loadRes(dts) if len(dts) else _empty_results(coco_gt, backend)
        coco_eval = _cocoeval(backend, coco_gt, coco_dt, task, summary_lines.append, kpt_oks_sigmas)
        if img_ids is not None:
            coco_eval.params.imgIds = img_ids
        # hotcoco warns that sigmas other than COCO's are not COCO keypoint AP: they are what the config asked for
        warnings.filterwarnings("ignore", message=".*kpt_oks_sigmas differ.*")
        coco_eval.evaluate()
        coco_eval.accumulate()
        # log the progress noise at DEBUG and keep only what summarize() prints: the table logged at INFO
        noise = (buf.getvalue() + "\n".join(summary_lines)).strip()
        if noise:
            logger.debug("%s", noise)
        buf.seek(0)
        buf.truncate()
        summary_lines.clear()
        coco_eval.summarize()
        summary = "\n".join(summary_lines) if backend == "faster_coco_eval" else buf.getvalue().rstrip()
        buf.seek(0)
        buf.truncate()

    names = KEYPOINT_AP_METRICS if task == "keypoints" else AP_METRICS
    stats = np.asarray(coco_eval.stats[:len(KEYPOINT_STAT_NAMES if task == "keypoints" else STAT_NAMES)],
                       dtype=np.float64).copy()
    metrics: "OrderedDict[str, Optional[float]]" = OrderedDict(
        (name, _percent_or_none(stats[i])) for i, name in enumerate(names)
    )
    if per_category:
        # detectron2: AP per category at IoU 0.50:0.95, area "all", maxDets 100
        precision = np.asarray(coco_eval.eval["precision"])  # [T, R, K, A, M]
        # the categories the precision array's K axis runs over (hotcoco fills params.catIds in evaluate())
        cat_ids = [int(c) for c in coco_eval.params.catIds] or sorted(int(c) for c in coco_gt.getCatIds())
        if len(cat_ids) != precision.shape[2]:
            raise RuntimeError(f"{backend}: precision has {precision.shape[2]} categories, params {len(cat_ids)}")
        for k, cat in enumerate(coco_gt.loadCats(cat_ids)):
            p = precision[:, :, k, 0, -1]
            p = p[p > -1]
            metrics[f"AP-{cat.get('name', cat['id'])}"] = float(p.mean() * 100.0) if p.size else None
    seconds = time.perf_counter() - tic
    return TaskResult(metrics=metrics, stats=stats, summary=summary, num_results=len(dts), seconds=seconds)


def format_metrics_table(metrics: Mapping[str, Optional[float]], keys: Sequence[str] = AP_METRICS) -> str:
    """A small two-row markdown table, like detectron2's ``create_small_table``."""
    keys = [k for k in keys if k in metrics]
    values = ["-" if metrics[k] is None else f"{metrics[k]:.3f}" for k in keys]
    widths = [max(len(k), len(v)) for k, v in zip(keys, values)]
    head = "| " + " | ".join(k.center(w) for k, w in zip(keys, widths)) + " |"
    rule = "|" + "|".join(":" + "-" * w + ":" for w in widths) + "|"
    row = "| " + " | ".join(v.center(w) for v, w in zip(values, widths)) + " |"
    return "\n".join((head, rule, row))


# --------------------------------------------------------------------------------------------------------------------
# evaluator
# --------------------------------------------------------------------------------------------------------------------
class COCOEvaluator:
    """Accumulates Mask R-CNN outputs and computes COCO AP (detectron2 ``COCOEvaluator`` semantics).

    Usage::

        evaluator = COCOEvaluator("instances_val2017.json")
        evaluator.reset()
        for images, targets in loader:
            evaluator.process([t["image_id"] for t in targets], model(images))
        results = evaluator.evaluate()  # {"bbox": {"AP": 37.1, ...}, "segm": {...}} on rank 0, {} elsewhere

    Args:
        json_file: COCO-format ground truth; loaded once per evaluator (lazily, on the evaluating rank only).
        backend: ``"hotcoco"`` (default), ``"pycocotools"`` or ``"faster_coco_eval"``; all give the same numbers.
        tasks: subset of ``("bbox", "segm", "keypoints")`` (default boxes and masks).
        gather: for a distributed evaluation, a function that collects a picklable object from every rank to the
            evaluating rank, returning the list there and ``None`` elsewhere
            (:func:`rethink.engine.comm.gather_to_main`);
            that rank alone evaluates and returns results (the others return ``{}``). ``None``: evaluate the predictions
            of this process.
        is_main: False on ranks that only send their predictions (they never load the ground truth).
        output_dir: if set, the evaluating rank saves ``coco_instances_results.json`` there.
        img_ids: images to evaluate; default every image of the dataset (as detectron2), so images that were not
            processed count as having no detections. Can also be given to :meth:`evaluate`.
        contiguous_to_cat: ``{label: COCO category id}``; default :func:`contiguous_id_map` of the json categories.
        per_category: also report ``"AP-<category name>"`` (as detectron2).
        kpt_oks_sigmas: the keypoint task's OKS sigmas (``TEST.KEYPOINT_OKS_SIGMAS``); empty: COCO's.
    """

    def __init__(
        self,
        json_file: str | os.PathLike,
        backend: str = "hotcoco",
        tasks: Sequence[str] = ("bbox", "segm"),
        gather: Optional[Callable[[Any], Optional[List[Any]]]] = None,
        is_main: bool = True,
        output_dir: Optional[str | os.PathLike] = None,
        img_ids: Optional[Sequence[int]] = None,
        contiguous_to_cat: Optional[Mapping[int, int]] = None,
        per_category: bool = True,
        kpt_oks_sigmas: Sequence[float] = (),
    ):
        self.json_file = os.fspath(json_file)
        self.backend = _check_backend(backend)
        tasks = tuple(tasks)
        bad = [t for t in tasks if t not in TASKS]
        if bad or not tasks:
            raise ValueError(f"tasks must be a non-empty subset of {TASKS}, got {tasks}")
        self.tasks = tasks
        self.gather, self.is_main = gather, is_main
        self.output_dir = None if output_dir is None else os.fspath(output_dir)
        self.img_ids = None if img_ids is None else [int(i) for i in img_ids]
        self.per_category = per_category
        self.kpt_oks_sigmas = [float(s) for s in kpt_oks_sigmas]
        self._contiguous_to_cat = (
            None if contiguous_to_cat is None else {int(k): int(v) for k, v in contiguous_to_cat.items()}
        )
        self._coco_gt = None
        self._predictions: List[dict] = []
        #: after :meth:`evaluate` on the evaluating rank: raw 12 summary stats per task, fractions, -1 = undefined
        self.stats: Dict[str, np.ndarray] = {}
        #: after :meth:`evaluate` on the evaluating rank: the gathered per-image entries, by image id
        #: ({"image_id", "rows": detection_rows, "segmentation": RLEs or None, "keypoints": array or None})
        self.image_results: List[dict] = []
        self._coco_results: Optional[List[dict]] = None

    @property
    def coco_results(self) -> List[dict]:
        """After :meth:`evaluate` on the evaluating rank: the merged COCO results (combined bbox/segm dicts), built
        on first use (the evaluation itself needs no dict for boxes with hotcoco)."""
        if self._coco_results is None:
            self._coco_results = [r for im in self.image_results for r in image_results_to_coco_json(im)]
        return self._coco_results

    def save_results(self, path: str | os.PathLike) -> str:
        """Write :attr:`coco_results` (``coco_instances_results.json``'s format) to ``path``, atomically."""
        return save_image_results(path, self.image_results)

    # -- ground truth --------------------------------------------------------------------------------------------
    @property
    def coco_gt(self):
        """The cached ground-truth ``COCO`` object of the backend."""
        if self._coco_gt is None:
            self._coco_gt = load_coco_gt(self.json_file, self.backend)
        return self._coco_gt

    @property
    def contiguous_to_cat(self) -> Dict[int, int]:
        if self._contiguous_to_cat is None:
            if self._coco_gt is not None or not self._is_worker():
                cat_ids = self.coco_gt.getCatIds()
            else:  # non-evaluating rank: read the category ids only, do not keep the dataset in memory
                with open(self.json_file) as f:
                    cat_ids = [c["id"] for c in json.load(f)["categories"]]
            self._contiguous_to_cat = contiguous_id_map(cat_ids)
        return self._contiguous_to_cat

    def _is_worker(self) -> bool:
        """True on ranks that only send their predictions to the evaluating rank."""
        return self.gather is not None and not self.is_main

    # -- accumulation --------------------------------------------------------------------------------------------
    def reset(self) -> None:
        self._predictions = []
        self.stats = {}
        self.image_results, self._coco_results = [], None

    def process(self, image_ids: Sequence[Any], outputs: Sequence[Mapping[str, Any]]) -> None:
        """Convert a batch of model outputs (original image size) to COCO results and keep them."""
        if len(image_ids) != len(outputs):
            raise ValueError(f"{len(image_ids)} image ids but {len(outputs)} outputs")
        for image_id, output in zip(image_ids, outputs):
            image_id = int(image_id.item() if isinstance(image_id, torch.Tensor) else image_id)
            if "segm" in self.tasks and output.get("masks") is None and len(output["boxes"]) > 0:
                raise ValueError(
                    f"image {image_id}: segm evaluation requested but the output has no masks; "
                    "use tasks=('bbox',) for box-only models"
                )
            if "keypoints" in self.tasks and output.get("keypoints") is None and len(output["boxes"]) > 0:
                raise ValueError(f"image {image_id}: keypoint evaluation requested but the output has no keypoints")
            rows = detection_rows(output, image_id, self.contiguous_to_cat)
            keypoints = output.get("keypoints")
            self._predictions.append({
                "image_id": image_id, "rows": rows, "segmentation": _image_segmentation(output, image_id, len(rows)),
                "keypoints": None if keypoints is None or len(rows) == 0 else _to_numpy(keypoints),
            })

    # -- evaluation ----------------------------------------------------------------------------------------------
    def _gathered_predictions(self) -> Optional[List[dict]]:
        if self.gather is not None:
            per_rank = self.gather(self._predictions)
            if per_rank is None:
                return None
            predictions = [p for rank_preds in per_rank for p in rank_preds]
        else:
            predictions = list(self._predictions)
        # canonical order (results do not depend on the world size) and one entry per image: samplers that pad
        # the dataset to a multiple of the world size process some images twice.
        unique: Dict[int, dict] = {}
        for p in predictions:
            unique.setdefault(p["image_id"], p)
        if len(unique) != len(predictions):
            logger.info("Dropped %d duplicate image predictions", len(predictions) - len(unique))
        return [unique[i] for i in sorted(unique)]

    def evaluate(self, img_ids: Optional[Sequence[int]] = None) -> Dict[str, Dict[str, Optional[float]]]:
        """Gather, then compute ``{task: {"AP", "AP50", "AP75", "APs", "APm", "APl", "AP-<name>"...}}`` in percent.

        Collective when distributed: every rank must call it. Returns ``{}`` on ranks other than 0.
        """
        predictions = self._gathered_predictions()
        if predictions is None:
            return {}
        img_ids = self.img_ids if img_ids is None else [int(i) for i in img_ids]
        self.image_results, self._coco_results = predictions, None
        rows = np.concatenate([p["rows"] for p in predictions]) if predictions else np.zeros((0, 7))
        logger.info(
            "Evaluating %d COCO results on %d predicted images (%s) with %s",
            len(rows), len(predictions),
            "all images" if img_ids is None else f"{len(img_ids)} selected images", self.backend,
        )
        if self.output_dir is not None:
            self.save_results(os.path.join(self.output_dir, RESULTS_FILENAME))
        if not len(rows):
            logger.warning("No predictions from the model: every defined metric is 0")

        out: "OrderedDict[str, Dict[str, Optional[float]]]" = OrderedDict()
        for task in self.tasks:
            results = rows if task == "bbox" and self.backend == "hotcoco" else self.coco_results
            res = evaluate_coco_results(
                self.coco_gt, results, task, self.backend, img_ids=img_ids, per_category=self.per_category,
                kpt_oks_sigmas=self.kpt_oks_sigmas,
            )
            self.stats[task] = res.stats
            logger.info("COCO %s summary (%s, %.2f s):\n%s", task, self.backend, res.seconds, res.summary)
            logger.info("Evaluation results for %s:\n%s", task, format_metrics_table(res.metrics))
            if self.per_category:
                logger.info("Per-category %s AP:\n%s", task, format_per_category_table(res.metrics))
            out[task] = dict(res.metrics)
        return dict(out)
