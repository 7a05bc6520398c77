"""ResNet-{18,34,50,101,152} + FPN (P2-P6) backbone, built as detectron2's build_resnet_fpn_backbone.

Module names follow torchvision (`body.conv1`, `body.bn1`, `body.layer1.0.conv1`, ...,
`body.layerN.0.downsample.{0,1}`), so torchvision ResNet state dicts load as they are; Caffe2 /
detectron2 names are mapped onto these by :mod:`rethink.weights`. Whatever MODEL.RESNETS.NORM is,
the norm after conv `k` is called `bnk` (as torchvision does for any norm_layer).

Deformable convolution (MODEL.RESNETS.DEFORM_ON_PER_STAGE, DEFORM_MODULATED, DEFORM_NUM_GROUPS): in
the stages it is on, every bottleneck's 3x3 `conv2` is a :class:`~.deform.DeformConv` fed by a sibling
`conv2_offset` (3x3 conv with bias, same stride, zero-initialised), as detectron2's
DeformBottleneckBlock (`res3.0.conv2_offset` there is `body.layer2.0.conv2_offset` here).
"""
from collections import OrderedDict

import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from .deform import DeformConv
from .norm import freeze_batchnorm, get_norm, norm_factory

BLOCKS_PER_STAGE = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}


def _norm_or_identity(norm: str, channels: int) -> nn.Module:
    return get_norm(norm, channels) or nn.Identity()


