"""Keypoint R-CNN as detectron2's: head names/shapes against detectron2's model, .pkl names, heatmap targets,
the loss normalisation and the sub-pixel inference on hand-made cases, the data transform (+0.5, resize, flip
with left/right swapped, v = 0 outside), MIN_KEYPOINTS_PER_IMAGE, keypoint AP equal to pycocotools in every
backend, the config checks, and a tiny run on the generated stick figures that trains, evaluates and plots."""
import csv
import json
import math
import os
import pickle

import numpy as np
import pytest
import torch

from rethink.cluster.sweep import load_sweep, plan_table
from rethink.config import ConfigError, load_config
from rethink.data.build import TrainingSet, get_dataset
from rethink.data.keypoints import COCO_PERSON_KEYPOINT_NAMES, flip_indices, transform_keypoints
from rethink.data.transforms import DatasetMapper
from rethink.engine import load_run_config, main_worker, read_metrics
from rethink.evaluation import COCOEvaluator
from rethink.evaluation.coco import BACKENDS, REFERENCE_BACKEND, evaluate_coco_results, load_coco_gt
from rethink.modeling import build_model
from rethink.modeling.roi_heads.keypoint import heatmaps_to_keypoints, keypoint_rcnn_loss, keypoints_to_heatmap
from rethink.results.curves import plot_curves
from rethink.results.paper import lookup
from rethink.results.report import build_table
from rethink.results.runs import find_runs
from rethink.weights import load_weights

from .conftest import CONFIGS, ROOT, tiny_cfg
from .test_resnext import D2_CONFIGS, _check_against_detectron2, _entry, _no_init, _to_d2_body_name, needs_shapes

KEYPOINT_ENTRY = "keypoint_rcnn_R_50_FPN_gn scratch"
KEYPOINT_PARAMS = 60_500_070
TINY_KP = ["MODEL.KEYPOINT_ON", "True", "MODEL.MASK_ON", "False", "MODEL.ROI_HEADS.NUM_CLASSES", "1",
           "MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS", "(16, 16)"]


# --------------------------------------------------------------------------------------------------
# the model: detectron2's names and shapes, .pkl loading
# --------------------------------------------------------------------------------------------------
@needs_shapes
def test_keypoint_rcnn_names_and_shapes_equal_detectron2s():
    entry = _entry(KEYPOINT_ENTRY)
    cfg = load_config(D2_CONFIGS / entry["config"], list(entry["overrides"]))
    with _no_init():
        model = build_model(cfg)
    _check_against_detectron2(model, entry, KEYPOINT_PARAMS)
    convs = 256 * 512 * 9 + 512 + 7 * (512 * 512 * 9 + 512)  # conv_fcn1 on the 256 FPN channels, 2..8
    assert sum(p.numel() for n, p in model.named_parameters() if ".keypoint_head." in n) == convs + 512 * 17 * 16 + 17
    with _no_init():  # our scratch config builds the same model
        _check_against_detectron2(build_model(load_config(CONFIGS / "keypoints" / "scratch_gn_r50.yaml")), entry,
                                  KEYPOINT_PARAMS)


def test_keypoint_head_layers_as_detectron2():
    model = build_model(tiny_cfg(*TINY_KP))
    head = model.roi_heads.keypoint_head
    assert [n for n, _ in head.named_parameters()] == [
        "conv_fcn1.weight", "conv_fcn1.bias", "conv_fcn2.weight", "conv_fcn2.bias", "score_lowres.weight",
        "score_lowres.bias"]
    assert tuple(head.score_lowres.weight.shape) == (16, 17, 4, 4) and head.score_lowres.stride == (2, 2)
    assert all(float(p.detach().abs().sum()) == 0 for n, p in head.named_parameters() if n.endswith("bias"))
    feats = {k: torch.randn(1, 64, 64 // 2 ** i, 64 // 2 ** i) for i, k in enumerate(["0", "1", "2", "3"])}
    out = head(feats, [torch.tensor([[4.0, 4, 40, 60], [0, 0, 10, 10]])], [(256, 256)])
    assert tuple(out.shape) == (2, 17, 56, 56)  # 14 -> deconv 28 -> bilinear 56


def test_detectron2_keypoint_pkl_loads_by_name(tmp_path):
    model = build_model(tiny_cfg(*TINY_KP))
    g = torch.Generator().manual_seed(3)
    body = model.backbone.body.state_dict()
    d2 = {"backbone.bottom_up." + _to_d2_body_name(k): torch.randn(v.shape, generator=g).numpy()
          for k, v in body.items() if not k.endswith("num_batches_tracked")}
    head = {k: torch.randn(v.shape, generator=g).numpy()
            for k, v in model.roi_heads.keypoint_head.state_dict().items()}
    d2.update({f"roi_heads.keypoint_head.{k}": v for k, v in head.items()})
    path = tmp_path / "keypoint.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": d2, "__author__": "test"}, f)
    report = load_weights(model, str(path))
    assert not report.unexpected and not report.mismatched
    for k, v in model.roi_heads.keypoint_head.state_dict().items():
        assert np.array_equal(v.numpy(), head[k]), k


