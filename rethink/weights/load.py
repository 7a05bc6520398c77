"""Loading MODEL.WEIGHTS into a model: name and shape matching, norm-kind checks, a report."""
import collections
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn as nn
from torchvision.ops import FrozenBatchNorm2d

from ..config import get_cfg
from .convert import BODY, convert_names
from .errors import NormMismatchError, WeightsError
from .paths import resolve_weights_path, sidecar_path
from .reading import Weights, read_weights

logger = logging.getLogger(__name__)


def _find_body(model: nn.Module) -> Tuple[Optional[str], Optional[nn.Module]]:
    """The ResNet body (torchvision layout: conv1, bn1, layer1..4) and its prefix in the state dict."""
    for name, module in model.named_modules():
        if all(hasattr(module, a) for a in ("conv1", "bn1", "layer1", "layer4")) and \
                isinstance(module.layer1, nn.Sequential):
            return (name + "." if name else ""), module
    return None, None


def model_stride_in_1x1(model: nn.Module) -> Optional[bool]:
    """Whether the model's bottleneck blocks stride in the 1x1 conv (MSRA) rather than the 3x3
    (None without bottleneck blocks)."""
    _, body = _find_body(model)
    if body is None or not len(getattr(body, "layer2", [])):
        return None
    block = body.layer2[0]
    if not hasattr(block, "conv3"):
        return None
    return block.conv1.stride[0] > 1


_BN_TYPES = (nn.modules.batchnorm._BatchNorm, FrozenBatchNorm2d)


def _norm_config_key(module_path: str, body_prefix: Optional[str]) -> str:
    if body_prefix is not None and module_path.startswith(body_prefix):
        return "MODEL.RESNETS.NORM"
    for prefix, key in (("backbone.fpn", "MODEL.FPN.NORM"), ("roi_heads.box_head", "MODEL.ROI_BOX_HEAD.NORM"),
                        ("roi_heads.mask_head", "MODEL.ROI_MASK_HEAD.NORM")):
        if module_path.startswith(prefix):
            return key
    return "the NORM of that part"


def _check_norms(model: nn.Module, tensors: Dict[str, torch.Tensor], sources: Dict[str, str], path: str,
                 body_prefix: Optional[str]) -> None:
    """Refuse BN statistics-carrying weights for GN layers, GN weights for BN layers, and norm
    weights for layers that have no norm: the shapes agree, the meaning does not."""
    modules = dict(model.named_modules())
    problems = []
    seen = set()
    for key in tensors:
        mod_path = key.rpartition(".")[0]
        if mod_path in seen or mod_path not in modules:
            continue
        seen.add(mod_path)
        module = modules[mod_path]
        has_stats = f"{mod_path}.running_mean" in tensors or f"{mod_path}.running_var" in tensors
        has_affine = f"{mod_path}.weight" in tensors or f"{mod_path}.bias" in tensors
        if isinstance(module, nn.GroupNorm) and has_stats:
            problems.append((key, "BatchNorm", "GroupNorm", "FrozenBN, BN or SyncBN"))
        elif isinstance(module, _BN_TYPES) and has_affine and not has_stats:
            problems.append((key, "GroupNorm", type(module).__name__, "GN"))
        elif isinstance(module, nn.Identity) and (has_affine or has_stats):
            problems.append((key, "BatchNorm" if has_stats else "GroupNorm", "no-norm (Identity)",
                             "FrozenBN, BN or SyncBN" if has_stats else "GN"))
    if not problems:
        return
    key, src, dst, want = problems[0]
    cfg_key = _norm_config_key(key, body_prefix)
    example_cfg = "configs/pretrained_gn_r50.yaml" if want == "GN" else "configs/pretrained_syncbn_r50.yaml"
    listing = ", ".join(f"{sources.get(p[0], p[0])} -> {p[0]}" for p in problems[:5])
    more = f" (and {len(problems) - 5} more layers)" if len(problems) > 5 else ""
    raise NormMismatchError(
        f"{path}: {src} weights for {dst} layers: {listing}{more}. The shapes agree but the meaning does not, "
        f"so nothing was loaded. Use a config whose {cfg_key} is {want} for these weights (as {example_cfg} does), "
        "or weights trained with the model's norm"
    )


