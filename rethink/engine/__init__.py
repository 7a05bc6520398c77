"""Training engine: loop + hooks, checkpoints, metrics, launch of ranks."""
from .defaults import default_argument_parser, load_run_config, main_worker, train_main
from .events import read_metrics
from .launch import launch
from .trainer import Trainer, evaluate

__all__ = ["Trainer", "default_argument_parser", "evaluate", "launch", "load_run_config", "main_worker",
           "read_metrics", "train_main"]