# --------------------------------------------------------------------------------------------------
# targets, loss and inference on hand-made cases
# --------------------------------------------------------------------------------------------------
def test_heatmap_targets_floor_edges_and_visibility():
    roi = torch.tensor([[10.0, 20.0, 50.0, 60.0]])  # 40 x 40 on a 4 x 4 map: 10 px a cell
    kps = torch.tensor([[[10.0, 20.0, 2], [49.9, 59.9, 2], [50.0, 60.0, 1], [30.0, 40.0, 2], [9.9, 30.0, 2],
                         [30.0, 40.0, 0], [25.0, 55.0, 1]]])
    cells, valid = keypoints_to_heatmap(kps, roi, 4)
    assert valid.tolist() == [[True, True, True, True, False, False, True]]
    # (col, row): (0, 0), (3, 3), the right/bottom edge -> (3, 3), (2, 2), outside, unlabelled, (1, 3)
    assert cells.tolist() == [[0, 15, 15, 10, 0, 0, 13]]


def test_loss_normalised_by_visible_keypoints_or_by_the_batch():
    logits = torch.zeros(2, 17, 4, 4)
    logits[0, 0, 0, 0] = 2.0  # keypoint 0 of box 0: its target cell 0 has logit 2
    kps = torch.zeros(2, 17, 3)
    kps[0, 0] = torch.tensor([11.0, 21.0, 2])
    kps[0, 1] = torch.tensor([45.0, 25.0, 1])
    kps[1, 2] = torch.tensor([5.0, 5.0, 2])
    boxes = torch.tensor([[10.0, 20.0, 50.0, 60.0], [0.0, 0.0, 8.0, 8.0]])
    ce_hit = -math.log(math.exp(2) / (math.exp(2) + 15))
    total = ce_hit + 2 * math.log(16)
    assert float(keypoint_rcnn_loss(logits, [kps], [boxes], None)) == pytest.approx(total / 3, rel=1e-6)
    assert float(keypoint_rcnn_loss(logits, [kps], [boxes], 17 * 64 * 0.25)) == pytest.approx(total / 272, rel=1e-6)
    none = keypoint_rcnn_loss(logits.requires_grad_(), [torch.zeros(2, 17, 3)], [boxes], None)
    none.backward()
    assert float(none.detach()) == 0 and logits.grad is not None


