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
from .errors import NormMismatchError, UnsafeFileError, WeightsError
from .load import LoadReport, load_weights
from .paths import ENV_VAR, resolve_weights_path, sidecar_path, state_path
from .reading import RestrictedUnpickler, Weights, read_weights

__all__ = ["ENV_VAR", "LoadReport", "NormMismatchError", "RestrictedUnpickler", "UnsafeFileError", "Weights",
           "WeightsError", "load_weights", "read_weights", "resolve_weights_path", "sidecar_path", "state_path"]
