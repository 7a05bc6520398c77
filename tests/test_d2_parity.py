"""Parity with detectron2's own outputs: the golden fixture in ../shared/reference/detectron2-golden
(a Mask R-CNN R18-FPN GN trained by detectron2, its config.yaml, and what detectron2 computes from
them; its README says what each file is).

detectron2's config file and model-zoo .pkl are used as they are: `load_config(<fixture>/model/config.yaml)`
and `MODEL.WEIGHTS <fixture>/model/model_final.pkl`. Stage by stage (eval mode): the preprocessed
input equal; backbone / FPN maps, RPN proposals and scores, box-head logits and deltas and mask
logits within 1e-4 relative; detections within 1e-3 px with the same classes; pasted masks IoU >= 0.99
per instance; box and mask AP within 0.1 of detectron2's COCOEvaluator; the five training losses on
the fixed batch within 1e-4 relative. Skipped, saying why, when ../shared is absent.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from rethink.config import load_config
from rethink.data.build import build_test_loader, get_dataset
from rethink.data.transforms import DatasetMapper
from rethink.modeling import build_model
from rethink.structures import InstanceMasks
from rethink.weights import load_weights

from .conftest import GOLDEN, ROOT
from .golden import assert_close, load_golden_model, mask_iou

EXPECTED = GOLDEN / "expected"
WEIGHTS = GOLDEN / "model" / "model_final.pkl"
INTERMEDIATE_IDS = (20910, 163892)

pytestmark = pytest.mark.skipif(not WEIGHTS.is_file(), reason=f"detectron2's golden fixture is absent ({GOLDEN})")


@pytest.fixture(scope="module")
def cfg(golden_env):
    return load_config(GOLDEN / "model" / "config.yaml", ["MODEL.WEIGHTS", str(WEIGHTS)])


@pytest.fixture(scope="module")
def model(cfg):
    return load_golden_model(cfg, 124)


@pytest.fixture(scope="module")
def test_samples(cfg):
    return {s["image_id"]: s for [s] in build_test_loader(cfg, "coco_2017_val")}


@pytest.fixture(scope="module")
def predictions(model, test_samples):
    with torch.no_grad():
        return {i: model([s["image"]], output_sizes=[(s["height"], s["width"])])[0] for i, s in test_samples.items()}


def test_fixture_config_resolves_as_detectron2(cfg):
    assert (cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.FPN.OUT_CHANNELS, cfg.SOLVER.IMS_PER_BATCH) == (18, 128, 2)
    assert cfg.SOLVER.MAX_ITER == 360 and tuple(cfg.SOLVER.STEPS) == (288, 334)
    assert sum(p.numel() for p in build_model(cfg).parameters()) == 14_153_136


@pytest.mark.parametrize("image_id", INTERMEDIATE_IDS)
def test_stage_by_stage_eval(model, test_samples, image_id):
    ref = np.load(EXPECTED / f"intermediates_img{image_id}.npz")
    image = test_samples[image_id]["image"]
    assert image.dtype == torch.uint8 and torch.equal(image, torch.from_numpy(ref["input_bgr_uint8"]))
    with torch.no_grad():
        batch, _ = model.transform([image])
        assert list(batch.tensors.shape) == ref["padded_shape"].tolist()
        assert_close(batch.tensors[0, :, :8, :8], ref["normalized_padded_corner"], what="normalized input")
        body = model.backbone.body(batch.tensors)
        for k, name in enumerate(("res2", "res3", "res4", "res5")):
            assert_close(body[str(k)][0, :4, :4, :4], ref[f"{name}_corner"], what=name)
        feats = model.backbone(batch.tensors)
        for k, name in enumerate(("p2", "p3", "p4", "p5", "p6")):
            key = list(feats)[k]
            assert_close(feats[key][0, :4, :4, :4], ref[f"{name}_corner"], what=name)
        assert_close(feats[list(feats)[4]][0], ref["p6_full"], what="p6")
        anchors = model.rpn.anchor_generator(batch, list(feats.values()))[0]
        sizes = [f.shape[-2] * f.shape[-1] * 3 for f in feats.values()]
        for level, first in zip(("p2", "p3", "p4", "p5", "p6"), np.cumsum([0] + sizes[:-1])):
            assert_close(anchors[first:first + 6], ref[f"anchors_{level}_first6"], what=f"anchors {level}")
        # RPN proposals and their objectness (torchvision keeps the sigmoid of the logit)
        rpn = model.rpn
        objectness, deltas = rpn.head(list(feats.values()))
        per_level = [o[0].numel() for o in objectness]
        from torchvision.models.detection.rpn import concat_box_prediction_layers
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        proposals = rpn.box_coder.decode(deltas.detach(), [anchors]).view(1, -1, 4)
        boxes, scores = rpn.filter_proposals(proposals, objectness, batch.image_sizes, per_level)
        assert_close(boxes[0], ref["proposal_boxes_xyxy"], what="proposal boxes")
        assert_close(scores[0], torch.sigmoid(torch.from_numpy(ref["proposal_objectness_logits"])),
                     what="proposal objectness")
        # box head on detectron2's proposals (background: last column there, first here)
        heads = model.roi_heads
        d2_props = [torch.from_numpy(ref["proposal_boxes_xyxy"])]
        logits, box_deltas = heads.box_predictor(heads.box_head(heads.box_roi_pool(feats, d2_props, batch.image_sizes)))
        assert_close(torch.cat([logits[:, 1:], logits[:, :1]], dim=1), ref["box_cls_logits"], what="class logits")
        assert_close(box_deltas[:, 4:], ref["box_deltas"], what="box deltas")
        dets, _ = heads(feats, d2_props, batch.image_sizes)
        det = dets[0]
        assert torch.equal(det["labels"] - 1, torch.from_numpy(ref["det_classes"]))
        assert float((det["boxes"] - torch.from_numpy(ref["det_boxes_resized_xyxy"])).abs().max()) <= 1e-3
        assert_close(det["scores"], ref["det_scores"], what="detection scores")
        mask_logits = heads._mask_logits(feats, [det["boxes"]], batch.image_sizes)
        assert_close(mask_logits[torch.arange(len(det["labels"])), det["labels"]], ref["mask_logits28"],
                     what="mask logits")


def test_predictions_match_detectron2(predictions, test_samples):
    ref = np.load(EXPECTED / "predictions.npz")
    assert sorted(predictions) == sorted(int(i) for i in ref["image_ids"])
    ious = []
    for image_id, out in predictions.items():
        p = f"img{image_id}_"
        assert torch.equal(out["labels"] - 1, torch.from_numpy(ref[p + "classes"])), image_id
        assert float((out["boxes"] - torch.from_numpy(ref[p + "boxes_xyxy"])).abs().max()) <= 1e-3, image_id
        assert_close(out["scores"], ref[p + "scores"], what=f"scores of image {image_id}")
        masks = out["masks"].numpy()
        assert masks.dtype == bool and masks.shape == ref[p + "masks"].shape
        ious += [mask_iou(a, b) for a, b in zip(masks, ref[p + "masks"])]
    assert len(ious) == 271 and min(ious) >= 0.99, f"min mask IoU {min(ious):.4f}"


def test_train_py_eval_only_reproduces_detectron2_ap(golden_env, tmp_path):
    """detectron2's config.yaml and model_final.pkl, as they are, through tools/train.py --eval-only."""
    out = tmp_path / "eval"
    cmd = [sys.executable, str(ROOT / "tools" / "train.py"), "--config", str(GOLDEN / "model" / "config.yaml"),
           "--eval-only", "MODEL.WEIGHTS", str(WEIGHTS), "OUTPUT_DIR", str(out)]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "eval_results.json").read_text())
    d2 = json.loads((EXPECTED / "coco_eval.json").read_text())["COCOEvaluator_use_fast_impl_False_pycocotools"]
    compared = 0
    for task in ("bbox", "segm"):
        for metric, theirs in d2[task].items():
            if theirs is None:  # undefined in detectron2 (no GT in that slice or category): absent here
                assert f"{task}/{metric}" not in results, (task, metric)
                continue
            compared += 1
            ours = results[f"{task}/{metric}"]
            assert abs(ours - theirs) <= 0.1, (task, metric, ours, theirs)
    assert compared == 16  # AP, AP50, AP75, APs, APm and the 3 categories, for bbox and segm


