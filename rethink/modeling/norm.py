"""Normalization layers by detectron2 name: "BN", "SyncBN", "FrozenBN", "GN" (32 groups), "" (none).

`SyncBN` means the same thing on every device: with a gloo process group (CPU) the batch statistics
are all-reduced here (differentiably), so that a CPU multi-process run normalizes over the global
batch exactly like the GPU one; on CUDA the trainer swaps these layers for torch's nn.SyncBatchNorm
(`to_torch_syncbn`). Without a process group it behaves as plain BatchNorm and says so once. It is a
BatchNorm2d subclass (same parameters and buffers), which DDP accepts on CPU, unlike nn.SyncBatchNorm.
"""
import logging

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.nn.functional import all_reduce as differentiable_all_reduce
from torchvision.ops import FrozenBatchNorm2d

logger = logging.getLogger(__name__)

GN_GROUPS = 32


class SyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose training statistics are those of the global batch over all ranks (CPU/gloo)."""

    _warned_single = False
    process_group = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size(self.process_group) > 1
        if not (self.training and distributed):
            if self.training and not SyncBatchNorm._warned_single:
                logger.info("SyncBN without a multi-process group: it behaves as BatchNorm over the local batch")
                SyncBatchNorm._warned_single = True
            return super().forward(x)
        return self._cpu_sync_forward(x)

    def _cpu_sync_forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        dims = [0] + list(range(2, x.dim()))
        count = torch.full((1,), x.numel() // c, dtype=x.dtype, device=x.device)
        stats = torch.cat([x.sum(dims), (x * x).sum(dims), count])
        stats = differentiable_all_reduce(stats, group=self.process_group or dist.group.WORLD)
        total = stats[-1]
        mean = stats[:c] / total
        var = stats[c : 2 * c] / total - mean * mean
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * (total / (total - 1).clamp(min=1))
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.detach(), alpha=m)
        shape = [1, c] + [1] * (x.dim() - 2)
        scale = torch.rsqrt(var + self.eps)
        if self.affine:
            scale = scale * self.weight
        out = (x - mean.reshape(shape)) * scale.reshape(shape)
        if self.affine:
            out = out + self.bias.reshape(shape)
        return out


def replace_modules(module: nn.Module, convert) -> nn.Module:
    """`convert(m)` gives a replacement for a module or None to keep it (and look inside); applied
    top-down. Returns the (possibly replaced) module."""
    new = convert(module)
    if new is not None:
        return new
    for name, child in module.named_children():
        replaced = replace_modules(child, convert)
        if replaced is not child:
            setattr(module, name, replaced)
    return module


def _torch_syncbn(m: nn.Module):
    if not isinstance(m, SyncBatchNorm):
        return None
    new = nn.SyncBatchNorm(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats).to(m.weight.device)
    new.load_state_dict(m.state_dict())
    return new.train(m.training)


def to_torch_syncbn(module: nn.Module) -> nn.Module:
    """Replace every SyncBatchNorm of ours by torch's nn.SyncBatchNorm (NCCL) with the same state;
    for CUDA multi-GPU training. Returns the converted module."""
    return replace_modules(module, _torch_syncbn)


def get_norm(name: str, channels: int):
    """A norm module for `channels` by detectron2 name, or None for ""."""
    if not name:
        return None
    if name == "BN":
        return nn.BatchNorm2d(channels)
    if name == "SyncBN":
        return SyncBatchNorm(channels)
    if name == "FrozenBN":
        return FrozenBatchNorm2d(channels)
    if name == "GN":
        return nn.GroupNorm(GN_GROUPS, channels)
    raise ValueError(f"unknown norm {name!r}; expected one of BN, SyncBN, FrozenBN, GN or ''")


def norm_factory(name: str):
    """A `norm_layer(channels)` callable for torchvision's builders (None for no norm)."""
    if not name:
        return None
    return lambda channels: get_norm(name, channels)


def _frozen_bn(m: nn.Module):
    if not isinstance(m, nn.modules.batchnorm._BatchNorm):
        return None
    frozen = FrozenBatchNorm2d(m.num_features, eps=m.eps)
    if m.affine:
        frozen.weight.copy_(m.weight.detach())
        frozen.bias.copy_(m.bias.detach())
    if m.track_running_stats:
        frozen.running_mean.copy_(m.running_mean)
        frozen.running_var.copy_(m.running_var)
    return frozen


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every (Sync)BatchNorm in `module` with a FrozenBatchNorm2d holding its statistics
    (what detectron2 does to frozen stages); returns the converted module."""
    return replace_modules(module, _frozen_bn)

