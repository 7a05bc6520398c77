"""Where a MODEL.WEIGHTS file is: plain paths, ``detectron2://`` and ``catalog://`` names under
$RETHINK_WEIGHTS (nothing is downloaded), and the files pre-training writes beside its checkpoint."""
import os
import re

from .errors import WeightsError

ENV_VAR = "RETHINK_WEIGHTS"
DEFAULT_WEIGHTS_DIR = "~/.cache/rethink/weights"
ZOO_URL = "https://dl.fbaipublicfiles.com/detectron2/"


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


def sidecar_path(output: str) -> str:
    """The metadata file that tools/pretrain_backbone.py writes next to its checkpoint:
    ``r50_gn.pth`` -> ``r50_gn.json`` (read here for hints about the input format)."""
    stem, ext = os.path.splitext(output)
    return (stem if ext == ".pth" else output) + ".json"


def state_path(output: str) -> str:
    """The pre-training state next to the checkpoint, for --resume: ``r50_gn.pth`` -> ``r50_gn.state.pth``."""
    stem, ext = os.path.splitext(output)
    return (stem if ext == ".pth" else output) + ".state.pth"
