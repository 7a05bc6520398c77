"""The classification network of backbone pre-training: the detector's ResNet body
(:class:`rethink.modeling.backbone.ResNet`, nothing frozen) + global average pooling + ``fc``."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbone import ResNet

_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)


class ResNetClassifier(ResNet):
    """Subclassing the body keeps the state-dict names exactly torchvision's (``conv1.weight``,
    ``layer1.0.bn1.weight``, ``fc.weight``), so MODEL.WEIGHTS reads the result as a torchvision ResNet."""

    def __init__(self, num_classes: int, depth=50, norm="GN", stem_out=64, res2_out=256, groups=1,
                 width_per_group=64, stride_in_1x1=False, zero_init_residual=True):
        super().__init__(depth=depth, norm=norm, stem_out=stem_out, res2_out=res2_out, groups=groups,
                         width_per_group=width_per_group, stride_in_1x1=stride_in_1x1, freeze_at=0)
        self.fc = nn.Linear(self.out_channels[-1], num_classes)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)
        if zero_init_residual:  # every block starts as the identity: stable training from scratch (Goyal et al.)
            last = "bn2" if depth in (18, 34) else "bn3"
            for name, module in self.named_modules():
                if name.endswith("." + last) and isinstance(module, _NORM_TYPES) and module.weight is not None:
                    nn.init.zeros_(module.weight)

    @classmethod
    def from_config(cls, cfg, num_classes: int, zero_init_residual: bool = True) -> "ResNetClassifier":
        """The body that MODEL.RESNETS of a detector config describes (DEPTH, NORM, STRIDE_IN_1X1,
        STEM_OUT_CHANNELS, RES2_OUT_CHANNELS, NUM_GROUPS, WIDTH_PER_GROUP), with `num_classes` outputs."""
        r = cfg.MODEL.RESNETS
        return cls(num_classes, depth=r.DEPTH, norm=r.NORM, stem_out=r.STEM_OUT_CHANNELS, res2_out=r.RES2_OUT_CHANNELS,
                   groups=r.NUM_GROUPS, width_per_group=r.WIDTH_PER_GROUP, stride_in_1x1=r.STRIDE_IN_1X1,
                   zero_init_residual=zero_init_residual)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res5 = super().forward(x)["3"]
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(res5, 1), 1))
