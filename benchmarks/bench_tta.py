"""Cost of test-time augmentation (rethink/modeling/tta.py) per image against plain inference, in one run.

    python benchmarks/bench_tta.py                          # detectron2's golden cascade model, its 8 val images
    python benchmarks/bench_tta.py --synthetic --images 4   # random-init cascade R18 on synthetic images
    python benchmarks/bench_tta.py --device cuda --threads 8

Model and images: detectron2's golden Cascade Mask R-CNN R18-FPN GN (../shared/reference/detectron2-golden/
enhanced/cascade: its config.yaml with TEST.AUG 192/256/320 + flips, max 480, and model_final.pkl) on its val
images as the test loader gives them (short side 256, max 320); without ../shared (or with --synthetic) the
same config built with random weights on random uint8 images of the loader's sizes. Prints, per path, the
median and mean seconds per image over the images (after one warm-up image), the augmented inputs per image,
the TTA / plain ratio, and the part of each spent in the RoI box heads (``roi_heads.predict_boxes``: pooling and
the box head(s) on every proposal; with cascade's three stages the largest part on a CPU).
"""
import argparse
import logging
import os
import statistics
import time
from pathlib import Path

import torch

from rethink.config import load_config
from rethink.data.build import build_test_loader
from rethink.modeling import build_model
from rethink.modeling.tta import GeneralizedRCNNWithTTA, tta_augmentations
from rethink.weights import load_weights

log = logging.getLogger("bench_tta")
ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT.parent / "shared" / "reference" / "detectron2-golden"
CASCADE = GOLDEN / "enhanced" / "cascade"
# the loader sizes of the golden val images (short side 256, long side <= 320), for the synthetic set
SYNTHETIC_SIZES = [(256, 275), (259, 256), (279, 256), (320, 251), (256, 290), (277, 256), (317, 256), (256, 265)]


def golden_samples(cfg, limit: int):
    os.environ.setdefault("DETECTRON2_DATASETS", str(GOLDEN))
    out = []
    for [s] in build_test_loader(cfg, "coco_2017_val"):
        out.append((s["image"], (s["height"], s["width"])))
    return out[:limit]


def synthetic_samples(limit: int):
    g = torch.Generator().manual_seed(0)
    sizes = (SYNTHETIC_SIZES * (limit // len(SYNTHETIC_SIZES) + 1))[:limit]
    return [(torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8), (h, w)) for h, w in sizes]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, samples, device):
    """Seconds per image (after one warm-up image)."""
    fn(*samples[0])
    sync(device)
    times = []
    for image, hw in samples:
        t0 = time.perf_counter()
        fn(image, hw)
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


class BoxHeadsTimer:
    """Accumulates the time spent in ``heads.predict_boxes`` while active."""

    def __init__(self, heads, device):
        self.heads, self.device, self.total = heads, device, 0.0
        self._orig = heads.predict_boxes

    def __enter__(self):
        def wrapped(*a, **k):
            sync(self.device)
            t0 = time.perf_counter()
            out = self._orig(*a, **k)
            sync(self.device)
            self.total += time.perf_counter() - t0
            return out
        self.heads.predict_boxes = wrapped
        return self

    def __exit__(self, *exc):
        del self.heads.predict_boxes


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--synthetic", action="store_true", help="random weights and images even when ../shared exists")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    golden = (CASCADE / "model_final.pkl").is_file() and not args.synthetic
    if (CASCADE / "config.yaml").is_file():
        cfg = load_config(CASCADE / "config.yaml", ["MODEL.DEVICE", args.device])
    else:  # the same model from the project's keys: cascade R18-FPN GN, 80 classes, the fixture's test sizes
        cfg = load_config(ROOT / "configs" / "scratch_gn_r50.yaml", [
            "MODEL.DEVICE", args.device, "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
            "MODEL.FPN.OUT_CHANNELS", "128", "MODEL.ROI_BOX_HEAD.CONV_DIM", "128", "MODEL.ROI_BOX_HEAD.FC_DIM", "128",
            "MODEL.ROI_MASK_HEAD.CONV_DIM", "128", "MODEL.ROI_HEADS.NAME", "CascadeROIHeads",
            "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", "True", "INPUT.MIN_SIZE_TEST", "256",
            "INPUT.MAX_SIZE_TEST", "320", "TEST.AUG.ENABLED", "True", "TEST.AUG.MIN_SIZES", "(192, 256, 320)",
            "TEST.AUG.MAX_SIZE", "480"])
    torch.manual_seed(0)
    model = build_model(cfg)
    if golden:
        load_weights(model, str(CASCADE / "model_final.pkl"))
    model = model.to(device).eval()
    samples = golden_samples(cfg, args.images) if golden else synthetic_samples(args.images)
    samples = [(img.to(device), hw) for img, hw in samples]
    tta = GeneralizedRCNNWithTTA(cfg, model).eval()

    def plain(image, hw):
        with torch.no_grad():
            return model([image], output_sizes=[hw])

    def augmented(image, hw):
        return tta([image], output_sizes=[hw])

    with BoxHeadsTimer(model.roi_heads, device) as plain_heads:
        plain_t = timed(plain, samples, device)
    with BoxHeadsTimer(model.roi_heads, device) as tta_heads:
        tta_t = timed(augmented, samples, device)
    calls = len(samples) + 1  # with the warm-up image
    n_inputs = statistics.mean(len(tta_augmentations(tuple(img.shape[-2:]), cfg.TEST.AUG.MIN_SIZES,
                                                     cfg.TEST.AUG.MAX_SIZE, cfg.TEST.AUG.FLIP)) for img, _ in samples)
    what = "detectron2's golden cascade model, val images" if golden else "random-init cascade R18, synthetic images"
    log.info("%s: %d images, %s, %d threads; TEST.AUG.MIN_SIZES %s MAX_SIZE %d FLIP %s (%.0f inputs per image)",
             what, len(samples), device, args.threads, tuple(cfg.TEST.AUG.MIN_SIZES), cfg.TEST.AUG.MAX_SIZE,
             cfg.TEST.AUG.FLIP, n_inputs)
    log.info("| path | median s/image | mean s/image | ratio (mean) | of which RoI box heads (s/image) |")
    log.info("|---|---|---|---|---|")
    log.info("| plain | %.3f | %.3f | 1.00 | %.3f |", statistics.median(plain_t), statistics.mean(plain_t),
             plain_heads.total / calls)
    log.info("| TTA | %.3f | %.3f | %.2f | %.3f |", statistics.median(tta_t), statistics.mean(tta_t),
             statistics.mean(tta_t) / statistics.mean(plain_t), tta_heads.total / calls)


if __name__ == "__main__":
    main()
