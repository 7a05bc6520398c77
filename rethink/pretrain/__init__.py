"""Classification pre-training of the detector's own ResNet ("ImageNet pre-training", made here), on
the detection engine: the same TrainerBase, hooks, launch, DDP/SyncBN wrapping, SGD parameter
groups, finiteness check and thread policy.

    result = main(["--data", "imagenet/", "--output", "r50_gn.pth", "--num-gpus", "8"])

- ``main.py``: the command line of tools/pretrain_backbone.py, its checks, the launch of the ranks.
- ``data.py``: the ImageFolder data in the detector's input convention, seeded per image and epoch.
- ``trainer.py``: :class:`ClassificationTrainer` (a TrainerBase), its hooks, the LR schedule, the
  training state of --resume, the output files.

The network, :class:`rethink.modeling.ResNetClassifier`, is exactly the detector's body built from
the MODEL.RESNETS keys of a detector config (DEPTH, NORM, STRIDE_IN_1X1, STEM_OUT_CHANNELS,
RES2_OUT_CHANNELS, NUM_GROUPS, WIDTH_PER_GROUP), nothing frozen, plus global average pooling and an
``fc`` classifier. Images are given to it as the detector gets them: INPUT.FORMAT channel order (BGR
by default), 0..255 scale, normalized with MODEL.PIXEL_MEAN / MODEL.PIXEL_STD of that config.

Data: ``DATA/train/<class>/*`` and ``DATA/val/<class>/*`` with the same class folders. Training crops
are RandomResizedCrop(size) + a horizontal flip; validation is a resize to size/0.875 and a center crop.

Optimization: SGD (momentum 0.9, weight decay 1e-4, none on norm parameters), linear warm-up then a
cosine or step schedule, cross-entropy. ``--batch-size`` and ``--lr`` are global (all ranks
together); the default LR is 0.1 x batch / 256 (Goyal et al.); the last norm of every residual block
starts at 0. Ranks: ``--num-gpus N`` processes (NCCL on CUDA, gloo on CPU) with
DistributedDataParallel; SyncBN all-reduces its statistics over gloo on CPU and is torch's
nn.SyncBatchNorm on CUDA.

Output (rank 0 only, each file written atomically):
  - ``OUTPUT.pth``: a plain torchvision-style ResNet state dict (``conv1.weight``, ``bn1.*``,
    ``layer1.0.conv1.weight``, ..., ``fc.weight``, ``fc.bias``), which :func:`rethink.weights.load_weights`
    reads as "torchvision" format: the body goes to ``backbone.body.*``, ``fc.*`` is dropped. So a
    detector uses it with ``MODEL.WEIGHTS OUTPUT.pth`` and the same MODEL.RESNETS keys.
  - ``OUTPUT.json``: what was trained and how (architecture, norm, classes, input format / mean / std,
    schedule, per-epoch history, final val top-1, and ``detector_overrides``: the KEY VALUE pairs that
    give a detector this body and input convention); see :func:`sidecar_path`.
  - ``OUTPUT.logs/``: log.txt, metrics.jsonl (loss, top1, lr, time every --log-period iterations;
    train_loss, train_top1, val_loss, val_top1 at every epoch end) and TensorBoard events.

Resuming (preemptible clusters): rank 0 writes ``OUTPUT.state.pth`` (:func:`state_path`, atomically)
at the end of every epoch and, with ``--checkpoint-period N``, every N iterations; it holds the
weights, the optimizer, the position (epochs, batches, iterations: the LR schedule's), the history and
the settings (format: :meth:`ClassificationTrainer.save_state`). ``--resume`` continues from it on
every rank if it exists, else starts from scratch (and says so); it is refused, naming the file and
each differing setting, if that run had another architecture, input, data, batch, epochs, schedule or
seed. A resumed run trains on the same batches with the same augmentations as an uninterrupted one
(:mod:`rethink.pretrain.data`), so it ends with the same weights (bit for bit on CPU; another
``--num-gpus`` gives each iteration the same images). The state file is kept at the end: ``--resume``
on a finished run rewrites the output without training; delete it once done.

Pre-train with the config you will fine-tune with (or give the detector ``detector_overrides``):
channel order and PIXEL_MEAN must agree; PIXEL_STD too with BN (a GN body, whose stem conv has no
bias, is invariant to the input scale).
"""
from ..modeling.classifier import ResNetClassifier
from ..weights import sidecar_path, state_path
from .data import ToDetectorInput
from .main import build_argument_parser, main, pretrain, resolve
from .trainer import ClassificationTrainer, PretrainStopped, ResumeMismatchError, log_dir, lr_at

__all__ = ["ClassificationTrainer", "PretrainStopped", "ResNetClassifier", "ResumeMismatchError", "ToDetectorInput",
           "build_argument_parser", "log_dir", "lr_at", "main", "pretrain", "resolve", "sidecar_path", "state_path"]