@dataclass
class LoadReport:
    """What load_weights did. Names are the model's state-dict keys unless said otherwise."""

    path: str
    format: str
    matched: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)  # model tensors left as they were (num_batches_tracked not listed)
    unexpected: List[str] = field(default_factory=list)  # file keys (file names) not used
    mismatched: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]] = field(default_factory=list)  # (key, file, model)
    dropped: List[str] = field(default_factory=list)  # file keys left out on purpose (classifier, junk)
    sources: Dict[str, str] = field(default_factory=dict)  # matched model key -> file key
    categories: Optional[List[dict]] = None  # what the model was trained on, when the file keeps it (our checkpoints)


def group_keys(keys: Iterable[str]) -> List[str]:
    """["a.b.weight", "a.b.bias", "c.x"] -> ["a.b.{bias, weight}", "c.x"] (one entry per module)."""
    groups: Dict[str, List[str]] = collections.OrderedDict()
    for k in sorted(keys):
        mod, _, param = k.rpartition(".")
        groups.setdefault(mod, []).append(param)
    out = []
    for mod, params in groups.items():
        if not mod:
            out.extend(params)
        elif len(params) == 1:
            out.append(f"{mod}.{params[0]}")
        else:
            out.append(f"{mod}.{{{', '.join(params)}}}")
    return out


def _count_by_prefix(keys: Iterable[str], depth: int = 2) -> str:
    counts: Dict[str, int] = collections.Counter(".".join(k.split(".")[:depth]) for k in keys)
    return ", ".join(f"{p}: {n}" for p, n in sorted(counts.items()))


def _log_list(level: int, header: str, items: List[str], limit: int = 200) -> None:
    if not items:
        return
    body = "\n  ".join(items[:limit])
    more = f"\n  ... and {len(items) - limit} more" if len(items) > limit else ""
    logger.log(level, "%s\n  %s%s", header, body, more)


def _stride_hints(model: nn.Module, weights: Weights) -> None:
    stride_in_1x1 = model_stride_in_1x1(model)
    if stride_in_1x1 is None:
        return
    keys = weights.tensors
    if weights.format == "caffe2" and any("_bn_s" in k for k in keys) and not stride_in_1x1:
        logger.warning(
            "%s: Caffe2 BN weights (MSRA ResNet) were trained with the stride in the 1x1 conv, but the model "
            "strides in the 3x3 (MODEL.RESNETS.STRIDE_IN_1X1 False). Shapes cannot tell; set "
            "MODEL.RESNETS.STRIDE_IN_1X1 True for these weights", weights.path)
    elif weights.format == "caffe2" and any("_gn_s" in k for k in keys) and stride_in_1x1:
        logger.warning(
            "%s: FAIR's Caffe2 GN weights stride in the 3x3 conv, but the model strides in the 1x1 "
            "(MODEL.RESNETS.STRIDE_IN_1X1 True); set it False for these weights", weights.path)
    elif weights.format == "torchvision":
        meta = _pretrain_metadata(weights.path)
        if meta is not None:  # made by tools/pretrain_backbone.py: compare with what it recorded
            if bool(meta.get("stride_in_1x1")) != bool(stride_in_1x1):
                logger.warning("%s: pre-trained with STRIDE_IN_1X1 %s but the model has %s", weights.path,
                               meta.get("stride_in_1x1"), stride_in_1x1)
            mean = getattr(getattr(model, "transform", None), "image_mean", None)
            recorded = (meta.get("input") or {}).get("pixel_mean")
            if mean is not None and recorded is not None and [round(float(m), 3) for m in mean] != \
                    [round(float(m), 3) for m in recorded]:
                logger.warning("%s: pre-trained with PIXEL_MEAN %s, the model uses %s", weights.path, recorded, mean)
        else:
            if stride_in_1x1:
                logger.warning(
                    "%s: torchvision ResNets stride in the 3x3 conv, but the model strides in the 1x1 "
                    "(MODEL.RESNETS.STRIDE_IN_1X1 True); set it False for these weights", weights.path)
            logger.info("%s: torchvision ImageNet weights expect RGB input normalised with mean "
                        "[123.675, 116.28, 103.53] and std [58.395, 57.12, 57.375] (INPUT.FORMAT RGB, "
                        "MODEL.PIXEL_MEAN, MODEL.PIXEL_STD)", weights.path)


