"""Data structures shared by the data pipeline and the model (the lowest layer after config)."""
from .masks import InstanceMasks, polygons_to_bitmask, rasterize_polygons_within_box

__all__ = ["InstanceMasks", "polygons_to_bitmask", "rasterize_polygons_within_box"]
