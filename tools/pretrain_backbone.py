#!/usr/bin/env python
"""Pre-train the detector's ResNet body as an image classifier (your own "ImageNet pre-training").

The network is the detector's backbone body built from a detector config (MODEL.RESNETS.DEPTH,
NORM, STRIDE_IN_1X1, STEM_OUT_CHANNELS, RES2_OUT_CHANNELS, ...) + average pooling + fc, fed the
detector's input convention (INPUT.FORMAT channel order, 0..255, MODEL.PIXEL_MEAN / PIXEL_STD).
--data is an ImageFolder root: DIR/train/<class>/*.jpg and DIR/val/<class>/*.jpg. Pre-train with the
config you will fine-tune with, so that the body and the input convention are the same.

    # R50-GN on ImageNet, 8 GPUs, 100 epochs (global batch 256, LR 0.1, x0.1 at epochs 30/60/90)
    python tools/pretrain_backbone.py --data /datasets/imagenet --config configs/pretrained_gn_r50.yaml \\
        --num-gpus 8 --epochs 100 --schedule step --lr-steps 30 60 90 --output output/pretrain/R-50-GN.pth
    # then fine-tune the detector from it
    python tools/train.py --config configs/pretrained_gn_r50.yaml --num-gpus 8 MODEL.WEIGHTS output/pretrain/R-50-GN.pth
    # a SyncBN body (BatchNorm statistics over all 8 GPUs), cosine schedule, 90 epochs, bfloat16
    python tools/pretrain_backbone.py --data /datasets/imagenet --config configs/pretrained_syncbn_r50.yaml \\
        --num-gpus 8 --amp --output output/pretrain/R-50-SyncBN.pth

    # the demo on 2 CPU cores (~75 s, val top-1 ~69% vs 25% chance): 4 synthetic shape classes for ImageNet
    python -c "from rethink.data import make_synthetic_classification as m; m('output/demo/classification', 512)"
    python tools/pretrain_backbone.py --data output/demo/classification \\
        --config configs/demo/pretrained_gn_r18_tiny.yaml --size 32 --min-scale 0.35 --epochs 8 \\
        --batch-size 16 --lr 0.05 --output output/demo/backbone/R-18-GN.pth
    # smoke test: 2 CPU processes (gloo), 2 batches per epoch; model keys may be overridden as KEY VALUE pairs
    python tools/pretrain_backbone.py --data output/demo/classification \\
        --config configs/demo/scratch_gn_r18_tiny.yaml --device cpu --num-gpus 2 --size 32 --epochs 2 \\
        --batch-size 16 --limit-batches 2 --output /tmp/r18_syncbn.pth MODEL.RESNETS.NORM SyncBN

    # preemptible cluster: the same command with --resume continues from FILE.state.pth if it exists
    # (written at every epoch end; --checkpoint-period 1000 also every 1000 iterations), else starts afresh
    python tools/pretrain_backbone.py --data /datasets/imagenet --config configs/pretrained_gn_r50.yaml \\
        --num-gpus 8 --checkpoint-period 1000 --resume --output output/pretrain/R-50-GN.pth

Writes FILE.pth, a plain torchvision-named ResNet state dict (conv1.weight, bn1.*, layer1.0.conv1.weight,
..., fc.*), which MODEL.WEIGHTS reads as torchvision format (fc dropped), and FILE.json (architecture,
norm, classes, input format / mean / std, schedule, per-epoch loss and top-1, final val top-1, and the
detector KEY VALUE overrides matching this body). Only rank 0 writes; both files are written atomically.
FILE.logs/ holds log.txt, metrics.jsonl (loss, top1, lr, s/iter every --log-period iterations; train and
val loss / top-1 at every epoch end) and TensorBoard events, as a detector run directory does.

While training, FILE.state.pth (weights, optimizer, epoch / iteration = LR-schedule position, history,
settings; loads with torch.load(weights_only=True)) is rewritten atomically at the end of every epoch
and every --checkpoint-period iterations. --resume continues from it, with the batches and
augmentations an uninterrupted run gets (same final weights); it is refused, naming the file and each
differing setting, if the state was written with another architecture, input, data, batch size,
epochs, schedule or seed (another --num-gpus or --data path is allowed). Without --resume a run
starts from scratch and overwrites it. It is kept after the run (--resume then rewrites FILE.pth
without training): delete it once done.
"""
from rethink.pretrain import main

if __name__ == "__main__":
    main(description=__doc__)