def _pretrain_metadata(path: str) -> Optional[dict]:
    """The sidecar JSON that tools/pretrain_backbone.py writes next to its checkpoint, if any."""
    sidecar = sidecar_path(path)
    if not os.path.isfile(sidecar):
        return None
    try:
        with open(sidecar) as f:
            return json.load(f)
    except (OSError, ValueError):
        logger.warning("%s: unreadable metadata next to the weights; ignoring it", sidecar)
        return None


def _check_backbone_coverage(state: Dict[str, torch.Tensor], to_copy: Dict[str, torch.Tensor], report: LoadReport,
                             body_prefix: Optional[str], path: str, fmt: str, min_match: float) -> None:
    """Refuse a file that fills less than `min_match` of the backbone body's tensors (by name and
    shape): e.g. an R18 file into an R50 model, which would otherwise train from a half-initialised
    backbone with only a warning."""
    if body_prefix is None:
        return
    # deformable convs' offset layers are not part of any classification network: they start at zero
    # (detectron2's init) whatever the file, so they do not count against the file
    body = [k for k in state if k.startswith(body_prefix) and not k.endswith(".num_batches_tracked")
            and ".conv2_offset." not in k]
    matched = sum(k in to_copy for k in body)
    if not body or matched >= min_match * len(body):
        return
    not_filled = [k for k in body if k not in to_copy]
    shapes = [f"{k}: file {tuple(a)} vs model {tuple(b)}" for k, a, b in report.mismatched
              if k.startswith(body_prefix)]
    missing = [k for k in not_filled if k not in {m[0] for m in report.mismatched}]
    examples = [f"different shape: {'; '.join(shapes[:3])}" if shapes else "",
                f"not in the file: {', '.join(group_keys(missing)[:4])}" if missing else "",
                f"file tensors the model does not have: {', '.join(group_keys(report.unexpected)[:4])}"
                if report.unexpected else ""]
    raise WeightsError(
        f"{path}: this {fmt} file fills {matched} of the model's {len(body)} backbone tensors "
        f"({matched / len(body):.0%}, less than MODEL.WEIGHTS_MIN_BACKBONE_MATCH = {min_match:g}), so nothing was "
        f"loaded; is it for another depth or architecture (MODEL.RESNETS.DEPTH, STEM_OUT_CHANNELS, "
        f"WIDTH_PER_GROUP)? " + "; ".join(e for e in examples if e) +
        ". To load a partial backbone on purpose, lower MODEL.WEIGHTS_MIN_BACKBONE_MATCH")


