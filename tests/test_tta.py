"""Test-time augmentation (rethink/modeling/tta.py, detectron2's GeneralizedRCNNWithTTA).

Without the fixture: the augmented inputs and their order, the box transforms (flip x -> W - x), the
batches the inputs run in (detectron2's: consecutive groups of `batch_size`, padded together), the
cached features giving what recomputing them gives, and one identity augmentation reproducing the
plain model exactly; the final evaluation of a tiny training adding "bbox_TTA/AP" to metrics.jsonl.

With detectron2's golden cascade fixture (../shared/reference/detectron2-golden/enhanced/cascade, skipped
when absent): the TTA detections of the 8 val images equal detectron2's (classes, boxes within 1e-3 px,
scores within 1e-4 relative, pasted masks IoU >= 0.99), the TTA box/mask AP within 0.1 of detectron2's,
and tools/train.py --eval-only writing plain and TTA AP into eval_results.json.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from rethink.config import load_config
from rethink.data import get_dataset_spec
from rethink.data.build import build_test_loader
from rethink.engine import main_worker, read_metrics
from rethink.engine.defaults import load_run_config
from rethink.evaluation import COCOEvaluator
from rethink.modeling import build_model
from rethink.modeling.tta import (
    Augmentation,
    GeneralizedRCNNWithTTA,
    boxes_to_augmented,
    boxes_to_original,
    resize_image,
    tta_augmentations,
)

from .conftest import CONFIGS, GOLDEN, ROOT, tiny_cfg
from .golden import load_golden_model, mask_iou

CASCADE = GOLDEN / "enhanced" / "cascade"
EXPECTED = CASCADE / "expected"
needs_golden = pytest.mark.skipif(not (CASCADE / "model_final.pkl").is_file(),
                                  reason=f"detectron2's golden cascade fixture is absent ({CASCADE})")


# --------------------------------------------------------------------------------------------------------------------
# the wrapper's parts, no fixture needed
# --------------------------------------------------------------------------------------------------------------------
def test_augmentations_in_detectron2_order_and_sizes():
    # the golden val image 20910 as the loader gives it (256 x 275), TEST.AUG of the cascade fixture
    augs = tta_augmentations((256, 275), (192, 256, 320), 480, flip=True)
    assert augs == [Augmentation((192, 206), False), Augmentation((192, 206), True),
                    Augmentation((256, 275), False), Augmentation((256, 275), True),
                    Augmentation((320, 344), False), Augmentation((320, 344), True)]
    # the long side capped at MAX_SIZE, no flips
    assert tta_augmentations((100, 400), (200, 300), 600, flip=False) == [Augmentation((150, 600), False),
                                                                          Augmentation((150, 600), False)]


def test_box_transforms_flip_and_scale():
    aug = Augmentation((200, 100), True)  # loader 100 x 50 -> 200 x 100, flipped; original 300 x 150
    box = torch.tensor([[10.0, 20.0, 30.0, 60.0]])  # in the original image
    # original -> loader (x 1/3) -> augmented (x 2) -> flipped: x -> 100 - x
    expected = torch.tensor([[100 - 20.0, 40 / 3, 100 - 20 / 3, 40.0]])
    on_aug = boxes_to_augmented(box, aug, (100, 50), (300, 150))
    torch.testing.assert_close(on_aug, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(boxes_to_original(on_aug, aug, (100, 50), (300, 150)), box, rtol=0, atol=1e-5)
    # no flip, loader = original: only the resize
    plain = boxes_to_original(torch.tensor([[4.0, 6.0, 8.0, 10.0]]), Augmentation((200, 100), False), (100, 50),
                              (100, 50))
    assert plain.tolist() == [[2.0, 3.0, 4.0, 5.0]]


def test_resize_image_uint8_with_pil_and_float_on_its_device():
    img = torch.arange(3 * 4 * 6, dtype=torch.uint8).reshape(3, 4, 6) * 3
    assert resize_image(img, (4, 6)) is img
    out = resize_image(img, (8, 12))
    assert out.dtype == torch.uint8 and out.shape == (3, 8, 12)
    from PIL import Image
    ref = np.asarray(Image.fromarray(img.permute(1, 2, 0).numpy()).resize((12, 8), Image.BILINEAR))
    assert np.array_equal(out.permute(1, 2, 0).numpy(), ref)
    f = resize_image(img.float(), (8, 12))
    assert f.dtype == torch.float32 and f.shape == (3, 8, 12)


@pytest.fixture(scope="module")
def tiny():
    """A random-init tiny Mask R-CNN (3 classes: scores near 1/4, so plenty of detections) with its mask
    logits sharpened, so that pasted masks are decided far from the 0.5 threshold."""
    torch.manual_seed(0)
    cfg = tiny_cfg("TEST.AUG.MIN_SIZES", "(64, 96, 128)", "TEST.AUG.MAX_SIZE", "1000", "TEST.AUG.FLIP", "True",
                   "TEST.DETECTIONS_PER_IMAGE", "30")
    model = build_model(cfg).eval()
    with torch.no_grad():
        model.roi_heads.mask_predictor.mask_fcn_logits.weight.normal_(std=1.0)  # detectron2's init: std 0.001
    image = (torch.rand(3, 100, 130) * 255).to(torch.uint8)
    return cfg, model, image


def test_batches_are_detectron2s_and_cached_features_equal_recomputed(tiny):
    cfg, model, image = tiny
    shapes = []
    hook = model.backbone.register_forward_pre_hook(lambda m, args: shapes.append(tuple(args[0].shape)))
    try:
        out = GeneralizedRCNNWithTTA(cfg, model).eval()([image], output_sizes=[(150, 195)])[0]
        # 64 x 83, flip, 96 x 125 | 96 x 125 flipped, 128 x 166, flip: each batch padded to a multiple of 32
        assert shapes == [(3, 3, 96, 128), (3, 3, 128, 192)]  # the mask pass reuses these features
        shapes.clear()
        again = GeneralizedRCNNWithTTA(cfg, model, cache_features=False).eval()([image], output_sizes=[(150, 195)])[0]
        assert shapes == [(3, 3, 96, 128), (3, 3, 128, 192)] * 2
        shapes.clear()
        GeneralizedRCNNWithTTA(cfg, model, batch_size=4).eval()([image], output_sizes=[(150, 195)])
        assert shapes == [(4, 3, 96, 128), (2, 3, 128, 192)]
    finally:
        hook.remove()
    assert len(out["boxes"]) > 10 and set(out) == {"boxes", "scores", "labels", "masks"}
    assert out["masks"].dtype == torch.bool and out["masks"].shape[1:] == (150, 195)
    assert float(out["boxes"][:, 2].max()) <= 195 and float(out["boxes"][:, 3].max()) <= 150
    assert bool((out["scores"][:-1] >= out["scores"][1:]).all()) and int(out["labels"].min()) >= 1
    for k in out:
        assert torch.equal(out[k], again[k]), k


def test_one_identity_augmentation_reproduces_the_plain_model(tiny):
    cfg, model, image = tiny
    cfg = cfg.clone()
    cfg.merge_from_list(["TEST.AUG.MIN_SIZES", "(100,)", "TEST.AUG.FLIP", "False"])
    with torch.no_grad():
        plain = model([image], output_sizes=[(200, 260)])[0]  # original = 2 x the loader image: exact scaling
    tta = GeneralizedRCNNWithTTA(cfg, model).eval()([image], output_sizes=[(200, 260)])[0]
    assert len(plain["boxes"]) > 10 and plain["masks"].any()
    for k in ("boxes", "scores", "labels", "masks"):
        assert torch.equal(tta[k], plain[k]), k


def test_no_detection_in_any_input_gives_empty_outputs(tiny):
    cfg, model, image = tiny
    old = model.roi_heads.score_thresh
    model.roi_heads.score_thresh = 1.0  # softmax scores never exceed it
    try:
        out = GeneralizedRCNNWithTTA(cfg, model).eval()([image], output_sizes=[(150, 195)])[0]
    finally:
        model.roi_heads.score_thresh = old
    assert out["boxes"].shape == (0, 4) and out["scores"].shape == (0,) and out["labels"].shape == (0,)
    assert out["masks"].shape == (0, 150, 195) and out["masks"].dtype == torch.bool


def test_tta_refuses_training_mode_and_keypoints(tiny):
    cfg, model, image = tiny
    wrapper = GeneralizedRCNNWithTTA(cfg, model.train())
    model.eval()
    with pytest.raises(RuntimeError, match="inference"):
        wrapper([image])
    bad = cfg.clone()
    bad.defrost()
    bad.MODEL.KEYPOINT_ON = True
    with pytest.raises(ValueError, match="KEYPOINT_ON"):
        GeneralizedRCNNWithTTA(bad, model)


@pytest.mark.usefixtures("isolated_cache")
def test_final_evaluation_of_a_training_adds_tta_metrics(tmp_path):
    """TEST.AUG.ENABLED: the evaluation at MAX_ITER adds "bbox_TTA/AP"/"segm_TTA/AP" beside the plain AP
    in metrics.jsonl; the periodic one before it does not (as detectron2's train_net.py)."""
    cfg = load_run_config(str(CONFIGS / "demo" / "scratch_gn_r18_tiny.yaml"), [
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.REFERENCE_IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2",
        "SOLVER.STEPS", "(1,)", "SOLVER.WARMUP_ITERS", "1", "SOLVER.CHECKPOINT_PERIOD", "100",
        "TEST.EVAL_PERIOD", "1", "TEST.AUG.ENABLED", "True", "TEST.AUG.MIN_SIZES", "(96, 128)",
        "TEST.AUG.MAX_SIZE", "256", "MODEL.RPN.POST_NMS_TOPK_TEST", "50", "TEST.DETECTIONS_PER_IMAGE", "10",
        "DATASETS.TEST", "('synthetic_coco_val_4_s0',)", "OUTPUT_DIR", str(tmp_path / "run")])  # 4 val images
    main_worker(cfg)
    evals = {m["iteration"]: m for m in read_metrics(str(tmp_path / "run" / "metrics.jsonl")) if "bbox/AP" in m}
    assert sorted(evals) == [1, 2]
    assert not any("TTA" in k for k in evals[1])
    assert {"bbox_TTA/AP", "bbox_TTA/AP50", "segm_TTA/AP"} <= set(evals[2])
    assert 0 <= evals[2]["bbox_TTA/AP"] <= 100 and 0 <= evals[2]["segm_TTA/AP"] <= 100


# --------------------------------------------------------------------------------------------------------------------
# detectron2's golden cascade model: TTA as its tools/train_net.py test_with_TTA runs it
# --------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def golden_cfg(golden_env):
    return load_config(CASCADE / "config.yaml", ["MODEL.WEIGHTS", str(CASCADE / "model_final.pkl")])


@pytest.fixture(scope="module")
def tta_predictions(golden_cfg):
    """{image_id: (loader sample, TTA output)} for the 8 val images, computed once."""
    tta = GeneralizedRCNNWithTTA(golden_cfg, load_golden_model(golden_cfg, 160)).eval()
    out = {}
    for [s] in build_test_loader(golden_cfg, "coco_2017_val"):
        out[s["image_id"]] = (s, tta([s["image"]], output_sizes=[(s["height"], s["width"])])[0])
    return out


@needs_golden
@pytest.mark.slow
def test_tta_predictions_match_detectron2(tta_predictions):
    ref = np.load(EXPECTED / "tta_predictions.npz")
    loader_hw = json.loads((EXPECTED / "tta_coco_eval.json").read_text())["loader_hw"]
    assert sorted(tta_predictions) == sorted(int(i) for i in ref["image_ids"])
    ious, counts = [], []
    for image_id, (sample, out) in sorted(tta_predictions.items()):
        p = f"img{image_id}_"
        assert list(sample["image"].shape[-2:]) == loader_hw[str(image_id)]
        assert torch.equal(out["labels"] - 1, torch.from_numpy(ref[p + "classes"])), image_id
        assert float((out["boxes"] - torch.from_numpy(ref[p + "boxes_xyxy"])).abs().max()) <= 1e-3, image_id
        theirs = torch.from_numpy(ref[p + "scores"]).double()
        assert float((out["scores"].double() - theirs).abs().max()) <= 1e-4 * float(theirs.abs().max()), image_id
        masks = out["masks"].numpy()
        assert masks.dtype == bool and masks.shape == ref[p + "masks"].shape, image_id
        ious += [mask_iou(a, b) for a, b in zip(masks, ref[p + "masks"])]
        counts.append(len(out["labels"]))
    assert counts == [13, 49, 91, 16, 43, 36, 41, 63]  # by image id, as the fixture's README lists them
    assert min(ious) >= 0.99, f"min mask IoU {min(ious):.4f}"


@needs_golden
@pytest.mark.slow
def test_tta_ap_matches_detectron2(golden_cfg, tta_predictions):
    evaluator = COCOEvaluator(get_dataset_spec("coco_2017_val").json_file, backend=golden_cfg.TEST.EVALUATOR,
                              tasks=("bbox", "segm"))
    evaluator.reset()
    for image_id, (_, out) in tta_predictions.items():
        evaluator.process([image_id], [out])
    ours = evaluator.evaluate()
    d2 = json.loads((EXPECTED / "tta_coco_eval.json").read_text())["COCOEvaluator_use_fast_impl_False_pycocotools"]
    assert d2["bbox"]["AP"] == pytest.approx(27.132, abs=1e-3) and d2["segm"]["AP"] == pytest.approx(35.303, abs=1e-3)
    for task in ("bbox", "segm"):
        for metric, theirs in d2[task].items():
            if theirs is not None:
                assert abs(ours[task][metric] - theirs) <= 0.1, (task, metric, ours[task][metric], theirs)


@needs_golden
@pytest.mark.slow
def test_train_py_eval_only_writes_plain_and_tta_ap(golden_env, tmp_path):
    """detectron2's cascade config.yaml (TEST.AUG.ENABLED) and model_final.pkl through tools/train.py
    --eval-only: plain and TTA AP ("bbox_TTA/AP", detectron2's suffix) within 0.1 of detectron2's."""
    out = tmp_path / "eval"
    cmd = [sys.executable, str(ROOT / "tools" / "train.py"), "--config", str(CASCADE / "config.yaml"), "--eval-only",
           "MODEL.WEIGHTS", str(CASCADE / "model_final.pkl"), "OUTPUT_DIR", str(out)]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=1200, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "eval_results.json").read_text())
    compared = 0
    for suffix, name in (("", "coco_eval.json"), ("_TTA", "tta_coco_eval.json")):
        d2 = json.loads((EXPECTED / name).read_text())["COCOEvaluator_use_fast_impl_False_pycocotools"]
        for task in ("bbox", "segm"):
            for metric, theirs in d2[task].items():
                key = f"{task}{suffix}/{metric}"
                if theirs is None:  # undefined in detectron2: absent here
                    assert key not in results, key
                    continue
                compared += 1
                assert abs(results[key] - theirs) <= 0.1, (key, results[key], theirs)
    assert compared == 32
    assert results["bbox/AP"] == pytest.approx(24.085, abs=0.1) and results["segm_TTA/AP"] == pytest.approx(35.303,
                                                                                                          abs=0.1)
