"""Deformable 3x3 convolution of the ResNet body (detectron2's DeformConv / ModulatedDeformConv) on
``torchvision.ops.deform_conv2d``.

The offsets (and, modulated, the mask logits) come from the block's own ``conv2_offset`` (a plain
3x3 conv with bias, zero-initialised, so a new block starts as an ordinary conv); this module takes
its raw output. Channel layout, as detectron2's kernels and torchvision's (the same):
- offsets: ``2 * 9 * G`` channels, deformable group g owning ``[18 g, 18 (g + 1))``, inside a group
  (dy, dx) for kernel tap k = i * 3 + j at channels 2k, 2k + 1;
- modulated: ``27 * G`` channels: the first ``18 G`` are those offsets, the last ``9 G`` the mask
  logits (sigmoid here), tap k of group g at ``9 g + k`` (detectron2 chunks the output in three and
  concatenates the first two, which is the same split).
Parameters: ``weight`` [out, in / groups, 3, 3] only (detectron2's DeformBottleneckBlock builds both
kinds with bias=False), so ``res3.0.conv2.weight`` of a detectron2 file loads as it is.
"""
import torch
import torch.nn as nn
from torchvision.ops import deform_conv2d


class DeformConv(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, padding: int = 1,
                 dilation: int = 1, groups: int = 1, deformable_groups: int = 1, modulated: bool = False):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"channels {in_channels} -> {out_channels} not divisible by groups {groups}")
        if in_channels % deformable_groups:
            raise ValueError(f"{in_channels} input channels not divisible by {deformable_groups} deformable groups")
        self.stride, self.padding, self.dilation = (stride, stride), (padding, padding), (dilation, dilation)
        self.groups, self.deformable_groups, self.modulated = groups, deformable_groups, modulated
        self.kernel_size = (kernel_size, kernel_size)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, kernel_size, kernel_size))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")  # detectron2's c2_msra_fill

    @property
    def offset_channels(self) -> int:
        """Channels `conv2_offset` must predict: (2 or 3) * kh * kw per deformable group."""
        per_tap = 3 if self.modulated else 2
        return per_tap * self.kernel_size[0] * self.kernel_size[1] * self.deformable_groups

    def forward(self, x: torch.Tensor, offset_and_mask: torch.Tensor) -> torch.Tensor:
        mask = None
        if self.modulated:
            n = 2 * self.kernel_size[0] * self.kernel_size[1] * self.deformable_groups
            offset, mask = offset_and_mask[:, :n], offset_and_mask[:, n:].sigmoid()
        else:
            offset = offset_and_mask
        return deform_conv2d(x, offset, self.weight, None, stride=self.stride, padding=self.padding,
                             dilation=self.dilation, mask=mask)

    def extra_repr(self) -> str:
        return (f"{self.weight.shape[1] * self.groups}, {self.weight.shape[0]}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, groups={self.groups}, deformable_groups={self.deformable_groups}, "
                f"modulated={self.modulated}")
