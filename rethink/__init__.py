"""rethink: a distributed detection benchmark reproducing "Rethinking ImageNet Pre-training"
(He, Girshick, Dollár, ICCV 2019) with torchvision's Mask R-CNN and detectron2's configs and semantics.

Layers, bottom first; a folder imports only from the ones below it (tests/test_layout.py):
  utils/ config/ structures/      atomic writes, cache, logging, run-directory layout; detectron2's keys
                                  and ours; instance masks shared by data and model
  data/ modeling/ evaluation/     COCO datasets, subsets, loaders; Mask R-CNN; COCO AP
  weights/                        MODEL.WEIGHTS: paths, safe reading, name conversion, loading
  engine/                         TrainerBase + hooks + writers, the detection trainer, ranks, checkpoints
  pretrain/ results/              backbone pre-training on the engine; run dirs, AP curves, paper table
  cluster/                        sweeps, submitit jobs, schedule-fork branches, status
"""
__version__ = "0.1.0"
