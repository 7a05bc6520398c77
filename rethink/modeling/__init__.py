"""Model building: `build_model(cfg)` gives a torchvision-based Mask R-CNN with detectron2's settings;
`ResNetClassifier` is its ResNet body as an image classifier (backbone pre-training)."""
from .backbone import ResNet, ResNetFPN, build_resnet_fpn_backbone
from .classifier import ResNetClassifier
from .norm import SyncBatchNorm, get_norm
from .rcnn import MaskRCNN, build_model

__all__ = ["MaskRCNN", "ResNet", "ResNetClassifier", "ResNetFPN", "SyncBatchNorm", "build_model",
           "build_resnet_fpn_backbone", "get_norm"]
