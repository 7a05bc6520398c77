"""rethink: a distributed detection benchmark reproducing "Rethinking ImageNet Pre-training"
(He, Girshick, Dollár, ICCV 2019) with torchvision's Mask R-CNN and detectron2-style configs.

config/    detectron2 keys + this project's, _BASE_ files, schedules     modeling/  the detector
data/      COCO datasets, subsets, loaders, synthetic data               engine/    training loop + hooks
evaluation/ COCO box/mask AP                                             weights.py MODEL.WEIGHTS formats
slurm.py, sweep.py, fork.py, status.py   submitit jobs, sweeps, schedule forking, run state
runs.py, curves.py, report.py, paper.py  AP curves and the table against the paper
"""
__version__ = "0.1.0"
