"""A training step makes no CPU-GPU synchronisation between forward and backward: no reduction of the
losses before backward (they are reduced for logging every LOG_PERIOD steps, in one call), and the
finiteness check is one reduced flag taken after backward, before the update."""
import pytest
import torch

from rethink.config import load_config
from rethink.data.build import build_train_loader
from rethink.engine import comm
from rethink.engine import trainer as trainer_module
from rethink.engine.events import EventStorage
from rethink.engine.trainer import Trainer

from .conftest import CONFIGS

pytestmark = pytest.mark.usefixtures("isolated_cache")


def test_no_reduction_before_backward_and_losses_logged_every_period(tmp_path, monkeypatch):
    cfg = load_config(CONFIGS / "demo" / "scratch_gn_r18_tiny.yaml",
                      ["SOLVER.IMS_PER_BATCH", "2", "SOLVER.REFERENCE_IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "100",
                       "SOLVER.STEPS", "(90,)", "TEST.EVAL_PERIOD", "0", "OUTPUT_DIR", str(tmp_path)])
    trainer = Trainer(cfg)
    events = []
    first = next(p for p in trainer.model.parameters() if p.requires_grad)
    first.register_hook(lambda g: events.append("backward") or g)
    for name in ("reduce_mean", "reduce_mean_tensor", "all_max"):
        real = getattr(comm, name)
        monkeypatch.setattr(comm, name, lambda *a, _real=real, _name=name: events.append(_name) or _real(*a))
    assert trainer_module.comm is comm
    monkeypatch.setattr(trainer_module, "LOG_PERIOD", 3)  # the engine logs every 20 steps; 3 here, for time
    log_period = trainer_module.LOG_PERIOD
    trainer.data_iter = iter(build_train_loader(cfg))
    trainer.storage = EventStorage(0)
    steps = log_period + 1
    for i in range(steps):
        trainer.iter = trainer.storage.iter = i
        trainer.run_step()
    # every step: backward, then the one flag; the losses: one reduction at LOG_PERIOD steps
    per_step = [e for e in events if e != "reduce_mean_tensor"]
    assert per_step == ["backward", "all_max"] * steps
    assert events.count("reduce_mean_tensor") == 1 and "reduce_mean" not in events
    at = events.index("reduce_mean_tensor")
    assert events[:at].count("all_max") == log_period
    assert len(trainer.storage.history["total_loss"]) == log_period  # every step's losses, logged at once
    assert len(trainer._pending_losses) == 1


def test_non_finite_loss_stops_before_the_update(tmp_path, monkeypatch):
    cfg = load_config(CONFIGS / "demo" / "scratch_gn_r18_tiny.yaml",
                      ["SOLVER.IMS_PER_BATCH", "2", "SOLVER.REFERENCE_IMS_PER_BATCH", "2", "OUTPUT_DIR", str(tmp_path)])
    trainer = Trainer(cfg)
    trainer.data_iter = iter(build_train_loader(cfg))
    trainer.storage = EventStorage(0)
    model = trainer.model
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: {**forward(*a, **k), "loss_mask": torch.tensor(float("nan"))})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(FloatingPointError, match=r"non-finite at iteration 1: .*loss_mask=nan"):
        trainer.run_step()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
