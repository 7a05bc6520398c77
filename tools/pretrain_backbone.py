#!/usr/bin/env python
"""Pre-train the detector's ResNet body as an image classifier (your own "ImageNet pre-training").
What it trains, writes and resumes: README.md, "Your own ImageNet GN backbone".

    # R50-GN on ImageNet, 8 GPUs, 100 epochs (global batch 256, LR 0.1, x0.1 at epochs 30/60/90)
    python tools/pretrain_backbone.py --data /datasets/imagenet --config configs/pretrained_gn_r50.yaml \\
        --num-gpus 8 --epochs 100 --schedule step --lr-steps 30 60 90 --output output/pretrain/R-50-GN.pth
    # then fine-tune the detector from it
    python tools/train.py --config configs/pretrained_gn_r50.yaml --num-gpus 8 MODEL.WEIGHTS output/pretrain/R-50-GN.pth
    # a SyncBN body (BatchNorm statistics over all 8 GPUs), cosine schedule, 90 epochs, bfloat16
    python tools/pretrain_backbone.py --data /datasets/imagenet --config configs/pretrained_syncbn_r50.yaml \\
        --num-gpus 8 --amp --output output/pretrain/R-50-SyncBN.pth

    # the demo on 2 CPU cores (~3.5 min, val top-1 ~77% vs 25% chance): 4 synthetic shape classes for ImageNet
    python -c "from rethink.data import make_synthetic_classification as m; m('output/demo/classification', 512)"
    python tools/pretrain_backbone.py --data output/demo/classification \\
        --config configs/demo/pretrained_gn_r18_tiny.yaml --size 32 --min-scale 0.35 --epochs 24 \\
        --batch-size 16 --lr 0.05 --output output/demo/backbone/R-18-GN.pth
    # smoke test: 2 CPU processes (gloo), 2 batches per epoch; model keys may be overridden as KEY VALUE pairs
    python tools/pretrain_backbone.py --data output/demo/classification \\
        --config configs/demo/scratch_gn_r18_tiny.yaml --device cpu --num-gpus 2 --size 32 --epochs 2 \\
        --batch-size 16 --limit-batches 2 --output /tmp/r18_syncbn.pth MODEL.RESNETS.NORM SyncBN

    # preemptible cluster: the same command with --resume continues from FILE.state.pth if it exists
    # (written at every epoch end; --checkpoint-period 1000 also every 1000 iterations), else starts afresh
    python tools/pretrain_backbone.py --data /datasets/imagenet --config configs/pretrained_gn_r50.yaml \\
        --num-gpus 8 --checkpoint-period 1000 --resume --output output/pretrain/R-50-GN.pth
"""
from rethink.pretrain import main

if __name__ == "__main__":
    main(description=__doc__)