def _conv(cin, cout, k, stride=1, groups=1, norm=""):
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=not norm)


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride, norm, **_):
        super().__init__()
        self.conv1 = _conv(cin, cout, 3, stride, norm=norm)
        self.bn1 = _norm_or_identity(norm, cout)
        self.conv2 = _conv(cout, cout, 3, norm=norm)
        self.bn2 = _norm_or_identity(norm, cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(_conv(cin, cout, 1, stride, norm=norm), _norm_or_identity(norm, cout))

    def forward(self, x):
        out = F.relu_(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu_(out + shortcut)


class Bottleneck(nn.Module):
    def __init__(self, cin, cout, stride, norm, bottleneck, groups=1, stride_in_1x1=False, deform=False,
                 deform_modulated=False, deform_groups=1):
        super().__init__()
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = _conv(cin, bottleneck, 1, s1, norm=norm)
        self.bn1 = _norm_or_identity(norm, bottleneck)
        self.conv2_offset = None
        if deform:
            self.conv2 = DeformConv(bottleneck, bottleneck, 3, stride=s3, padding=1, groups=groups,
                                    deformable_groups=deform_groups, modulated=deform_modulated)
            self.conv2_offset = nn.Conv2d(bottleneck, self.conv2.offset_channels, 3, stride=s3, padding=1)
        else:
            self.conv2 = _conv(bottleneck, bottleneck, 3, s3, groups=groups, norm=norm)
        self.bn2 = _norm_or_identity(norm, bottleneck)
        self.conv3 = _conv(bottleneck, cout, 1, norm=norm)
        self.bn3 = _norm_or_identity(norm, cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(_conv(cin, cout, 1, stride, norm=norm), _norm_or_identity(norm, cout))

    def forward(self, x):
        out = F.relu_(self.bn1(self.conv1(x)))
        if self.conv2_offset is not None:
            out = F.relu_(self.bn2(self.conv2(out, self.conv2_offset(out))))
        else:
            out = F.relu_(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu_(out + shortcut)


class ResNet(nn.Module):
    """ResNet body returning res2..res5 as an OrderedDict keyed "0".."3" (torchvision's convention).
    `deform_on`: per stage res2..res5, whether its bottlenecks use deformable conv2."""

    def __init__(self, depth=50, norm="FrozenBN", stem_out=64, res2_out=256, groups=1, width_per_group=64,
                 stride_in_1x1=True, freeze_at=2, deform_on=(False, False, False, False), deform_modulated=False,
                 deform_groups=1):
        super().__init__()
        if depth in (18, 34) and any(deform_on):
            raise ValueError("MODEL.RESNETS.DEFORM_ON_PER_STAGE: ResNet-18/34 have no deformable blocks")
        self.conv1 = nn.Conv2d(3, stem_out, 7, stride=2, padding=3, bias=not norm)
        self.bn1 = _norm_or_identity(norm, stem_out)
        basic = depth in (18, 34)
        cin, cout = stem_out, res2_out
        bottleneck = groups * width_per_group
        for i, n in enumerate(BLOCKS_PER_STAGE[depth]):
            blocks = []
            for b in range(n):
                stride = 2 if (b == 0 and i > 0) else 1
                if basic:
                    blocks.append(BasicBlock(cin, cout, stride, norm))
                else:
                    blocks.append(Bottleneck(cin, cout, stride, norm, bottleneck, groups, stride_in_1x1,
                                             bool(deform_on[i]), deform_modulated, deform_groups))
                cin = cout
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            cout, bottleneck = cout * 2, bottleneck * 2
        self.out_channels = [res2_out * 2**i for i in range(4)]
        for m in self.modules():  # detectron2's c2_msra_fill; norms start at weight 1, bias 0
            if isinstance(m, (nn.Conv2d, DeformConv)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        for m in self.modules():  # offsets start at 0 (and modulation at sigmoid(0) = 0.5), as detectron2
            if isinstance(m, Bottleneck) and m.conv2_offset is not None:
                nn.init.zeros_(m.conv2_offset.weight)
                nn.init.zeros_(m.conv2_offset.bias)
        self.freeze(freeze_at)

    def freeze(self, freeze_at: int) -> None:
        """detectron2's FREEZE_AT: 0 nothing, 1 the stem, k the stem and res2..res{k}. Frozen stages
        get requires_grad=False and their BatchNorms become FrozenBatchNorm2d."""
        self.freeze_at = freeze_at
        names = ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4"]
        frozen_names = names[: freeze_at + 1] if freeze_at >= 1 else []
        for name in frozen_names:
            module = freeze_batchnorm(getattr(self, name))
            setattr(self, name, module)
            for p in module.parameters():
                p.requires_grad_(False)

    def forward(self, x):
        x = F.relu_(self.bn1(self.conv1(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        out = OrderedDict()
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
            out[str(i)] = x
        return out


class ResNetFPN(nn.Module):
    """`body` (ResNet) + `fpn` (torchvision FeaturePyramidNetwork, P2-P5 and P6 by max-pool);
    forward gives OrderedDict "0".."3" (P2-P5) and "pool" (P6), each with `out_channels` channels."""

    def __init__(self, body: ResNet, out_channels: int = 256, fpn_norm: str = ""):
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(body.out_channels, out_channels, extra_blocks=LastLevelMaxPool(),
                                         norm_layer=norm_factory(fpn_norm))
        self.out_channels = out_channels
        for m in self.fpn.modules():  # detectron2's c2_xavier_fill
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.fpn(self.body(x))


def build_resnet_fpn_backbone(cfg) -> ResNetFPN:
    r = cfg.MODEL.RESNETS
    body = ResNet(depth=r.DEPTH, norm=r.NORM, stem_out=r.STEM_OUT_CHANNELS, res2_out=r.RES2_OUT_CHANNELS,
                  groups=r.NUM_GROUPS, width_per_group=r.WIDTH_PER_GROUP, stride_in_1x1=r.STRIDE_IN_1X1,
                  freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT, deform_on=tuple(r.DEFORM_ON_PER_STAGE),
                  deform_modulated=r.DEFORM_MODULATED, deform_groups=r.DEFORM_NUM_GROUPS)
    return ResNetFPN(body, cfg.MODEL.FPN.OUT_CHANNELS, cfg.MODEL.FPN.NORM)
