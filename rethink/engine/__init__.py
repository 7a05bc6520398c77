"""Training engine: loop + hooks, checkpoints, metrics, launch of ranks."""
from ..utils.rundir import read_metrics
from .checkpoint import Checkpointer
from .defaults import check_run, default_argument_parser, default_setup, load_run_config, main_worker, save_eval_results
from .launch import launch
from .trainer import Trainer, evaluate

__all__ = ["Checkpointer", "Trainer", "check_run", "default_argument_parser", "default_setup", "evaluate", "launch",
           "load_run_config", "main_worker", "read_metrics", "save_eval_results"]
