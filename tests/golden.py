"""Comparisons the parity tests make against detectron2's golden outputs (tests/conftest.py: GOLDEN, golden_env)."""
import numpy as np
import torch

from rethink.modeling import build_model
from rethink.weights import load_weights


def assert_close(ours, theirs, rel=1e-4, what=""):
    """Every element within `rel` of the largest magnitude of the reference."""
    ours, theirs = torch.as_tensor(ours, dtype=torch.float64), torch.as_tensor(theirs, dtype=torch.float64)
    assert ours.shape == theirs.shape, f"{what}: shape {tuple(ours.shape)} vs detectron2's {tuple(theirs.shape)}"
    scale = max(float(theirs.abs().max()), 1e-12) if theirs.numel() else 1.0
    err = float((ours - theirs).abs().max()) if theirs.numel() else 0.0
    assert err <= rel * scale, f"{what}: max abs diff {err:.3g} > {rel} x {scale:.3g}"


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def load_golden_model(cfg, num_tensors: int):
    """The model `cfg` builds with detectron2's MODEL.WEIGHTS loaded: every one of its `num_tensors` tensors
    matched, nothing missing, unexpected or of another shape; in eval mode."""
    torch.set_num_threads(2)
    model = build_model(cfg)
    report = load_weights(model, cfg.MODEL.WEIGHTS)
    assert not report.missing and not report.unexpected and not report.mismatched
    assert len(report.matched) == num_tensors
    return model.eval()
