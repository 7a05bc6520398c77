"""The pieces tools/train.py is made of (detectron2's engine/defaults.py): the train_net.py command
line, the run's config (`load_run_config`, checked by `check_run` before any rank starts), the
per-rank set-up (`default_setup`: log file, torch flags, one SEED for all ranks, saved config), and
`main_worker`, the recipe of tools/train.py's main() for runs started from the package (SLURM jobs,
tests)."""
import argparse
import hashlib
import json
import logging
import os
import re

import numpy as np
import torch

from ..config import describe_schedule, load_config
from ..data import check_datasets
from ..data.catalog import register_config_datasets
from ..data.categories import num_classes_from_data
from ..modeling import build_model
from ..utils.atomic import atomic_write_text
from ..utils.logger import setup_logging
from ..utils.rundir import RunDir
from ..utils.runlock import RunDirBusy
from ..utils.signals import StopRequest
from ..weights import WeightsError, resolve_weights_path
from . import comm
from .checkpoint import Checkpointer
from .ownership import RunDirMismatch, claim_run_dir
from .trainer import Trainer, evaluate, flatten_results
from .worker import set_num_threads

logger = logging.getLogger(__name__)


def default_argument_parser(description: str = "Train or evaluate Mask R-CNN (rethink)") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", "--config-file", dest="config", required=True, metavar="FILE", help="config file")
    p.add_argument("--num-gpus", type=int, default=1,
                   help="ranks on this machine: one per GPU, or CPU processes (gloo) with MODEL.DEVICE cpu")
    p.add_argument("--num-machines", type=int, default=1)
    p.add_argument("--machine-rank", type=int, default=0)
    p.add_argument("--dist-url", default="auto", help="tcp://HOST:PORT of machine 0; 'auto' on one machine")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in OUTPUT_DIR")
    p.add_argument("--eval-only", action="store_true",
                   help="evaluate MODEL.WEIGHTS (or, with --resume, the last checkpoint); writes eval_results.json")
    p.add_argument("--allow-random-weights", action="store_true",
                   help="with --eval-only and no MODEL.WEIGHTS: evaluate the randomly initialised model anyway")
    p.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                   help="config overrides, e.g. SOLVER.IMS_PER_BATCH 8")
    return p


def run_name(config_path: str, overrides) -> str:
    """A run's directory name from its settings: the config's name, then the overrides."""
    stem = os.path.splitext(os.path.basename(config_path))[0]
    pairs = [f"{k.split('.')[-1]}={v}" for k, v in zip(overrides[0::2], overrides[1::2]) if k != "OUTPUT_DIR"]
    if not pairs:
        return stem
    tail = re.sub(r"[^A-Za-z0-9=._,+-]", "", ",".join(pairs))
    if len(tail) > 80:
        tail = tail[:64] + "-" + hashlib.sha1(",".join(pairs).encode()).hexdigest()[:8]
    return f"{stem}/{tail}"


def load_run_config(config_path: str, overrides, resume: bool = False):
    """Resolved config of a run: OUTPUT_DIR defaults to output/<run name>, SEED < 0 is drawn once
    (or taken from the run's saved config.yaml when resuming)."""
    origins, resolution = {}, {}
    cfg = load_config(config_path, overrides, freeze=False, origins=origins, resolution=resolution)
    logger.info("%s", describe_schedule(cfg, resolution))
    if "OUTPUT_DIR" not in origins:
        cfg.OUTPUT_DIR = os.path.join("output", run_name(config_path, list(overrides)))
    saved = RunDir(cfg.OUTPUT_DIR).config_file
    if cfg.SEED < 0:
        if resume and os.path.isfile(saved):
            cfg.SEED = load_config(saved).SEED
        else:
            cfg.SEED = int(np.random.SeedSequence().generate_state(1)[0] % 2**31)
    cfg.freeze()
    return cfg


def check_run(cfg, eval_only: bool = False, resume: bool = False, allow_random_weights: bool = True) -> None:
    """Fail fast, before any rank starts: the datasets (DATASETS.REGISTER registered; rethink.data.preflight:
    annotation files found, parsed and not empty, every image file present, as many categories as
    MODEL.ROI_HEADS.NUM_CLASSES; errors name the json and list the missing files), MODEL.WEIGHTS (the file
    is there, unless a --resume starts from a checkpoint; with `eval_only` and not `allow_random_weights`,
    an evaluation of no weights at all is refused), then a CUDA device that is not there."""
    register_config_datasets(cfg)
    check_datasets([] if eval_only else list(cfg.DATASETS.TRAIN), list(cfg.DATASETS.TEST),
                   num_classes=cfg.MODEL.ROI_HEADS.NUM_CLASSES)
    run = RunDir(cfg.OUTPUT_DIR)
    from_checkpoint = resume and (bool(run.checkpoints()) or os.path.isfile(run.final_checkpoint))
    if cfg.MODEL.WEIGHTS and not from_checkpoint:
        resolve_weights_path(cfg.MODEL.WEIGHTS)  # FileNotFoundError / WeightsError naming the file
    if eval_only and not cfg.MODEL.WEIGHTS and not from_checkpoint and not allow_random_weights:
        where = f" and no checkpoint in {cfg.OUTPUT_DIR}" if resume else ""
        raise WeightsError(
            f"--eval-only with MODEL.WEIGHTS empty{where}: that would evaluate a randomly initialised model (every AP "
            f"about 0). Give MODEL.WEIGHTS <file> (e.g. {os.path.join(cfg.OUTPUT_DIR, 'model_final.pth')}), or "
            f"--resume to evaluate the last checkpoint of OUTPUT_DIR, or --allow-random-weights to evaluate it anyway")
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"MODEL.DEVICE is {cfg.MODEL.DEVICE!r} but CUDA is not available; "
                           "add `MODEL.DEVICE cpu` to run on the CPU")