def test_head_loss_takes_foreground_proposals_with_a_keypoint_inside():
    """Zero weights give zero logits: each valid keypoint costs log(56^2). Only foreground proposals holding a
    labelled keypoint of their instance count; the normaliser is the visible count, or images x K x 64 x 0.25."""
    for by_visible, images in ((True, 1), (False, 2)):
        cfg = tiny_cfg(*TINY_KP, "MODEL.ROI_KEYPOINT_HEAD.NORMALIZE_LOSS_BY_VISIBLE_KEYPOINTS", str(by_visible))
        head = build_model(cfg).roi_heads.keypoint_head
        for p in head.parameters():
            torch.nn.init.zeros_(p)
        feats = {k: torch.randn(images, 64, 64 // 2 ** i, 64 // 2 ** i) for i, k in enumerate(["0", "1", "2", "3"])}
        kps = torch.zeros(2, 17, 3)
        kps[0, :3] = torch.tensor([[12.0, 12, 2], [20, 20, 1], [30, 30, 0]])  # 2 labelled
        kps[1, 5] = torch.tensor([50.0, 50, 2])
        target = {"keypoints": kps}
        proposals = torch.tensor([[10.0, 10, 40, 40], [0, 0, 11, 11], [45, 45, 60, 60], [5, 5, 25, 25]])
        labels = torch.tensor([1, 1, 1, 0])  # the last one is background
        matched = torch.tensor([0, 0, 1, 0])  # box 1 holds no keypoint of instance 0: dropped
        args = ([proposals] * images, [(64, 64)] * images, [target] * images, [labels] * images, [matched] * images)
        loss = float(head.loss(feats, *args))
        valid = 3 * images  # box 0: 2 keypoints, box 2: 1
        expected = valid * math.log(56 * 56) / (valid if by_visible else images * 17 * 64 * 0.25)
        assert loss == pytest.approx(expected, rel=1e-5), by_visible


def test_inference_argmax_with_the_sub_pixel_rule_and_softmax_score():
    maps = torch.zeros(2, 17, 4, 4)
    maps[:, 0, 1, 2] = 5.0  # keypoint 0 peaks at row 1, column 2
    maps[:, 1, 3, 0] = 1.0
    rois = torch.tensor([[10.0, 20.0, 14.0, 24.0],  # 4 x 4: the bicubic resize to 4 x 4 is the identity
                         [10.0, 20.0, 13.5, 23.25]])  # 3.5 x 3.25: cells scaled by 3.5 / 4 and 3.25 / 4
    out = heatmaps_to_keypoints(maps, rois)
    assert out.shape == (2, 17, 3)
    assert out[0, 0].tolist() == pytest.approx([10 + 2.5, 20 + 1.5, 1 / (1 + 15 * math.exp(-5))], rel=1e-6)
    assert out[0, 1, :2].tolist() == pytest.approx([10 + 0.5, 20 + 3.5])
    assert out[1, 0, :2].tolist() == pytest.approx([10 + 2.5 * 3.5 / 4, 20 + 1.5 * 3.25 / 4])
    assert out[0, 2, :2].tolist() == pytest.approx([10.5, 20.5])  # flat map: the first cell
    assert float(out[0, 2, 2]) == pytest.approx(1 / 16)


def test_model_outputs_keypoints_scaled_to_the_output_size():
    torch.manual_seed(0)
    model = build_model(tiny_cfg(*TINY_KP, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "TEST.DETECTIONS_PER_IMAGE",
                                 "10")).eval()
    image = torch.randint(0, 255, (3, 96, 128), dtype=torch.uint8)
    with torch.no_grad():
        [small] = model([image])
        [big] = model([image], output_sizes=[(192, 256)])
    assert small["keypoints"].shape == (len(small["boxes"]), 17, 3) and len(small["boxes"]) > 0
    assert torch.allclose(big["keypoints"][..., :2], small["keypoints"][..., :2] * 2, atol=1e-4)
    assert torch.equal(big["keypoints"][..., 2], small["keypoints"][..., 2])
    inside = (small["keypoints"][..., 0] >= small["boxes"][:, None, 0] - 1e-4) & (
        small["keypoints"][..., 0] <= small["boxes"][:, None, 2] + 1e-4)
    assert bool(inside.all())


# --------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------
def test_coco_flip_indices_are_detectron2s():
    assert flip_indices(COCO_PERSON_KEYPOINT_NAMES) == [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]


def test_transform_keypoints_half_pixel_resize_flip_and_outside():
    names = ["nose", "left_eye", "right_eye"]
    kps = np.array([[[10, 20, 2], [30, 5, 1], [0, 0, 0]], [[99, 49, 2], [100, 0, 2], [4, 4, 2]]], dtype=np.float64)
    out = transform_keypoints(kps, (50, 100), (100, 200), flip=False)
    assert out[0].tolist() == [[21, 41, 2], [61, 11, 1], [0, 0, 0]]
    assert out[1].tolist() == [[199, 99, 2], [0, 0, 0], [9, 9, 2]]  # x + 0.5 = 100.5 > 100: outside -> 0
    flipped = transform_keypoints(kps, (50, 100), (100, 200), flip=True, flip_idx=flip_indices(names))
    # x -> 200 - x, then the left and right eyes swap places
    assert flipped[0].tolist() == [[179, 41, 2], [0, 0, 0], [139, 11, 1]]
    crop = transform_keypoints(kps, (30, 40), (30, 40), flip=False, crop=(0, 5, 30, 40))  # (y0, x0, h, w)
    assert crop[0].tolist() == [[5.5, 20.5, 2], [25.5, 5.5, 1], [0, 0, 0]]
    assert crop[1, 0].tolist() == [0, 0, 0]  # x 94.5 > 40: outside the crop


@pytest.fixture(scope="module")
def keypoint_sets(isolated_cache):
    return get_dataset("synthetic_keypoints_train"), get_dataset("synthetic_keypoints_val")


class _Flip:
    """A generator whose draws take the first short edge and flip (DatasetMapper.draw: integers, then random)."""

    def __init__(self, flip):
        self.flip = flip

    def integers(self, *a, **k):
        return 0

    def random(self, *a, **k):
        return 0.0 if self.flip else 0.99


def test_mapper_keypoints_follow_the_boxes_and_the_flip(keypoint_sets):
    train, _ = keypoint_sets
    cfg = load_config(CONFIGS / "keypoints" / "scratch_gn_r18_tiny.yaml")
    mapper = DatasetMapper(cfg, is_train=True)
    i = 0
    with open(train.json_file) as f:
        data = json.load(f)
    image_id = train.index.image_id(i)
    anns = [a for a in data["annotations"] if a["image_id"] == image_id and not a["iscrowd"]]
    plain, flipped = mapper(train, i, _Flip(False)), mapper(train, i, _Flip(True))
    (h, w), (nh, nw) = (plain["height"], plain["width"]), plain["aug"]["size"]
    kp = plain["target"]["keypoints"]
    assert kp.shape == (len(anns), 17, 3) and kp.dtype == torch.float32
    raw = np.array([a["keypoints"] for a in anns], dtype=np.float64).reshape(-1, 17, 3)
    lab = raw[..., 2] > 0
    assert np.allclose(kp[..., 0].numpy()[lab], (raw[..., 0][lab] + 0.5) * nw / w, atol=1e-4)
    assert np.allclose(kp[..., 1].numpy()[lab], (raw[..., 1][lab] + 0.5) * nh / h, atol=1e-4)
    assert (kp[..., 2].numpy() == raw[..., 2]).all() and (kp.numpy()[~lab] == 0).all()
    fk = flipped["target"]["keypoints"].numpy()
    swap = flip_indices(COCO_PERSON_KEYPOINT_NAMES)
    expect = kp.numpy()[:, swap].copy()
    expect[..., 0] = np.where(expect[..., 2] > 0, nw - expect[..., 0], 0)
    assert np.allclose(fk, expect, atol=1e-4)
    assert fk[0, 5, 0] > fk[0, 6, 0] or raw[0, 5, 2] == 0 or raw[0, 6, 2] == 0  # left shoulder on the image's left


def test_min_keypoints_per_image_skips_images(keypoint_sets):
    train, _ = keypoint_sets
    with open(train.json_file) as f:
        data = json.load(f)
    per_image = {im["id"]: 0 for im in data["images"]}
    for a in data["annotations"]:
        per_image[a["image_id"]] += sum(1 for v in a["keypoints"][2::3] if v > 0)
    all_kept = TrainingSet(["synthetic_keypoints_train"], num_keypoints=17, min_keypoints=1)
    assert len(all_kept) == sum(1 for n in per_image.values() if n >= 1) == len(data["images"]) - 1
    some = TrainingSet(["synthetic_keypoints_train"], num_keypoints=17, min_keypoints=25)
    assert len(some) == sum(1 for n in per_image.values() if n >= 25) and 0 < len(some) < len(all_kept)
    with pytest.raises(Exception, match="NUM_KEYPOINTS = 5"):
        TrainingSet(["synthetic_keypoints_train"], num_keypoints=5)


# --------------------------------------------------------------------------------------------------
# evaluation: keypoint AP equal to pycocotools in every backend
# --------------------------------------------------------------------------------------------------
IMAGES = [(1, 240, 320), (2, 200, 300), (4, 256, 256), (7, 180, 360)]


def _kp_gt():
    rng = np.random.default_rng(11)
    cat = {"id": 1, "name": "person", "keypoints": list(COCO_PERSON_KEYPOINT_NAMES), "skeleton": []}
    anns, aid = [], 1
    for image_id, h, w in IMAGES[:3]:  # image 7 has no person
        for _ in range(int(rng.integers(1, 4))):
            bw, bh = rng.uniform(40, 150), rng.uniform(60, 170)
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            v = rng.choice([0, 1, 2], size=17, p=[0.15, 0.15, 0.7])
            kp = [[int(x + rng.uniform(0, bw)), int(y + rng.uniform(0, bh)), int(vi)] if vi else [0, 0, 0] for vi in v]
            anns.append({"id": aid, "image_id": image_id, "category_id": 1, "iscrowd": 0, "bbox": [x, y, bw, bh],
                         "area": 0.6 * bw * bh, "keypoints": [c for k in kp for c in k],
                         "num_keypoints": int((v > 0).sum())})
            aid += 1
    anns.append({"id": aid, "image_id": 2, "category_id": 1, "iscrowd": 1, "bbox": [5, 5, 80, 60], "area": 4800.0,
                 "segmentation": {"size": [200, 300], "counts": [200 * 5 + 5] + [60, 140] * 79 + [60, 200 * 215 + 135]},
                 "keypoints": [0] * 51, "num_keypoints": 0})
    return {"images": [{"id": i, "height": h, "width": w, "file_name": f"{i}.jpg"} for i, h, w in IMAGES],
            "annotations": anns, "categories": [cat]}


@pytest.fixture(scope="module")
def kp_gt_json(tmp_path_factory):
    path = tmp_path_factory.mktemp("kp_eval") / "person_keypoints.json"
    path.write_text(json.dumps(_kp_gt()))
    return str(path)


def _outputs(gt, noise, seed, drop=()):
    """Model outputs (pixel-centre keypoints, as the model gives them) from the ground truth plus noise."""
    rng = np.random.default_rng(seed)
    out = {i: {"boxes": [], "scores": [], "labels": [], "keypoints": []} for i, _, _ in IMAGES}
    for a in gt["annotations"]:
        if a["iscrowd"] or a["id"] in drop:
            continue
        x, y, w, h = a["bbox"]
        kp = np.array(a["keypoints"], dtype=np.float64).reshape(17, 3)
        kp[:, :2] += 0.5 + rng.normal(0, noise, (17, 2))
        kp[:, 2] = rng.uniform(0.1, 1, 17)
        o = out[a["image_id"]]
        o["boxes"].append([x, y, x + w, y + h])
        o["scores"].append(float(rng.uniform(0.3, 1)))
        o["labels"].append(1)
        o["keypoints"].append(kp)
    return {i: {"boxes": torch.tensor(o["boxes"]).reshape(-1, 4), "scores": torch.tensor(o["scores"]),
                "labels": torch.tensor(o["labels"], dtype=torch.int64),
                "keypoints": torch.tensor(np.array(o["keypoints"])).reshape(-1, 17, 3)} for i, o in out.items()}


def _evaluate(gt_json, outputs, backend, **kwargs):
    ev = COCOEvaluator(gt_json, backend=backend, tasks=("bbox", "keypoints"), **kwargs)
    ev.reset()
    ev.process(list(outputs), list(outputs.values()))
    return ev.evaluate(), ev


def _case(name, gt):
    if name == "exact":
        return _outputs(gt, 0.0, 0), {}
    if name == "noisy":
        return _outputs(gt, 3.0, 1), {}
    if name == "misses_and_false_positives":
        outs = _outputs(gt, 2.0, 2, drop=(1, 4))
        fp = {"boxes": torch.tensor([[10.0, 10, 120, 150], [200, 20, 300, 180]]), "scores": torch.tensor([0.95, 0.5]),
              "labels": torch.tensor([1, 1]), "keypoints": torch.rand(2, 17, 3) * 100 + 20}
        outs[7] = fp  # image 7 has nobody
        outs[2] = {k: torch.cat([outs[2][k], fp[k][:1]]) for k in fp}  # one on the crowd region too
        return outs, {}
    if name == "custom_sigmas":
        return _outputs(gt, 3.0, 3), {"kpt_oks_sigmas": list(np.linspace(0.03, 0.12, 17))}
    if name == "slice":
        return _outputs(gt, 3.0, 4), {"img_ids": [4, 7]}
    raise ValueError(name)


@pytest.mark.parametrize("case", ["exact", "noisy", "misses_and_false_positives", "custom_sigmas", "slice"])
def test_keypoint_ap_equals_pycocotools_in_every_backend(kp_gt_json, case):
    gt = _kp_gt()
    outputs, kwargs = _case(case, gt)
    ref, ref_ev = _evaluate(kp_gt_json, outputs, REFERENCE_BACKEND, **kwargs)
    assert list(ref["keypoints"]) == ["AP", "AP50", "AP75", "APm", "APl", "AP-person"]
    assert ref_ev.stats["keypoints"].shape == (10,)
    for backend in BACKENDS:
        got, ev = _evaluate(kp_gt_json, outputs, backend, **kwargs)
        if backend == "faster_coco_eval":  # a perfect precision is exactly 1 there, 1 - 2e-16 in pycocotools
            np.testing.assert_allclose(ev.stats["keypoints"], ref_ev.stats["keypoints"], rtol=0, atol=1e-9)
        else:
            assert ev.stats["keypoints"].tolist() == ref_ev.stats["keypoints"].tolist(), backend
            assert got == ref, backend
    ap = ref["keypoints"]["AP"]
    if case == "exact":
        assert ap == pytest.approx(100.0)
    elif case == "slice":  # image 4's persons only (image 7 has none)
        assert ap is not None and ap != _evaluate(kp_gt_json, outputs, REFERENCE_BACKEND)[0]["keypoints"]["AP"]
    else:
        assert 0 < ap < 100


def test_sigmas_change_oks_and_their_count_is_checked(kp_gt_json):
    gt = _kp_gt()
    outputs = _outputs(gt, 3.0, 3)
    coco, wide = _evaluate(kp_gt_json, outputs, "pycocotools")[0], _evaluate(
        kp_gt_json, outputs, "pycocotools", kpt_oks_sigmas=[1.0] * 17)[0]
    assert wide["keypoints"]["AP"] > coco["keypoints"]["AP"]  # wider sigmas forgive the same errors
    with pytest.raises(ValueError, match="17 keypoints in the ground truth, 17 predicted, 5 OKS sigmas"):
        _evaluate(kp_gt_json, outputs, "hotcoco", kpt_oks_sigmas=[0.1] * 5)


def test_results_hold_coco_pixel_indices(kp_gt_json):
    gt = _kp_gt()
    outputs = _outputs(gt, 0.0, 0)
    _, ev = _evaluate(kp_gt_json, outputs, "hotcoco")
    first = next(r for r in ev.coco_results if r["image_id"] == 1)
    ann = next(a for a in gt["annotations"] if a["image_id"] == 1)
    labelled = np.array(ann["keypoints"]).reshape(17, 3)[:, 2] > 0
    got = np.array(first["keypoints"]).reshape(17, 3)
    assert np.allclose(got[labelled, :2], np.array(ann["keypoints"]).reshape(17, 3)[labelled, :2])


# --------------------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides,match", [
    (["TEST.KEYPOINT_OKS_SIGMAS", "[0.1, 0.2]"], "TEST.KEYPOINT_OKS_SIGMAS.*one positive sigma per keypoint"),
    (["MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS", "5"], "TEST.KEYPOINT_OKS_SIGMAS.*NUM_KEYPOINTS = 5"),
    (["TEST.AUG.ENABLED", "True"], "TEST.AUG.ENABLED.*keypoints is not supported"),
    (["MODEL.ROI_KEYPOINT_HEAD.NAME", "Other"], "MODEL.ROI_KEYPOINT_HEAD.NAME"),
    (["MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE", "-1"], "MIN_KEYPOINTS_PER_IMAGE"),
])
def test_keypoint_config_errors_name_the_key(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(CONFIGS / "keypoints" / "scratch_gn_r50.yaml", overrides)


def test_keypoint_configs_resolve_as_the_paper():
    for init in ("scratch", "pretrained"):
        for schedule, max_iter, steps in (("2x", 180_000, (120_000, 160_000)), ("3x", 270_000, (210_000, 250_000))):
            cfg = load_config(CONFIGS / "keypoints" / f"{init}_gn_r50.yaml", ["SOLVER.SCHEDULE", schedule])
            m = cfg.MODEL
            assert (m.KEYPOINT_ON, m.MASK_ON, m.ROI_HEADS.NUM_CLASSES) == (True, False, 1)
            assert (cfg.SOLVER.MAX_ITER, tuple(cfg.SOLVER.STEPS)) == (max_iter, steps)
            assert tuple(cfg.DATASETS.TRAIN) == ("keypoints_coco_2017_train",)
            assert (m.RESNETS.NORM, m.FPN.NORM, m.ROI_BOX_HEAD.NORM) == ("GN", "GN", "GN")
            assert (m.WEIGHTS == "") == (init == "scratch")
    ok = load_config(CONFIGS / "keypoints" / "scratch_gn_r50.yaml",
                     ["MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS", "3", "TEST.KEYPOINT_OKS_SIGMAS", "[0.1, 0.2, 0.3]"])
    assert list(ok.TEST.KEYPOINT_OKS_SIGMAS) == [0.1, 0.2, 0.3]


def test_evaluator_refuses_outputs_without_keypoints(kp_gt_json):
    outputs = _outputs(_kp_gt(), 0.0, 0)
    ev = COCOEvaluator(kp_gt_json, backend="hotcoco", tasks=("bbox", "keypoints"))
    no_kp = {k: v for k, v in outputs[1].items() if k != "keypoints"}
    with pytest.raises(ValueError, match="image 1: keypoint evaluation requested but the output has no keypoints"):
        ev.process([1], [no_kp])
    gt = load_coco_gt(kp_gt_json, "pycocotools")
    res = evaluate_coco_results(gt, [], "keypoints", "pycocotools")
    assert res.stats[0] == 0.0 and res.metrics["AP"] == 0.0 and len(res.stats) == 10


# --------------------------------------------------------------------------------------------------
# sweep, paper numbers, curves and table
# --------------------------------------------------------------------------------------------------
def test_keypoint_sweep_dry_run_gpu_hours():
    sweep = load_sweep(str(ROOT / "launch" / "sweeps" / "keypoints.yaml"), root="/tmp/sweeps")
    runs = {r.name: r for r in sweep.runs}
    assert sorted(runs) == ["pretrained_2x_s0", "pretrained_3x_s0", "scratch_2x_s0", "scratch_3x_s0"]
    assert runs["scratch_3x_s0"].max_iter == 270_000 and runs["pretrained_2x_s0"].max_iter == 180_000
    assert runs["scratch_3x_s0"].gpu_hours(sweep.resources) == pytest.approx(270_000 * 0.32 * 8 / 3600)
    plan = plan_table(sweep)
    assert "branch of scratch_3x_s0 at 120000" in plan and "660000 iterations, ~469 GPU-hours" in plan


def test_paper_keypoint_numbers():
    assert lookup(50, "GN", "scratch", 2.0, dataset="coco_keypoints").keypoint_ap == 65.6
    assert lookup(50, "GN", "pretrained", 2.0, dataset="coco_keypoints").keypoint_ap == 65.5
    assert lookup(50, "GN", "scratch", 3.0, dataset="coco_keypoints") is None  # only plotted in Figure 6
    assert lookup(50, "GN", "scratch", 2.0).box_ap == 36.8  # boxes (Table 1) are not keypoint numbers


def _keypoint_run(root, init, evals):
    d = root / init
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(load_config(CONFIGS / "keypoints" / f"{init}_gn_r50.yaml", ["SEED", "0"]).dump())
    lines = [{"iteration": it, "bbox/AP": ap - 10, "bbox/AP50": ap, "keypoints/AP": ap, "keypoints/AP50": ap + 20,
              "keypoints/AP75": ap + 5} for it, ap in evals.items()]
    (d / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_keypoint_runs_in_curves_and_table(tmp_path):
    _keypoint_run(tmp_path / "runs", "scratch", {90000: 50.0, 180000: 65.0})
    _keypoint_run(tmp_path / "runs", "pretrained", {90000: 60.0, 180000: 66.0})
    runs = find_runs([str(tmp_path / "runs")])
    rows = {r["init"]: r for r in build_table(runs)}
    assert (rows["scratch"]["kp_AP"], rows["scratch"]["kp_AP_best"], rows["scratch"]["kp_AP50"]) == (65.0, 65.0, 85.0)
    assert (rows["scratch"]["paper_kp_AP"], rows["scratch"]["delta_kp"]) == (65.6, -0.6)
    assert (rows["pretrained"]["paper_kp_AP"], rows["pretrained"]["delta_kp"]) == (65.5, 0.5)
    assert rows["scratch"]["paper_source"] == "Figure 6" and rows["scratch"].get("paper_box_AP") is None
    paths = plot_curves(runs, str(tmp_path / "kp"))
    with open(paths["csv"]) as f:
        csv_rows = list(csv.DictReader(f))
    assert {float(r["keypoint_ap_mean"]) for r in csv_rows if r["iteration"] == "180000"} == {65.0, 66.0}
    assert os.path.getsize(paths["png"]) > 0


# --------------------------------------------------------------------------------------------------
# a tiny run on the generated stick figures: trains, evaluates, plots
# --------------------------------------------------------------------------------------------------
TINY_RUN = ["SOLVER.MAX_ITER", "50", "SOLVER.STEPS", "(45, 48)", "SOLVER.WARMUP_ITERS", "10", "TEST.EVAL_PERIOD", "25",
            "SOLVER.CHECKPOINT_PERIOD", "50", "TEST.DETECTIONS_PER_IMAGE", "20", "SEED", "1"]


@pytest.mark.slow
def test_tiny_keypoint_run_trains_evaluates_and_plots(keypoint_sets, tmp_path):
    """configs/keypoints/scratch_gn_r18_tiny.yaml for 50 iterations at 4 images/batch: keypoint AP on
    synthetic_keypoints_val at 25 and 50 iterations (measured 2.1 -> 32.2; box AP 11.1 -> 14.7), loss_keypoint
    falling from ~log(56^2), the curves and table drawn from the run directory. 40-170 s on 2 busy CPU cores."""
    out = tmp_path / "run"
    main_worker(load_run_config(str(CONFIGS / "keypoints" / "scratch_gn_r18_tiny.yaml"),
                                TINY_RUN + ["OUTPUT_DIR", str(out)]))
    metrics = read_metrics(str(out / "metrics.jsonl"))
    evals = [m for m in metrics if "keypoints/AP" in m]
    assert [m["iteration"] for m in evals] == [25, 50]
    first, last = evals[0]["keypoints/AP"], evals[-1]["keypoints/AP"]
    assert last > 15.0 and last > first + 10.0, (first, last)
    assert "bbox/AP" in evals[-1] and "segm/AP" not in evals[-1]
    losses = [m["loss_keypoint"] for m in metrics if "loss_keypoint" in m]
    assert losses[-1] < losses[0] - 1.0  # from ~log(56^2) = 8.05
    runs = find_runs([str(out)])
    paths = plot_curves(runs, str(tmp_path / "curves"))
    with open(paths["csv"]) as f:
        ap = {int(r["iteration"]): float(r["keypoint_ap_mean"]) for r in csv.DictReader(f)}
    assert ap == {25: pytest.approx(first, abs=1e-3), 50: pytest.approx(last, abs=1e-3)}
    [row] = build_table(runs)
    assert row["kp_AP"] == pytest.approx(last) and "paper_kp_AP" not in row  # not COCO: no paper number
