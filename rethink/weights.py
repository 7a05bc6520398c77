"""MODEL.WEIGHTS: find, read (safely) and load initial weights with detectron2's semantics.

    report = load_weights(model, cfg.MODEL.WEIGHTS)

Where the file is (:func:`resolve_weights_path`):
  - a plain path (``~`` expanded);
  - ``detectron2://<rel>`` -> ``$RETHINK_WEIGHTS/<rel>`` (default ``~/.cache/rethink/weights``);
  - ``catalog://ImageNetPretrained/<name>`` -> ``$RETHINK_WEIGHTS/ImageNetPretrained/<name>.pkl``
    (``catalog://ImageNetPretrained/FAIR/R-50-GN`` -> ``ImageNetPretrained/FAIR/R-50-GN.pkl``).
  Nothing is downloaded: a missing file is a FileNotFoundError saying where to put it.

How it is read (:func:`read_weights`), never executing pickled code:
  - a zip file (any torch.save since 1.6) or a legacy torch file: ``torch.load(weights_only=True)``;
  - any other file: a pickle read by :class:`RestrictedUnpickler` (numpy arrays, dicts, OrderedDicts
    and plain values only; ``encoding="latin1"`` so Python 2 pickles load).

Which naming it uses, detected from the keys (after taking ``["blobs"]``, ``["model"]`` or
``["state_dict"]`` of the top-level dict, and dropping a DDP ``module.`` prefix):
  - ``caffe2``: Detectron / Caffe2 ImageNet blobs (``conv1_w``, ``res2_0_branch2a_w``,
    ``res2_0_branch2a_bn_s``/``_gn_s``, ``res_conv1_bn_s``, ``fc1000_w`` ...). BN given only as
    scale/bias (the MSRA models) gets running_mean 0 and running_var 1, as detectron2 does.
  - ``detectron2``: detectron2 model names (``backbone.bottom_up.res2.0.conv1.norm.weight`` or,
    from detectron2's conversion scripts, ``res2.0.conv1.norm.weight``); the backbone body, FPN,
    RPN and RoI heads are renamed to ours; detectron2's cls_score keeps the background class last,
    ours first, so that row is moved (and said so).
  - ``torchvision``: a torchvision ResNet classification state dict (``conv1.weight``,
    ``layer1.0.conv1.weight``, ``fc.weight``) -> ``backbone.body.*``.
  - ``checkpoint``: anything else is taken as our own names (our checkpoints' ``"model"``).
The ImageNet classifier (``fc.*``, ``fc1000_*``, detectron2's ``linear.*``) and Caffe2 junk blobs
(``*_momentum``) are dropped and logged.

Loading (:func:`load_weights`) copies every tensor whose name and shape match the model, skips and
lists shape mismatches, logs matched / missing / unused keys grouped by module, and returns a
:class:`LoadReport`. It refuses (:class:`NormMismatchError`) to put BatchNorm weights into GroupNorm
layers or the reverse (same shapes, wrong meaning), and raises :class:`WeightsError` when nothing
matches. Body-only models (a bare :class:`rethink.modeling.ResNet`) are supported too.
"""
import collections
import importlib
import logging
import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
from torchvision.ops import FrozenBatchNorm2d

logger = logging.getLogger(__name__)

__all__ = [
    "ENV_VAR",
    "LoadReport",
    "NormMismatchError",
    "RestrictedUnpickler",
    "UnsafeFileError",
    "Weights",
    "WeightsError",
    "load_weights",
    "read_weights",
    "resolve_weights_path",
]

ENV_VAR = "RETHINK_WEIGHTS"
DEFAULT_WEIGHTS_DIR = "~/.cache/rethink/weights"
ZOO_URL = "https://dl.fbaipublicfiles.com/detectron2/"
BODY = "backbone.body."  # canonical prefix of the ResNet body in converted names

# torch's legacy (pre-zip) format starts with this pickled int
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class WeightsError(RuntimeError):
    """MODEL.WEIGHTS cannot be used: unreadable file, nothing matching the model, bad path."""


class UnsafeFileError(WeightsError):
    """The file asks to run code (a pickled global that is not plain data): refused, nothing ran."""


class NormMismatchError(WeightsError):
    """BatchNorm weights for GroupNorm layers (or the reverse, or for layers without a norm)."""


# ------------------------------------------------------------------------------------------------
# where the file is
# ------------------------------------------------------------------------------------------------


def weights_dir() -> str:
    """$RETHINK_WEIGHTS, or ~/.cache/rethink/weights."""
    return os.path.expanduser(os.environ.get(ENV_VAR) or DEFAULT_WEIGHTS_DIR)


