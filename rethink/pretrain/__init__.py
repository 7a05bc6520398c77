"""Classification pre-training of the detector's own ResNet body, on the detection engine (README.md,
"Your own ImageNet GN backbone", tells what it does; tools/pretrain_backbone.py is its command line).

- ``main.py``: the command line, its checks, the launch of the ranks.
- ``data.py``: ImageFolder data in the detector's input convention, seeded per image and epoch.
- ``trainer.py``: :class:`ClassificationTrainer` (a TrainerBase), its hooks, the LR schedule, the
  --resume state and the output files.
"""
from ..modeling.classifier import ResNetClassifier
from ..weights import sidecar_path, state_path
from .data import ToDetectorInput
from .main import build_argument_parser, main, pretrain, resolve
from .trainer import ClassificationTrainer, PretrainStopped, ResumeMismatchError, log_dir, lr_at

__all__ = ["ClassificationTrainer", "PretrainStopped", "ResNetClassifier", "ResumeMismatchError", "ToDetectorInput",
           "build_argument_parser", "log_dir", "lr_at", "main", "pretrain", "resolve", "sidecar_path", "state_path"]
