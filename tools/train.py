#!/usr/bin/env python
"""Train or evaluate Mask R-CNN, detectron2 train_net.py style.

    # the paper's R50-FPN GN from scratch, 6x, one machine with 8 GPUs
    python tools/train.py --config configs/scratch_gn_r50.yaml --num-gpus 8
    # another schedule / batch: iterations and LR follow (linear scaling rule)
    python tools/train.py --config configs/pretrained_gn_r50.yaml --num-gpus 8 SOLVER.SCHEDULE 2x
    # continue after a crash or preemption; evaluate a checkpoint
    python tools/train.py --config configs/scratch_gn_r50.yaml --num-gpus 8 --resume
    python tools/train.py --config configs/scratch_gn_r50.yaml --eval-only MODEL.WEIGHTS output/scratch_gn_r50/model_final.pth
    # CPU, 2 processes (gloo), the tiny synthetic config used by the tests and the demo
    python tools/train.py --config configs/demo/scratch_gn_r18_tiny.yaml --num-gpus 2

Output goes to OUTPUT_DIR (default output/<config name>[/<overrides>]): config.yaml, log.txt,
metrics.jsonl, TensorBoard events, model_XXXXXXX.pth, model_final.pth, last_checkpoint.
"""
from rethink.engine import train_main

if __name__ == "__main__":
    train_main()
