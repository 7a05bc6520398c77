"""Ground truth and predictions drawn on a COCO dataset's images, written as image files (as detectron2's
tools/visualize_json_results.py and visualize_data.py) or handed to TensorBoard.

* a dataset alone: each image with its ground truth (boxes, masks, class names);
* COCO results (a run's coco_instances_results.json, or any results file): each image as two panels,
  the predictions with a score >= the threshold (boxes, masks, class names, scores) left and the ground
  truth right, as detectron2 puts them;
* a run directory: every results file its evaluations left (RunDir.coco_results_files), each on the test
  set its config.yaml names.

Images are taken in image-id order (the first `max_images`, or the ids asked for) and written as
<image id>_<file stem>.png."""
import json
import logging
import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import pycocotools.mask as mask_util
import yaml
from PIL import Image

from ..config import CfgNode
from ..data import CocoDataset, get_dataset_spec
from ..evaluation.coco import image_results_to_coco_json
from ..utils.rundir import RunDir
from .draw import Drawable, color_for, draw_instances, shrink, side_by_side, with_title

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.5
#: images whose longer side is shorter are drawn enlarged (an integer factor, nearest pixel), so labels stay legible
MIN_DRAWN_SIDE = 480


def _mask(segmentation, height: int, width: int) -> Optional[np.ndarray]:
    """[H, W] bool of a COCO segmentation (polygons, compressed or uncompressed RLE), None when absent."""
    if segmentation is None or (isinstance(segmentation, list) and not segmentation):
        return None
    if isinstance(segmentation, list):  # polygons
        rle = mask_util.merge(mask_util.frPyObjects([np.asarray(p, np.float64).tolist() for p in segmentation],
                                                    height, width))
    elif isinstance(segmentation.get("counts"), list):  # uncompressed RLE
        rle = mask_util.frPyObjects(segmentation, *segmentation["size"])
    else:
        counts = segmentation["counts"]
        rle = {"size": segmentation["size"], "counts": counts.encode() if isinstance(counts, str) else counts}
    return mask_util.decode(rle).astype(bool)