def _train_batch():
    npz = np.load(EXPECTED / "train_batch.npz")
    meta = json.loads((EXPECTED / "train_losses.json").read_text())
    images, targets = [], []
    for b in meta["batch"]:
        k = b["index"]
        image = torch.from_numpy(npz[f"img{k}_input_bgr_uint8"])
        assert list(image.shape[-2:]) == b["input_hw"]
        polys = [[np.asarray(p, dtype=np.float64) for p in inst] for inst in b["gt_polygons_resized"]]
        targets.append({"boxes": torch.from_numpy(npz[f"img{k}_gt_boxes_xyxy"]),
                        "labels": torch.from_numpy(npz[f"img{k}_gt_classes"]) + 1,
                        "masks": InstanceMasks(polys, tuple(b["input_hw"]))})
        images.append(image)
    return images, targets, meta


def _train_losses(cfg, overrides, seed=0):
    images, targets, _ = _train_batch()
    m = build_model(load_config(GOLDEN / "model" / "config.yaml", ["MODEL.WEIGHTS", str(WEIGHTS)] + overrides))
    load_weights(m, str(WEIGHTS))
    m.train()
    torch.manual_seed(seed)
    with torch.no_grad():
        return {k: float(v) for k, v in m(images, targets).items()}


def _overrides(settings: dict) -> list:
    return [x for k, v in settings.items() for x in (k, str(v))]


