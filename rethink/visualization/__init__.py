"""Predictions and ground truth drawn on a dataset's images (PIL): image files for tools/visualize.py and
panels for TensorBoard after each evaluation.

    from rethink.visualization import DatasetImages, visualize_run, write_visualizations
"""
from .draw import PALETTE, Drawable, color_for, draw_instances
from .render import (
    DEFAULT_THRESHOLD,
    DatasetImages,
    load_results,
    prediction_panels,
    run_results,
    visualize_run,
    write_visualizations,
)

__all__ = ["DEFAULT_THRESHOLD", "DatasetImages", "Drawable", "PALETTE", "color_for", "draw_instances", "load_results",
           "prediction_panels", "run_results", "visualize_run", "write_visualizations"]