def load_weights(model: nn.Module, path: str, min_backbone_match: Optional[float] = None) -> LoadReport:
    """Load MODEL.WEIGHTS `path` (any form :func:`resolve_weights_path` takes, any format
    :func:`read_weights` reads) into `model` in place; returns a :class:`LoadReport`. Refused
    (:class:`WeightsError`, nothing loaded) when the file fills less than `min_backbone_match` of the
    backbone body's tensors (cfg.MODEL.WEIGHTS_MIN_BACKBONE_MATCH; None: that key's default)."""
    if min_backbone_match is None:
        min_backbone_match = get_cfg().MODEL.WEIGHTS_MIN_BACKBONE_MATCH
    resolved = resolve_weights_path(path)
    weights = read_weights(resolved)
    logger.info("Loading weights from %s (%s%s, %d tensors)", resolved, weights.format,
                f", as {path!r}" if path != resolved else "", len(weights.tensors))
    conv = convert_names(weights, model)
    body_prefix, _ = _find_body(model)
    if body_prefix is not None and body_prefix != BODY:
        conv.tensors = {(body_prefix + k[len(BODY):] if k.startswith(BODY) else k): v for k, v in conv.tensors.items()}
        conv.sources = {(body_prefix + k[len(BODY):] if k.startswith(BODY) else k): v for k, v in conv.sources.items()}
    for note in conv.notes:
        logger.info("%s", note)

    state = model.state_dict()
    _check_norms(model, conv.tensors, conv.sources, resolved, body_prefix)

    report = LoadReport(path=resolved, format=weights.format, categories=weights.categories)
    report.dropped = sorted(conv.dropped + weights.skipped)
    unexpected = list(conv.unmapped)
    to_copy = {}
    for key, value in conv.tensors.items():
        src = conv.sources.get(key, key)
        if key not in state:
            if key.endswith(".num_batches_tracked"):  # e.g. BN file into FrozenBN layers: bookkeeping only
                report.dropped.append(src)
            else:
                unexpected.append(src)
            continue
        target = state[key]
        if tuple(value.shape) != tuple(target.shape):
            report.mismatched.append((key, tuple(value.shape), tuple(target.shape)))
            continue
        to_copy[key] = value
        report.sources[key] = src
    report.unexpected = sorted(set(unexpected))
    report.dropped.sort()

    if not to_copy:
        file_keys = list(weights.tensors)[:8]
        model_keys = list(state)[:8]
        raise WeightsError(
            f"{resolved}: no tensor in this {weights.format}-named file matches the model "
            f"({len(weights.tensors)} file tensors, {len(state)} model tensors, {len(report.mismatched)} with the "
            f"right name but another shape). File keys: {file_keys}; model keys: {model_keys}"
        )
    _check_backbone_coverage(state, to_copy, report, body_prefix, resolved, weights.format, min_backbone_match)
    with torch.no_grad():
        for key, value in to_copy.items():
            state[key].copy_(value.to(dtype=state[key].dtype))
    report.matched = sorted(to_copy)
    report.missing = sorted(k for k in state if k not in to_copy and not k.endswith(".num_batches_tracked"))

    logger.info("Loaded %d of %d model tensors from %s (%s)", len(report.matched), len(state), resolved,
                _count_by_prefix(report.matched))
    _log_list(logging.DEBUG, "Matched:", group_keys(report.matched))
    if report.dropped:
        logger.info("Not used on purpose (ImageNet classifier, Caffe2 solver blobs, counters, non-arrays): %s",
                    ", ".join(report.dropped[:20]) + (" ..." if len(report.dropped) > 20 else ""))
    if report.mismatched:
        _log_list(logging.WARNING, f"Skipped {len(report.mismatched)} tensors whose shapes differ (file vs model):",
                  [f"{k}: {tuple(a)} vs {tuple(b)}" for k, a, b in report.mismatched])
    body_missing = [k for k in report.missing if body_prefix is not None and k.startswith(body_prefix)]
    if report.missing:
        level = logging.WARNING if body_missing else logging.INFO
        _log_list(level, f"Model tensors not in the file, left as initialised ({len(report.missing)}; "
                  f"{_count_by_prefix(report.missing)}):", group_keys(report.missing))
    if report.unexpected:
        _log_list(logging.WARNING, f"File tensors the model does not use ({len(report.unexpected)}):",
                  group_keys(report.unexpected))
    _stride_hints(model, weights)
    return report
