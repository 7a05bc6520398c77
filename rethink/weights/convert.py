"""Renaming Caffe2/Detectron, detectron2 and torchvision tensor names to our model's."""
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from .reading import Weights

BODY = "backbone.body."  # canonical prefix of the ResNet body in converted names


_C2_SUFFIX = {"s": "weight", "b": "bias", "rm": "running_mean", "riv": "running_var"}
_C2_BRANCH = {"2a": "1", "2b": "2", "2c": "3"}
_C2_STEM_CONV = re.compile(r"^conv1_(w|b)$")
_C2_STEM_NORM = re.compile(r"^(?:res_)?conv1_(bn|gn)_(s|b|rm|riv)$")
_C2_CONV = re.compile(r"^res(\d+)_(\d+)_branch(1|2[abc])_(w|b)$")
_C2_NORM = re.compile(r"^res(\d+)_(\d+)_branch(1|2[abc])_(bn|gn)_(s|b|rm|riv)$")
_C2_CLASSIFIER = re.compile(r"^(fc1000|pred)_(w|b)$")


def _c2_block_prefix(stage: str, block: str, branch: str) -> Tuple[str, str]:
    base = f"{BODY}layer{int(stage) - 1}.{block}."
    if branch == "1":
        return base + "downsample.0", base + "downsample.1"
    j = _C2_BRANCH[branch]
    return base + f"conv{j}", base + f"bn{j}"


@dataclass
class Converted:
    tensors: Dict[str, torch.Tensor]  # our (canonical) names
    sources: Dict[str, str]  # our name -> file name
    dropped: List[str]  # file names deliberately not used (classifier, junk)
    unmapped: List[str]  # file names we could not rename (reported as unexpected)
    notes: List[str] = field(default_factory=list)


def _convert_caffe2(tensors: Dict[str, torch.Tensor]) -> Converted:
    out, sources, dropped, unmapped, notes = {}, {}, [], [], []
    norm_has_stats, norm_kind = set(), {}
    for k, v in tensors.items():
        if k.endswith("_momentum") or _C2_CLASSIFIER.match(k):
            dropped.append(k)
            continue
        new = None
        if m := _C2_STEM_CONV.match(k):
            new = f"{BODY}conv1.{'weight' if m.group(1) == 'w' else 'bias'}"
        elif m := _C2_STEM_NORM.match(k):
            new = f"{BODY}bn1.{_C2_SUFFIX[m.group(2)]}"
            norm_kind[f"{BODY}bn1"] = m.group(1)
        elif m := _C2_CONV.match(k):
            conv, _ = _c2_block_prefix(*m.group(1, 2, 3))
            new = f"{conv}.{'weight' if m.group(4) == 'w' else 'bias'}"
        elif m := _C2_NORM.match(k):
            _, norm = _c2_block_prefix(*m.group(1, 2, 3))
            new = f"{norm}.{_C2_SUFFIX[m.group(5)]}"
            norm_kind[norm] = m.group(4)
        if new is None:
            unmapped.append(k)
            continue
        if new.endswith((".running_mean", ".running_var")):
            norm_has_stats.add(new.rsplit(".", 1)[0])
        out[new], sources[new] = v, k
    # Caffe2 BN given as an affine scale/shift only (MSRA): the statistics are folded in, so the
    # layer must normalise with mean 0 / var 1 (detectron2's FrozenBatchNorm2d for Caffe2 weights).
    synthesized = 0
    for norm, kind in norm_kind.items():
        if kind == "bn" and norm not in norm_has_stats and f"{norm}.weight" in out:
            w = out[f"{norm}.weight"]
            out[f"{norm}.running_mean"] = torch.zeros_like(w)
            out[f"{norm}.running_var"] = torch.ones_like(w)
            sources[f"{norm}.running_mean"] = sources[f"{norm}.running_var"] = sources[f"{norm}.weight"]
            synthesized += 1
    if synthesized:
        notes.append(f"Caffe2 BN scale/bias without statistics: running_mean=0, running_var=1 set for {synthesized} "
                     "norm layers (as detectron2 does for Caffe2 weights)")
    return Converted(out, sources, dropped, unmapped, notes)


_D2_STEM = re.compile(r"^stem\.conv1\.(norm\.)?(\w+)$")
_D2_BLOCK = re.compile(r"^res([2-5])\.(\d+)\.(conv[123]|shortcut)\.(norm\.)?(\w+)$")
_D2_OFFSET = re.compile(r"^res([2-5])\.(\d+)\.conv2_offset\.(weight|bias)$")  # DeformBottleneckBlock


def _d2_body_name(rest: str) -> Optional[str]:
    if m := _D2_STEM.match(rest):
        return f"{BODY}{'bn1' if m.group(1) else 'conv1'}.{m.group(2)}"
    if m := _D2_BLOCK.match(rest):
        stage, block, conv, norm, param = m.groups()
        base = f"{BODY}layer{int(stage) - 1}.{block}."
        if conv == "shortcut":
            return base + f"downsample.{1 if norm else 0}.{param}"
        return base + (f"bn{conv[-1]}" if norm else conv) + f".{param}"
    if m := _D2_OFFSET.match(rest):
        stage, block, param = m.groups()
        return f"{BODY}layer{int(stage) - 1}.{block}.conv2_offset.{param}"
    return None


def _child_indices(module: Optional[nn.Module], kind) -> List[str]:
    if module is None:
        return []
    names = []
    for name, child in module.named_children():
        if isinstance(child, kind) or (kind is nn.Conv2d and isinstance(child, nn.Sequential)
                                       and len(child) and isinstance(child[0], nn.Conv2d)):
            names.append(name)
    return names