def _catalog_to_relative(name: str) -> str:
    """detectron2's ModelCatalog names for ImageNet models -> a path relative to the weights dir."""
    if not name.startswith("ImageNetPretrained/") or name.rstrip("/") == "ImageNetPretrained":
        raise WeightsError(
            f"catalog://{name}: only detectron2's ImageNet catalog names are known here "
            "(catalog://ImageNetPretrained/MSRA/R-50, catalog://ImageNetPretrained/FAIR/R-50-GN, ...); "
            "give a detectron2:// name or a file path instead"
        )
    return name if name.endswith(".pkl") else name + ".pkl"


def resolve_weights_path(path: str, must_exist: bool = True) -> str:
    """The local file MODEL.WEIGHTS `path` names (see the module docstring). With `must_exist`, a
    missing file is a FileNotFoundError naming the resolved path and how to provide it."""
    if not path:
        raise WeightsError("MODEL.WEIGHTS is empty: there is nothing to load")
    path = str(path)
    zoo_rel = None
    if path.startswith("detectron2://"):
        zoo_rel = path[len("detectron2://"):].lstrip("/")
    elif path.startswith("catalog://"):
        zoo_rel = _catalog_to_relative(path[len("catalog://"):].lstrip("/"))
    elif re.match(r"^(https?|s3|gs)://", path):
        raise WeightsError(
            f"MODEL.WEIGHTS {path!r}: URLs are not downloaded by this project; fetch the file elsewhere, "
            "then set MODEL.WEIGHTS to its local path"
        )
    elif path.startswith("file://"):
        path = path[len("file://"):]
    if zoo_rel is None:
        resolved = os.path.abspath(os.path.expanduser(path))
        if must_exist and not os.path.isfile(resolved):
            raise FileNotFoundError(f"MODEL.WEIGHTS {path!r}: no such file {resolved}")
        return resolved
    if not zoo_rel or ".." in zoo_rel.split("/"):
        raise WeightsError(f"MODEL.WEIGHTS {path!r}: not a detectron2 model zoo name")
    root = weights_dir()
    resolved = os.path.abspath(os.path.join(root, zoo_rel))
    if must_exist and not os.path.isfile(resolved):
        env = os.environ.get(ENV_VAR)
        where = f"${ENV_VAR}={env}" if env else f"${ENV_VAR} is unset, so the default {DEFAULT_WEIGHTS_DIR}"
        zoo = ("detectron2's ImageNetPretrained model zoo" if zoo_rel.startswith("ImageNetPretrained/")
               else "detectron2's model zoo")
        raise FileNotFoundError(
            f"MODEL.WEIGHTS {path!r} resolves to {resolved}, which does not exist ({where} is used). "
            f"The file comes from {zoo} ({ZOO_URL}{zoo_rel}); this project cannot download it: copy it to "
            f"{resolved}, or point ${ENV_VAR} at the directory that holds {zoo_rel}"
        )
    return resolved


# ------------------------------------------------------------------------------------------------
# reading files without running pickled code
# ------------------------------------------------------------------------------------------------

