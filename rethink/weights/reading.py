"""Reading weight files without running pickled code: torch zip/legacy files with weights_only,
any other pickle through a restricted unpickler (numpy arrays, dicts and plain values only)."""
import importlib
import logging
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional

import numpy as np
import torch

from .errors import UnsafeFileError, WeightsError

logger = logging.getLogger(__name__)

# torch's legacy (pre-zip) format starts with this pickled int
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


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
_D2_NAME = re.compile(r"^(backbone\.bottom_up\.|proposal_generator\.|roi_heads\.box_head\.(\d+\.)?(fc|conv)\d|"
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
    # the category list a rethink checkpoint keeps ([{"id", "name"}], label i = entry i - 1), else None
    categories: Optional[List[dict]] = None


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
    categories = obj.get("categories")
    if not (isinstance(categories, list) and all(isinstance(c, Mapping) and "id" in c for c in categories)):
        categories = None
    return Weights(path=path, format=fmt, tensors=tensors, skipped=skipped, author=author,
                   categories=[{"id": int(c["id"]), "name": str(c.get("name", ""))} for c in categories]
                   if categories else None)
