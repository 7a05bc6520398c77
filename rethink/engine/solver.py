"""SGD with detectron2's parameter groups and the warm-up multi-step LR schedule.

The LR is a pure function of the iteration (`lr_at`), so resuming or forking a run at any
iteration reproduces the schedule exactly and the scheduler holds no state of its own.
"""
import bisect

import torch
import torch.nn as nn

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def param_groups(model: nn.Module, cfg):
    """detectron2's ``get_default_optimizer_params``: WEIGHT_DECAY_NORM on the parameters of norm
    layers, then BIAS_LR_FACTOR (when != 1) and WEIGHT_DECAY_BIAS (when set) on every bias; frozen
    params are left out. Groups with equal settings are merged."""
    s = cfg.SOLVER
    groups, seen = [], set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            lr_factor, wd = 1.0, s.WEIGHT_DECAY
            if isinstance(module, _NORMS):
                wd = s.WEIGHT_DECAY_NORM
            # detectron2 applies the bias overrides after the norm rule, and only those that are set:
            # a norm's bias keeps WEIGHT_DECAY_NORM unless WEIGHT_DECAY_BIAS is given.
            if name == "bias":
                if s.BIAS_LR_FACTOR != 1.0:
                    lr_factor = s.BIAS_LR_FACTOR
                if s.WEIGHT_DECAY_BIAS is not None:
                    wd = s.WEIGHT_DECAY_BIAS
            groups.append({"params": [p], "weight_decay": wd, "lr_factor": lr_factor, "lr": s.BASE_LR * lr_factor})
    return _merge_groups(groups)


def _merge_groups(groups):
    merged = {}
    for g in groups:
        key = (g["weight_decay"], g["lr_factor"])
        merged.setdefault(key, {**g, "params": []})["params"].extend(g["params"])
    return list(merged.values())


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    s = cfg.SOLVER
    return torch.optim.SGD(param_groups(model, cfg), lr=s.BASE_LR, momentum=s.MOMENTUM, nesterov=s.NESTEROV,
                           weight_decay=s.WEIGHT_DECAY)


def lr_at(cfg, iteration: int) -> float:
    """Learning rate for the step that runs at 0-based `iteration` (WarmupMultiStepLR)."""
    s = cfg.SOLVER
    factor = s.GAMMA ** bisect.bisect_right(list(s.STEPS), iteration)
    if iteration < s.WARMUP_ITERS:
        if s.WARMUP_METHOD == "linear":
            alpha = iteration / s.WARMUP_ITERS
            factor *= s.WARMUP_FACTOR * (1 - alpha) + alpha
        else:
            factor *= s.WARMUP_FACTOR
    return s.BASE_LR * factor


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_factor", 1.0)


def clip_gradients(cfg, params) -> None:
    c = cfg.SOLVER.CLIP_GRADIENTS
    if not c.ENABLED:
        return
    for p in params:  # per parameter, as detectron2
        if p.grad is None:
            continue
        if c.CLIP_TYPE == "value":
            torch.nn.utils.clip_grad_value_(p, c.CLIP_VALUE)
        else:
            torch.nn.utils.clip_grad_norm_(p, c.CLIP_VALUE, c.NORM_TYPE)
