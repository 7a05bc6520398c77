"""What an 8-GPU node exercises, checked on the CPU: the GPU a rank takes, one GPU named for many ranks
refused, loader workers deaf to SLURM's signals, float32 anchors and box decoding under autocast."""
import os
import signal

import pytest
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.models.detection.image_list import ImageList

from rethink.data.build import _worker_init, trivial_collate
from rethink.engine.launch import device_index, launch
from rethink.modeling import build_model
from rethink.utils.signals import loader_context

from .conftest import tiny_cfg


@pytest.mark.parametrize("local_rank, visible, expected", [
    (5, 8, 5),   # every GPU of the node visible: the rank's own
    (5, 2, 1),   # a task bound to a pair of GPUs (--gpu-bind=closest)
    (3, 1, 0),   # one GPU per task (--gpus-per-task=1): its only one
    (7, 4, 3),
])
def test_device_index_with_a_subset_of_visible_gpus(local_rank, visible, expected):
    assert device_index(local_rank, visible) == expected


def test_no_visible_gpu_is_an_error_naming_the_variable(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(RuntimeError, match="no GPU is visible.*CUDA_VISIBLE_DEVICES"):
        device_index(0, 0)


def _never(*args):
    raise AssertionError("must not start")


def test_one_gpu_named_for_several_ranks_is_refused(monkeypatch):
    for k in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(ValueError, match=r"MODEL.DEVICE 'cuda:1' names one GPU but the run has 2 ranks"):
        launch(_never, num_processes=2, device="cuda:1")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "8")
    with pytest.raises(ValueError, match="has 8 ranks"):
        launch(_never, device="cuda:0")


class _SignalProbe(Dataset):
    """Each item: the worker sends itself SLURM's signals, then reports how it handles them."""

    def __len__(self):
        return 2

    def __getitem__(self, i):
        os.kill(os.getpid(), signal.SIGUSR2)
        os.kill(os.getpid(), signal.SIGTERM)
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        return os.getpid(), signal.getsignal(signal.SIGUSR2), signal.SIGTERM in blocked


def test_loader_workers_survive_slurm_signals():
    """The detection loader's workers: USR2 ignored, TERM blocked (taken by a thread that obeys only the
    rank: tests/test_loader_signals.py); a worker that signalled itself goes on serving."""
    loader = DataLoader(_SignalProbe(), batch_size=1, num_workers=1, collate_fn=trivial_collate,
                        worker_init_fn=_worker_init, multiprocessing_context=loader_context())
    got = [b[0] for b in loader]
    assert len(got) == 2
    for pid, usr2, term_blocked in got:
        assert pid != os.getpid() and usr2 == signal.SIG_IGN and term_blocked


def test_anchors_and_decoding_stay_float32_under_autocast():
    """bf16 autocast on the CPU stands in for the GPU's: anchors of a 1344 px wide input keep their
    exact float32 coordinates (bf16 would round 1300 to a multiple of 8), and the heads' outputs that
    get decoded are float32."""
    model = build_model(tiny_cfg()).eval()
    images = ImageList(torch.zeros(1, 3, 800, 1344), [(800, 1344)])
    sizes = [(200, 336), (100, 168), (50, 84), (25, 42), (13, 21)]
    feats32 = [torch.zeros(1, 64, h, w) for h, w in sizes]
    reference = model.rpn.anchor_generator(images, feats32)[0]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        feats = [f.to(torch.bfloat16) for f in feats32]
        anchors = model.rpn.anchor_generator(images, feats)[0]
        logits, deltas = model.rpn.head(feats)
        scores, box_deltas = model.roi_heads.box_predictor(torch.randn(4, 128))
        masks = model.roi_heads.mask_predictor(torch.randn(2, 64, 14, 14))
    assert anchors.dtype == torch.float32 and torch.equal(anchors, reference)
    assert anchors[:, 2].max() > 1300  # coordinates where bf16 / fp16 would round
    assert all(t.dtype == torch.float32 for t in logits + deltas)
    assert scores.dtype == box_deltas.dtype == masks.dtype == torch.float32


def test_metrics_without_tensorboard_installed(tmp_path, monkeypatch, caplog):
    """A bare GPU image may lack the tensorboard package: training still writes metrics.jsonl."""
    import sys

    from rethink.engine.events import TensorboardWriter

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    writer = TensorboardWriter(str(tmp_path))
    writer.write(1, {"loss": 1.0})
    writer.close()
    assert writer.writer is None and "No TensorBoard events" in caplog.text
    assert list(tmp_path.iterdir()) == []