class DatasetImages:
    """A COCO dataset's images, category names and ground truth, by image id (through the columnar index,
    rethink.data.CocoDataset)."""

    def __init__(self, json_file: str, image_root: str, name: Optional[str] = None):
        self.name = name or os.path.basename(json_file)
        self.dataset = CocoDataset(self.name, json_file, image_root)
        index = self.dataset.index
        self.names: Dict[int, str] = {int(c["id"]): str(c.get("name", c["id"])) for c in index.categories}
        self.image_ids = np.asarray(index.a["image_id"])

    @classmethod
    def from_name(cls, name: str) -> "DatasetImages":
        """A dataset of the catalog (rethink.data.get_dataset_spec)."""
        spec = get_dataset_spec(name)
        return cls(spec.json_file, spec.image_root, name)

    def row(self, image_id: int) -> int:
        i = int(np.searchsorted(self.image_ids, int(image_id)))
        if i >= len(self.image_ids) or self.image_ids[i] != int(image_id):
            raise KeyError(f"image id {image_id} is not in {self.dataset.json_file}")
        return i

    def file_name(self, image_id: int) -> str:
        return self.dataset.index.file_name(self.row(image_id))

    def image(self, image_id: int) -> np.ndarray:
        path = self.dataset.image_path(self.row(image_id))
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))

    def category_name(self, category_id: int) -> str:
        return self.names.get(int(category_id), f"category {category_id}")

    def ground_truth(self, image_id: int, height: int, width: int) -> List[Drawable]:
        anns = self.dataset.index.annotations(self.row(image_id))
        out = []
        for box, cat, crowd, seg in zip(anns["bbox"].tolist(), anns["category_id"].tolist(),
                                        anns["iscrowd"].tolist(), anns["segmentation"]):
            label = self.category_name(cat) + (" (crowd)" if crowd else "")
            out.append(Drawable(box, label, color_for(cat), _mask(seg, height, width)))
        return out

    def predictions(self, results: Iterable[dict], height: int, width: int, threshold: float) -> List[Drawable]:
        """Drawables of the COCO results with a score >= `threshold`, highest score drawn last (on top)."""
        kept = sorted((r for r in results if r.get("score", 1.0) >= threshold), key=lambda r: r.get("score", 1.0))
        return [Drawable(r["bbox"], f"{self.category_name(r['category_id'])} {100 * r.get('score', 1.0):.0f}%",
                         color_for(r["category_id"]), _mask(r.get("segmentation"), height, width)) for r in kept]

    def render(self, image_id: int, results: Optional[Sequence[dict]] = None,
               threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
        """The image with its ground truth; with `results` (this image's COCO results, possibly none), the
        predictions panel left of the ground-truth panel."""
        image = self.image(image_id)
        height, width = image.shape[:2]
        k = max(1, -(-MIN_DRAWN_SIDE // max(height, width)))
        gt = self.ground_truth(image_id, height, width)
        if k > 1:
            image = image.repeat(k, axis=0).repeat(k, axis=1)
            gt = [_enlarged(d, k) for d in gt]
        gt_panel = with_title(draw_instances(image, gt), f"ground truth: {len(gt)}")
        if results is None:
            return gt_panel
        preds = [_enlarged(d, k) for d in self.predictions(results, height, width, threshold)]
        pred_panel = with_title(draw_instances(image, preds),
                                f"predictions: {len(preds)} of {len(results)} with score >= {threshold:g}")
        return side_by_side([pred_panel, gt_panel])

    def select(self, image_ids: Optional[Iterable[int]], max_images: int) -> List[int]:
        """The ids asked for (checked), else the dataset's in id order; at most `max_images` (0: all)."""
        ids = [int(i) for i in image_ids] if image_ids is not None else self.image_ids.tolist()
        for i in ids:
            self.row(i)
        return ids[:max_images] if max_images > 0 else ids


def _enlarged(d: Drawable, k: int) -> Drawable:
    """`d` on the image enlarged `k` times (nearest pixel)."""
    if k == 1:
        return d
    mask = None if d.mask is None else d.mask.repeat(k, axis=0).repeat(k, axis=1)
    return Drawable([float(v) * k for v in d.bbox], d.label, d.color, mask)


def load_results(path: str) -> List[dict]:
    """COCO results (a json list of {"image_id", "category_id", "bbox", "score"[, "segmentation"]})."""
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, list) or any(not isinstance(r, dict) or "image_id" not in r or "bbox" not in r
                                         for r in data):
        raise ValueError(f"{path}: not COCO results (a list of objects with image_id, category_id, bbox, score)")
    return data


def results_by_image(results: Iterable[dict]) -> Dict[int, List[dict]]:
    by_image: Dict[int, List[dict]] = {}
    for r in results:
        by_image.setdefault(int(r["image_id"]), []).append(r)
    return by_image


def write_visualizations(images: DatasetImages, out_dir: str, results: Optional[Sequence[dict]] = None,
                         threshold: float = DEFAULT_THRESHOLD, max_images: int = 20,
                         image_ids: Optional[Iterable[int]] = None) -> List[str]:
    """Draw the chosen images of `images` (ground truth; with `results`, predictions beside it) into
    `out_dir` as PNG files; returns their paths. Results on images the dataset lacks are an error."""
    by_image = None if results is None else results_by_image(results)
    if by_image:
        stray = sorted(set(by_image) - set(images.image_ids.tolist()))
        if stray:
            raise ValueError(f"{len(stray)} image ids of the results are not in {images.dataset.json_file}, "
                             f"e.g. {stray[:5]}: results of another dataset?")
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for image_id in images.select(image_ids, max_images):
        panel = images.render(image_id, None if by_image is None else by_image.get(image_id, []), threshold)
        stem = os.path.splitext(os.path.basename(images.file_name(image_id)))[0]
        path = os.path.join(out_dir, f"{image_id}_{stem}.png")
        Image.fromarray(panel).save(path)
        paths.append(path)
    logger.info("Wrote %d images to %s", len(paths), out_dir)
    return paths


def _test_sets(run: RunDir) -> List[str]:
    """DATASETS.TEST of a run's config.yaml, with the config loader's value rules (a string is a literal)."""
    with open(run.config_file) as f:
        raw = yaml.safe_load(f) or {}
    tests = CfgNode._decode_cfg_value((raw.get("DATASETS") or {}).get("TEST", ()))
    return [tests] if isinstance(tests, str) else [str(t) for t in tests]


def run_results(run_dir: str) -> List[Tuple[str, bool, str]]:
    """(test set, TTA?, results file) of every coco_instances_results*.json in a run directory, the test set
    read from its config.yaml; an error names the directory when there is none."""
    run = RunDir(run_dir)
    files = run.coco_results_files()
    if not files:
        raise FileNotFoundError(f"{run_dir}: no coco_instances_results*.json (evaluations write it; "
                                "tools/train.py --eval-only evaluates a checkpoint)")
    if not os.path.isfile(run.config_file):
        raise FileNotFoundError(f"{run.config_file} not found: which dataset the results are on is written there")
    tests = _test_sets(run)
    found = []
    for tag, tta, path in files:
        if tag is None:
            names = tests[:1]
        else:
            names = [t for t in tests if os.path.basename(run.coco_results_file(t)) ==
                     os.path.basename(run.coco_results_file(tag))]
        if not names:
            raise ValueError(f"{path}: its test set {tag!r} is not among DATASETS.TEST {tests} of {run.config_file}")
        found.append((names[0], tta, path))
    return found


def visualize_run(run_dir: str, out_dir: Optional[str] = None, threshold: float = DEFAULT_THRESHOLD,
                  max_images: int = 20, image_ids: Optional[Iterable[int]] = None) -> List[str]:
    """Images of every results file of a run (run_results), each in <out_dir>/<results file stem>/
    (default out_dir: <run_dir>/visualize)."""
    out_dir = out_dir or os.path.join(run_dir, "visualize")
    paths = []
    for dataset, _, path in run_results(run_dir):
        stem = os.path.splitext(os.path.basename(path))[0]
        paths += write_visualizations(DatasetImages.from_name(dataset), os.path.join(out_dir, stem),
                                      load_results(path), threshold, max_images, image_ids)
    return paths


def prediction_panels(images: DatasetImages, image_results: Sequence[dict], num_images: int = 3,
                      threshold: float = DEFAULT_THRESHOLD, max_side: int = 1024) -> List[Tuple[int, np.ndarray]]:
    """(image id, predictions | ground truth panel) of the dataset's first `num_images` images, from an
    evaluator's per-image entries (COCOEvaluator.image_results), for TensorBoard; at most `max_side` wide."""
    entries = {int(e["image_id"]): e for e in image_results}
    out = []
    for image_id in images.select(None, num_images):
        results = image_results_to_coco_json(entries[image_id]) if image_id in entries else []
        out.append((image_id, shrink(images.render(image_id, results, threshold), max_side)))
    return out