_SAFE_GLOBALS = {
    # numpy arrays, dtypes and scalars (numpy 1 and numpy 2 module names)
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),  # pickle protocol 5
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3 (array data)
    ("collections", "OrderedDict"),
}


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that can build numpy arrays, dicts, OrderedDicts and plain values, and refuses
    every other global (so a pickle cannot call os.system or anything else)."""

    def __init__(self, file, filename: str = "<pickle>"):
        super().__init__(file, encoding="latin1")
        self.filename = filename

    def find_class(self, module, name):
        if (module, name) not in _SAFE_GLOBALS:
            raise UnsafeFileError(
                f"{self.filename}: refused to unpickle the global {module}.{name}: weights files may only hold "
                "numpy arrays, dicts and plain values (pickled code is never executed). If you trust the file, "
                "convert it to a state dict of tensors with torch.save"
            )
        if module.startswith("numpy.core") and hasattr(np, "_core"):
            module = "numpy._core" + module[len("numpy.core"):]
        return getattr(importlib.import_module(module), name)

    def persistent_load(self, pid):
        raise UnsafeFileError(f"{self.filename}: the pickle references external objects ({pid!r}); not a weights file")


def _torch_load(path: str):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        m = re.search(r"GLOBAL ([\w.]+)", msg)
        what = f"the global {m.group(1)}" if m else "an object that is not plain data"
        detail = [line.strip() for line in msg.splitlines() if "GLOBAL" in line or "WeightsUnpickler" in line]
        raise UnsafeFileError(
            f"{path}: torch.load(weights_only=True) refused {what}; weights are only read without executing "
            "pickled code. If you trust the file, re-save its state dict of tensors"
            + (f" (torch: {detail[0]})" if detail else "")
        ) from None
    except (RuntimeError, EOFError, OSError) as e:
        raise WeightsError(f"{path}: not a readable torch file: {e}") from None


def _load_object(path: str):
    if zipfile.is_zipfile(path):
        return _torch_load(path)
    with open(path, "rb") as f:
        try:
            obj = RestrictedUnpickler(f, path).load()
        except UnsafeFileError:
            raise
        except Exception as e:  # noqa: BLE001 - any unpickling failure means "not a pickle we can read"
            raise WeightsError(
                f"{path}: neither a torch file nor a readable pickle ({type(e).__name__}: {e})") from None
    if isinstance(obj, int) and obj == _TORCH_LEGACY_MAGIC:
        return _torch_load(path)
    return obj


def _to_tensor(value) -> Optional[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            return None
        arr = np.array(value, dtype=value.dtype.newbyteorder("="), copy=True, order="C")
        return torch.from_numpy(arr)
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        return torch.from_numpy(np.array(value))
    return None


_C2_NAME = re.compile(r"^(conv1_[wb]|(res_)?conv1_(bn|gn)_|res\d+_\d+_branch(1|2[a-c])_|fc1000_[wb]$)")
_D2_NAME = re.compile(r"^(backbone\.bottom_up\.|proposal_generator\.|roi_heads\.box_head\.(fc|conv)\d|"
                      r"roi_heads\.mask_head\.(mask_fcn\d|deconv|predictor)|stem\.conv1\.|res[2-5]\.\d+\.)")


def _detect_naming(keys: List[str]) -> str:
    if any(_C2_NAME.match(k) for k in keys):
        return "caffe2"
    if any(_D2_NAME.match(k) for k in keys):
        return "detectron2"
    if "conv1.weight" in keys and any(k.startswith("layer1.") for k in keys):
        return "torchvision"
    return "checkpoint"


@dataclass
class Weights:
    """A weights file read into tensors, still under the file's own names."""

    path: str
    format: str  # "caffe2" | "detectron2" | "torchvision" | "checkpoint"
    tensors: Dict[str, torch.Tensor]
    skipped: List[str] = field(default_factory=list)  # entries that are not numeric arrays
    author: Optional[str] = None


def read_weights(path: str) -> Weights:
    """Read a (resolved) weights file safely and detect its naming; see the module docstring."""
    obj = _load_object(path)
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path}: holds a {type(obj).__name__}, not a dict of weights")
    author = obj.get("__author__") if isinstance(obj.get("__author__"), str) else None
    for container in ("blobs", "model", "state_dict"):
        if isinstance(obj.get(container), Mapping):
            state = obj[container]
            break
    else:
        state = obj
    keys = [str(k) for k in state.keys()]
    if keys and all(k.startswith("module.") for k in keys):
        state = {k[len("module."):]: v for k, v in state.items()}
    tensors, skipped = {}, []
    for k, v in state.items():
        t = _to_tensor(v)
        if t is None:
            skipped.append(str(k))
        else:
            tensors[str(k)] = t
    fmt = _detect_naming(list(tensors))
    if author:
        logger.info("%s: written by %r", path, author)
    return Weights(path=path, format=fmt, tensors=tensors, skipped=skipped, author=author)


# ------------------------------------------------------------------------------------------------
# renaming to our model's names
# ------------------------------------------------------------------------------------------------

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
class _Converted:
    tensors: Dict[str, torch.Tensor]  # our (canonical) names
    sources: Dict[str, str]  # our name -> file name
    dropped: List[str]  # file names deliberately not used (classifier, junk)
    unmapped: List[str]  # file names we could not rename (reported as unexpected)
    notes: List[str] = field(default_factory=list)


def _convert_caffe2(tensors: Dict[str, torch.Tensor]) -> _Converted:
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
    return _Converted(out, sources, dropped, unmapped, notes)


_D2_STEM = re.compile(r"^stem\.conv1\.(norm\.)?(\w+)$")
_D2_BLOCK = re.compile(r"^res([2-5])\.(\d+)\.(conv[123]|shortcut)\.(norm\.)?(\w+)$")