def _d2_head_name(key: str, model: nn.Module, notes: List[str]) -> Optional[str]:
    """detectron2 FPN / RPN / RoI-head names -> ours, using the model's layout; None if not mappable."""
    if m := re.match(r"^backbone\.fpn_(lateral|output)([2-5])\.(norm\.)?(\w+)$", key):
        kind, level, norm, param = m.groups()
        blocks = "inner_blocks" if kind == "lateral" else "layer_blocks"
        return f"backbone.fpn.{blocks}.{int(level) - 2}.{1 if norm else 0}.{param}"
    if m := re.match(r"^proposal_generator\.rpn_head\.(conv|objectness_logits|anchor_deltas)\.(\w+)$", key):
        layer, param = m.groups()
        if layer == "conv":
            return f"rpn.head.conv.0.0.{param}"
        gen = getattr(getattr(model, "rpn", None), "anchor_generator", None)
        if gen is not None and any(len(s) > 1 and len(r) > 1 for s, r in zip(gen.sizes, gen.aspect_ratios)):
            # detectron2 orders anchors size-major, torchvision ratio-major: different output order
            notes.append(f"{key}: not loaded, the anchor order differs with several sizes and ratios per level")
            return None
        return f"rpn.head.{'cls_logits' if layer == 'objectness_logits' else 'bbox_pred'}.{param}"
    heads = getattr(model, "roi_heads", None)
    if m := re.match(r"^roi_heads\.box_head\.(?:(\d+)\.)?(conv|fc)(\d+)\.(norm\.)?(\w+)$", key):
        stage, layer, j, norm, param = m.groups()  # stage: a cascade stage's own box head
        box_head = getattr(heads, "box_head", None)
        prefix = "roi_heads.box_head."
        if stage is not None:
            if not isinstance(box_head, nn.ModuleList) or int(stage) >= len(box_head):
                return None
            box_head, prefix = box_head[int(stage)], f"{prefix}{stage}."
        elif isinstance(box_head, nn.ModuleList):
            return None
        names = _child_indices(box_head, nn.Conv2d if layer == "conv" else nn.Linear)
        if int(j) > len(names):
            return None
        idx = names[int(j) - 1]
        if layer == "fc":
            return f"{prefix}{idx}.{param}"
        return f"{prefix}{idx}.{1 if norm else 0}.{param}"
    if m := re.match(r"^roi_heads\.mask_head\.mask_fcn(\d+)\.(norm\.)?(\w+)$", key):
        j, norm, param = m.groups()
        names = _child_indices(getattr(heads, "mask_head", None), nn.Conv2d)
        if int(j) > len(names):
            return None
        return f"roi_heads.mask_head.{names[int(j) - 1]}.{1 if norm else 0}.{param}"
    if m := re.match(r"^roi_heads\.mask_head\.(deconv|predictor)\.(\w+)$", key):
        layer, param = m.groups()
        return f"roi_heads.mask_predictor.{'conv5_mask' if layer == 'deconv' else 'mask_fcn_logits'}.{param}"
    if re.match(r"^roi_heads\.box_predictor\.(\d+\.)?(cls_score|bbox_pred)\.(weight|bias)$", key):
        return key
    if re.match(r"^roi_heads\.keypoint_head\.(conv_fcn\d+|score_lowres)\.(weight|bias)$", key):
        return key  # KRCNNConvDeconvUpsampleHead: the same names here (modeling/roi_heads/keypoint.py)
    return None


def _convert_detectron2(tensors: Dict[str, torch.Tensor], model: nn.Module) -> Converted:
    out, sources, dropped, unmapped, notes = {}, {}, [], [], []
    for k, v in tensors.items():
        rest = k[len("backbone.bottom_up."):] if k.startswith("backbone.bottom_up.") else k
        if re.match(r"^linear\.(weight|bias)$", rest):  # detectron2 ResNet's ImageNet classifier
            dropped.append(k)
            continue
        new = _d2_body_name(rest)
        if new is None:
            new = _d2_head_name(k, model, notes)
        if new is None:
            unmapped.append(k)
            continue
        if re.match(r"^roi_heads\.box_predictor\.(\d+\.)?cls_score\.(weight|bias)$", new):
            # detectron2: classes 0..K-1 then background; ours: background then classes
            v = torch.cat([v[-1:], v[:-1]], dim=0)
            notes.append(f"{k}: background row moved from last (detectron2) to first (ours)")
        out[new], sources[new] = v, k
    return Converted(out, sources, dropped, unmapped, notes)


def _convert_torchvision(tensors: Dict[str, torch.Tensor]) -> Converted:
    out, sources, dropped, unmapped = {}, {}, [], []
    for k, v in tensors.items():
        if k.startswith("fc."):
            dropped.append(k)
        elif re.match(r"^(conv1|bn1|layer[1-4])\.", k):
            out[BODY + k], sources[BODY + k] = v, k
        else:
            unmapped.append(k)
    return Converted(out, sources, dropped, unmapped)


def convert_names(weights: Weights, model: nn.Module) -> Converted:
    if weights.format == "caffe2":
        return _convert_caffe2(weights.tensors)
    if weights.format == "detectron2":
        return _convert_detectron2(weights.tensors, model)
    if weights.format == "torchvision":
        return _convert_torchvision(weights.tensors)
    return Converted(dict(weights.tensors), {k: k for k in weights.tensors}, [], [])