def setup_torch_backends(cfg, eval_only: bool = False) -> None:
    """This process's torch switches from the config, as detectron2's default_setup sets them:
    cudnn.benchmark = CUDNN_BENCHMARK when training (left alone for evaluation); FLOAT32_PRECISION,
    when not "" and CUDA is present, as torch's fp32 matmul precision, with TF32 convolutions allowed
    unless it is "highest"."""
    if not eval_only:
        torch.backends.cudnn.benchmark = bool(cfg.CUDNN_BENCHMARK)
    precision = cfg.FLOAT32_PRECISION
    if precision and torch.cuda.is_available():
        torch.set_float32_matmul_precision(precision)
        torch.backends.cudnn.allow_tf32 = precision != "highest"
        logger.info("FLOAT32_PRECISION %s: matmul precision %s, cudnn TF32 %s", precision,
                    torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32)


def resolve_num_classes(cfg):
    """`cfg` with MODEL.ROI_HEADS.NUM_CLASSES 0 ("from the data") replaced by the category count of the
    first DATASETS.TRAIN dataset (DATASETS.TEST's without one); `cfg` itself otherwise. The datasets of
    DATASETS.REGISTER must be registered (default_setup does it)."""
    if cfg.MODEL.ROI_HEADS.NUM_CLASSES:
        return cfg
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes_from_data(cfg.DATASETS.TRAIN, cfg.DATASETS.TEST)
    cfg.freeze()
    return cfg


def default_setup(cfg, eval_only: bool = False):
    """This rank's set-up, first thing in every rank: logging to the run's log file, the datasets of
    DATASETS.REGISTER registered, torch flags, rank 0's SEED on every rank, CPU threads; for a training,
    rank 0 claims OUTPUT_DIR (engine.ownership: lock, fingerprint, clean-up; a refusal raises on every
    rank); rank 0 saves the resolved config (as written: NUM_CLASSES 0 stays 0 there, as in the
    fingerprint). Returns the config (with the agreed SEED, and NUM_CLASSES 0 resolved from the data)."""
    setup_logging(cfg.OUTPUT_DIR, comm.get_rank())
    register_config_datasets(cfg)
    setup_torch_backends(cfg, eval_only)
    seed = comm.broadcast(cfg.SEED)  # ranks started separately (torchrun, SLURM) may have drawn their own
    if seed != cfg.SEED:
        cfg = cfg.clone()
        cfg.defrost()
        cfg.SEED = seed
        cfg.freeze()
    set_num_threads()  # SLURM_CPUS_PER_TASK, else this machine's cores shared among its ranks
    refusal = None
    if comm.is_main_process() and not eval_only:
        try:
            claim_run_dir(cfg)
        except (RunDirBusy, RunDirMismatch) as e:
            refusal = (type(e).__name__, str(e))
    refusal = comm.broadcast(refusal)
    if refusal:
        raise {"RunDirBusy": RunDirBusy, "RunDirMismatch": RunDirMismatch}[refusal[0]](refusal[1])
    if comm.is_main_process():
        os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
        atomic_write_text(RunDir(cfg.OUTPUT_DIR).config_file, cfg.dump())
        logger.info("Run %s: world size %d, device %s, seed %d", cfg.OUTPUT_DIR, comm.get_world_size(),
                    cfg.MODEL.DEVICE, cfg.SEED)
    return resolve_num_classes(cfg)


def save_eval_results(cfg, results) -> None:
    """Rank 0: log the flat {"bbox/AP": ...} results and write them to the run's eval results file."""
    if comm.is_main_process():
        flat = flatten_results(results)
        logger.info("Evaluation results: %s", flat)
        atomic_write_text(RunDir(cfg.OUTPUT_DIR).eval_results_file, json.dumps(flat, indent=1, sort_keys=True))


def main_worker(cfg, resume: bool = False, eval_only: bool = False):
    """What every rank of a run started from the package runs (cluster/jobs.py, the tests): the
    recipe of tools/train.py's main(), step for step. Returns rank 0's results (training: the scalars
    logged at the last iteration). A stop signal raises TrainingStopped (evaluation: EvaluationStopped)."""
    cfg = default_setup(cfg, eval_only)
    if eval_only:
        device = torch.device(cfg.MODEL.DEVICE)
        model = build_model(cfg).to(device)
        checkpointer = Checkpointer(model, cfg.OUTPUT_DIR)
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume, cfg.MODEL.WEIGHTS_MIN_BACKBONE_MATCH)
        # a stop signal ends the evaluation after the batch in progress: EvaluationStopped (exit code 128 +
        # the signal, as a stopped training), no eval results file
        with StopRequest("stopping the evaluation after the batch in progress; no results are written"):
            results = evaluate(cfg, model, device, categories=checkpointer.loaded_categories)
        save_eval_results(cfg, results)
        return results
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume)
    trainer.train()
    return trainer.storage.scalars_at(trainer.completed)


