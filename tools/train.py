#!/usr/bin/env python
"""Train or evaluate Mask R-CNN, as detectron2's tools/train_net.py: setup() once, then main() in every rank.

    # the paper's R50-FPN GN from scratch, 6x, one machine with 8 GPUs
    python tools/train.py --config configs/scratch_gn_r50.yaml --num-gpus 8
    # another schedule / batch: iterations and LR follow (linear scaling rule)
    python tools/train.py --config configs/pretrained_gn_r50.yaml --num-gpus 8 SOLVER.SCHEDULE 2x
    # continue after a crash or preemption, in the same OUTPUT_DIR
    python tools/train.py --config configs/scratch_gn_r50.yaml --num-gpus 8 --resume
    # evaluate a checkpoint on DATASETS.TEST; writes OUTPUT_DIR/eval_results.json ({"bbox/AP": ..., ...})
    python tools/train.py --config configs/scratch_gn_r50.yaml --num-gpus 8 --eval-only \\
        MODEL.WEIGHTS output/scratch_gn_r50/model_final.pth OUTPUT_DIR output/eval/scratch_gn_r50
    # your own COCO-format dataset, by path, classes counted from it (NUM_CLASSES 0)
    python tools/train.py --config configs/demo/scratch_gn_r18_tiny.yaml MODEL.ROI_HEADS.NUM_CLASSES 0 \
        DATASETS.TRAIN '("/data/mine/annotations/instances_train.json",)' \
        DATASETS.TEST '("/data/mine/annotations/instances_val.json",)'
    # a detectron2 run as it is: its config.yaml and model_final.pkl (COCO under $DETECTRON2_DATASETS)
    python tools/train.py --config D2_RUN/config.yaml --num-gpus 8 --eval-only \\
        MODEL.WEIGHTS D2_RUN/model_final.pkl OUTPUT_DIR output/d2_eval
    # CPU, 2 processes (gloo): the tiny synthetic config of the tests and the demo (MODEL.DEVICE cpu)
    python tools/train.py --config configs/demo/scratch_gn_r18_tiny.yaml --num-gpus 2
    # one rank per process under torchrun (or SLURM: launch/submit.py): RANK/WORLD_SIZE come from the environment
    torchrun --nproc-per-node 8 tools/train.py --config configs/scratch_gn_r50.yaml

OUTPUT_DIR (default output/<config name>[/<overrides>]) receives config.yaml, log.txt, metrics.jsonl,
TensorBoard events, model_XXXXXXX.pth, model_final.pth and last_checkpoint (rethink/utils/rundir.py).
A mistake (config key, dataset, weights) is one message and exit status 2; RETHINK_TRACEBACK=1 shows the
traceback. --eval-only without MODEL.WEIGHTS (or --resume's checkpoint) is refused unless
--allow-random-weights.
"""
import logging
import sys

import torch

from rethink.engine import (
    Checkpointer,
    Trainer,
    check_run,
    default_argument_parser,
    default_setup,
    evaluate,
    launch,
    load_run_config,
    save_eval_results,
)
from rethink.modeling import build_model
from rethink.utils.logger import setup_logging
from rethink.utils.signals import StopRequest, TrainingStopped
from rethink.utils.usererrors import run_cli


def setup(args):
    """The run's config, once, before any rank starts: the file, then the KEY VALUE overrides; OUTPUT_DIR
    defaults to output/<run name>; SEED < 0 is drawn (or, with --resume, read from the run's config.yaml).
    Missing dataset files, a NUM_CLASSES that is not the data's, missing weights or a missing GPU fail here."""
    setup_logging()  # console; each rank adds OUTPUT_DIR/log.txt in default_setup
    cfg = load_run_config(args.config, args.opts, resume=args.resume)
    check_run(cfg, eval_only=args.eval_only, resume=args.resume, allow_random_weights=args.allow_random_weights)
    return cfg


def main(cfg, args):
    """Every rank (the engine's main_worker does the same for SLURM jobs)."""
    cfg = default_setup(cfg, eval_only=args.eval_only)  # log file, torch flags, one SEED, config.yaml saved
    if args.eval_only:
        device = torch.device(cfg.MODEL.DEVICE)
        model = build_model(cfg).to(device)
        checkpointer = Checkpointer(model, cfg.OUTPUT_DIR)
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, args.resume, cfg.MODEL.WEIGHTS_MIN_BACKBONE_MATCH)
        # COCO box/mask AP on every DATASETS.TEST (and with TEST.AUG.ENABLED the TTA model's, suffixed _TTA);
        # a stop signal ends it after the batch in progress: no results written, exit 128 + the signal
        with StopRequest("stopping the evaluation after the batch in progress; no results are written"):
            # labels mapped to the test json's categories by the checkpoint's category list (when it has one)
            results = evaluate(cfg, model, device, categories=checkpointer.loaded_categories)
        save_eval_results(cfg, results)
        return results
    trainer = Trainer(cfg)  # model (DDP over the ranks), optimizer, AMP scaler, checkpointer
    trainer.resume_or_load(resume=args.resume)  # last checkpoint in OUTPUT_DIR, else MODEL.WEIGHTS
    # timer, LR schedule, PreciseBN (TEST.PRECISE_BN), checkpoints, evaluation every TEST.EVAL_PERIOD, metrics writer
    trainer.register_hooks(trainer.build_hooks())
    trainer.train()  # from the start iteration to SOLVER.MAX_ITER
    return trainer.storage.scalars_at(trainer.completed)


def cli(argv=None) -> int:
    args = default_argument_parser(__doc__).parse_args(argv)
    cfg = setup(args)
    try:
        launch(main, num_processes=args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
               dist_url=args.dist_url, device=cfg.MODEL.DEVICE, args=(cfg, args))
    except TrainingStopped as e:  # SIGTERM / SIGUSR2: the checkpoint is saved; --resume continues
        logging.getLogger("train").warning("%s; continue with --resume", e)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(cli))  # a user error: one message, exit status 2 (RETHINK_TRACEBACK=1: the traceback)