def _d2_body_name(rest: str) -> Optional[str]:
    if m := _D2_STEM.match(rest):
        return f"{BODY}{'bn1' if m.group(1) else 'conv1'}.{m.group(2)}"
    if m := _D2_BLOCK.match(rest):
        stage, block, conv, norm, param = m.groups()
        base = f"{BODY}layer{int(stage) - 1}.{block}."
        if conv == "shortcut":
            return base + f"downsample.{1 if norm else 0}.{param}"
        return base + (f"bn{conv[-1]}" if norm else conv) + f".{param}"
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
    if m := re.match(r"^roi_heads\.box_head\.(conv|fc)(\d+)\.(norm\.)?(\w+)$", key):
        layer, j, norm, param = m.groups()
        box_head = getattr(heads, "box_head", None)
        names = _child_indices(box_head, nn.Conv2d if layer == "conv" else nn.Linear)
        if int(j) > len(names):
            return None
        idx = names[int(j) - 1]
        if layer == "fc":
            return f"roi_heads.box_head.{idx}.{param}"
        return f"roi_heads.box_head.{idx}.{1 if norm else 0}.{param}"
    if m := re.match(r"^roi_heads\.mask_head\.mask_fcn(\d+)\.(norm\.)?(\w+)$", key):
        j, norm, param = m.groups()
        names = _child_indices(getattr(heads, "mask_head", None), nn.Conv2d)
        if int(j) > len(names):
            return None
        return f"roi_heads.mask_head.{names[int(j) - 1]}.{1 if norm else 0}.{param}"
    if m := re.match(r"^roi_heads\.mask_head\.(deconv|predictor)\.(\w+)$", key):
        layer, param = m.groups()
        return f"roi_heads.mask_predictor.{'conv5_mask' if layer == 'deconv' else 'mask_fcn_logits'}.{param}"
    if re.match(r"^roi_heads\.box_predictor\.(cls_score|bbox_pred)\.(weight|bias)$", key):
        return key
    return None


def _convert_detectron2(tensors: Dict[str, torch.Tensor], model: nn.Module) -> _Converted:
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
        if new == "roi_heads.box_predictor.cls_score.weight" or new == "roi_heads.box_predictor.cls_score.bias":
            # detectron2: classes 0..K-1 then background; ours: background then classes
            v = torch.cat([v[-1:], v[:-1]], dim=0)
            notes.append(f"{k}: background row moved from last (detectron2) to first (ours)")
        out[new], sources[new] = v, k
    return _Converted(out, sources, dropped, unmapped, notes)


def _convert_torchvision(tensors: Dict[str, torch.Tensor]) -> _Converted:
    out, sources, dropped, unmapped = {}, {}, [], []
    for k, v in tensors.items():
        if k.startswith("fc."):
            dropped.append(k)
        elif re.match(r"^(conv1|bn1|layer[1-4])\.", k):
            out[BODY + k], sources[BODY + k] = v, k
        else:
            unmapped.append(k)
    return _Converted(out, sources, dropped, unmapped)


def _convert(weights: Weights, model: nn.Module) -> _Converted:
    if weights.format == "caffe2":
        return _convert_caffe2(weights.tensors)
    if weights.format == "detectron2":
        return _convert_detectron2(weights.tensors, model)
    if weights.format == "torchvision":
        return _convert_torchvision(weights.tensors)
    return _Converted(dict(weights.tensors), {k: k for k in weights.tensors}, [], [])


# ------------------------------------------------------------------------------------------------
# the model side
# ------------------------------------------------------------------------------------------------


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


# ------------------------------------------------------------------------------------------------
# loading
# ------------------------------------------------------------------------------------------------


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
    import json

    from .pretrain import sidecar_path

    sidecar = sidecar_path(path)
    if not os.path.isfile(sidecar):
        return None
    try:
        with open(sidecar) as f:
            return json.load(f)
    except (OSError, ValueError):
        logger.warning("%s: unreadable metadata next to the weights; ignoring it", sidecar)
        return None


def load_weights(model: nn.Module, path: str) -> LoadReport:
    """Load MODEL.WEIGHTS `path` (any form :func:`resolve_weights_path` takes, any format
    :func:`read_weights` reads) into `model` in place; returns a :class:`LoadReport`."""
    resolved = resolve_weights_path(path)
    weights = read_weights(resolved)
    logger.info("Loading weights from %s (%s%s, %d tensors)", resolved, weights.format,
                f", as {path!r}" if path != resolved else "", len(weights.tensors))
    conv = _convert(weights, model)
    body_prefix, _ = _find_body(model)
    if body_prefix is not None and body_prefix != BODY:
        conv.tensors = {(body_prefix + k[len(BODY):] if k.startswith(BODY) else k): v for k, v in conv.tensors.items()}
        conv.sources = {(body_prefix + k[len(BODY):] if k.startswith(BODY) else k): v for k, v in conv.sources.items()}
    for note in conv.notes:
        logger.info("%s", note)

    state = model.state_dict()
    _check_norms(model, conv.tensors, conv.sources, resolved, body_prefix)

    report = LoadReport(path=resolved, format=weights.format)
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