def test_training_losses_complete_sampling(cfg):
    _, _, meta = _train_batch()
    ref = meta["complete_sampling"]
    ours = _train_losses(cfg, _overrides(ref["config"]))
    assert set(ours) == set(ref["losses"])
    for name, value in ref["losses"].items():
        assert ours[name] == pytest.approx(value, rel=1e-4), (name, ours[name], value)


def test_training_losses_default_sampling_seed_independent_terms(cfg):
    """With detectron2's default sampling every positive anchor and foreground RoI of this batch is
    sampled, so loss_box_reg, loss_mask and loss_rpn_loc do not depend on the random negatives."""
    _, _, meta = _train_batch()
    ref = meta["default_sampling"]["by_seed"]["0"]["losses"]
    ours = _train_losses(cfg, _overrides(meta["default_sampling"]["config"]))
    for name in ("loss_box_reg", "loss_mask", "loss_rpn_loc"):
        assert ours[name] == pytest.approx(ref[name], rel=1e-4), (name, ours[name], ref[name])


def test_train_mapper_equals_detectron2_dataset_mapper(golden_env):
    """Our training mapper on the fixed batch's images (short side 256, no flip) gives detectron2's
    input image, GT boxes, classes and resized polygons (crowd dropped)."""
    images, targets, meta = _train_batch()
    cfg = load_config(GOLDEN / "model" / "config.yaml",
                      ["INPUT.MIN_SIZE_TRAIN", "(256,)", "INPUT.RANDOM_FLIP", "none"])
    dataset = get_dataset("coco_2017_train")
    mapper = DatasetMapper(cfg, is_train=True)
    row_of = {dataset.index.image_id(i): i for i in range(len(dataset))}
    for b, image, target in zip(meta["batch"], images, targets):
        sample = mapper(dataset, row_of[b["image_id"]], np.random.default_rng(0))
        assert torch.equal(sample["image"], image), b["image_id"]
        t = sample["target"]
        assert torch.equal(t["labels"], target["labels"]) and len(t["masks"]) == b["num_gt"]
        assert_close(t["boxes"], target["boxes"], rel=1e-6, what="GT boxes")
        for ours, theirs in zip(t["masks"].items, target["masks"].items):
            assert len(ours) == len(theirs)
            for p, q in zip(ours, theirs):  # the annotation cache keeps float32 coordinates
                np.testing.assert_allclose(p, q, rtol=0, atol=1e-4)
