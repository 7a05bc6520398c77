"""RoI heads by ``MODEL.ROI_HEADS.NAME``: detectron2's StandardROIHeads (standard.py) and
CascadeROIHeads (cascade.py), each with a ``from_config(cfg, in_channels)``."""
from .cascade import CascadeROIHeads
from .standard import StandardROIHeads, fast_rcnn_inference_single_image

ROI_HEADS = {"StandardROIHeads": StandardROIHeads, "CascadeROIHeads": CascadeROIHeads}


def build_roi_heads(cfg, in_channels: int) -> StandardROIHeads:
    """The RoI heads named by MODEL.ROI_HEADS.NAME (validated by the config loader)."""
    return ROI_HEADS[cfg.MODEL.ROI_HEADS.NAME].from_config(cfg, in_channels)


__all__ = ["CascadeROIHeads", "ROI_HEADS", "StandardROIHeads", "build_roi_heads", "fast_rcnn_inference_single_image"]
