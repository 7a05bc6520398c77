"""Model builder: detectron2 parameter parity module by module, norms, FREEZE_AT, STRIDE_IN_1X1,
initialisation, and a forward pass in both modes."""
import pytest
import torch
import torch.nn as nn
from torchvision.ops import FrozenBatchNorm2d

from rethink.config import load_config
from rethink.modeling import SyncBatchNorm, build_model

from .conftest import CONFIGS, tiny_cfg


def count(module):
    return sum(p.numel() for p in module.parameters())


# detectron2 builds R50-FPN GN Mask R-CNN for 80 classes with these counts (45,711,152 in total).
D2_R50_FPN_4CONV1FC = {
    "backbone.body": 23_508_032,
    "backbone.fpn": 3_346_432,
    "rpn.head": 593_935,
    "roi_heads.box_head": 15_207_424,
    "roi_heads.box_predictor": 411_025,
    "roi_heads.mask": 2_644_304,  # mask head + predictor
}


@pytest.mark.parametrize("config", ["scratch_gn_r50.yaml", "scratch_syncbn_r50.yaml", "pretrained_gn_r50.yaml"])
def test_parameter_parity_with_detectron2(config):
    model = build_model(load_config(CONFIGS / config, ["MODEL.BACKBONE.FREEZE_AT", "0"]))
    got = {
        "backbone.body": count(model.backbone.body),
        "backbone.fpn": count(model.backbone.fpn),
        "rpn.head": count(model.rpn.head),
        "roi_heads.box_head": count(model.roi_heads.box_head),
        "roi_heads.box_predictor": count(model.roi_heads.box_predictor),
        "roi_heads.mask": count(model.roi_heads.mask_head) + count(model.roi_heads.mask_predictor),
    }
    assert got == D2_R50_FPN_4CONV1FC
    assert count(model) == 45_711_152


@pytest.mark.parametrize("config", sorted(p.name for p in CONFIGS.glob("*.yaml") if not p.name.startswith("_")))
def test_every_shipped_config_builds(config):
    cfg = load_config(CONFIGS / config)
    model = build_model(cfg)
    depth = cfg.MODEL.RESNETS.DEPTH
    assert len(model.backbone.body.layer3) == {18: 2, 34: 6, 50: 6, 101: 23, 152: 36}[depth]
    norm = {"GN": nn.GroupNorm, "SyncBN": SyncBatchNorm, "FrozenBN": FrozenBatchNorm2d}[cfg.MODEL.RESNETS.NORM]
    if cfg.MODEL.RESNETS.DEPTH in (18, 34):
        assert not hasattr(model.backbone.body.layer4[0], "conv3")  # basic blocks
    trainable_stage = model.backbone.body.layer4[0]
    assert isinstance(trainable_stage.bn1, norm)
    if cfg.MODEL.FPN.NORM:
        assert any(isinstance(m, (nn.GroupNorm, SyncBatchNorm)) for m in model.backbone.fpn.modules())


def test_r101_count():
    # torchvision's resnet101 without fc has 42,500,160 parameters; detectron2's body is the same
    model = build_model(load_config(CONFIGS / "scratch_gn_r101.yaml"))
    assert count(model.backbone.body) == 42_500_160


@pytest.mark.parametrize("freeze_at,frozen", [(0, []), (1, ["conv1"]), (2, ["conv1", "layer1"]),
                                              (5, ["conv1", "layer1", "layer2", "layer3", "layer4"])])
def test_freeze_at(freeze_at, frozen):
    cfg = tiny_cfg("MODEL.RESNETS.NORM", "BN", "MODEL.BACKBONE.FREEZE_AT", str(freeze_at))
    body = build_model(cfg).backbone.body
    for name in ["conv1", "layer1", "layer2", "layer3", "layer4"]:
        params = list(getattr(body, name).parameters())
        if name in frozen:
            assert all(not p.requires_grad for p in params), name
        else:
            assert all(p.requires_grad for p in params), name
    assert isinstance(body.bn1, FrozenBatchNorm2d if freeze_at >= 1 else nn.BatchNorm2d)
    assert isinstance(body.layer1[0].bn1, FrozenBatchNorm2d if freeze_at >= 2 else nn.BatchNorm2d)
    assert isinstance(body.layer2[0].bn1, nn.BatchNorm2d) == (freeze_at < 3)


@pytest.mark.parametrize("stride_in_1x1", [True, False])
def test_stride_in_1x1(stride_in_1x1):
    cfg = tiny_cfg("MODEL.RESNETS.DEPTH", "50", "MODEL.RESNETS.RES2_OUT_CHANNELS", "256",
                   "MODEL.RESNETS.STRIDE_IN_1X1", str(stride_in_1x1))
    block = build_model(cfg).backbone.body.layer2[0]
    assert block.conv1.stride == ((2, 2) if stride_in_1x1 else (1, 1))
    assert block.conv2.stride == ((1, 1) if stride_in_1x1 else (2, 2))


def test_no_norm_convs_have_bias_and_norm_convs_do_not():
    body = build_model(tiny_cfg("MODEL.RESNETS.NORM", "")).backbone.body
    assert body.conv1.bias is not None and isinstance(body.bn1, nn.Identity)
    body = build_model(tiny_cfg()).backbone.body
    assert body.conv1.bias is None and isinstance(body.bn1, nn.GroupNorm) and body.bn1.num_groups == 32


def test_detectron2_initialisation():
    torch.manual_seed(0)
    model = build_model(load_config(CONFIGS / "scratch_gn_r50.yaml"))
    pred = model.roi_heads.box_predictor
    assert pred.cls_score.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert pred.bbox_pred.weight.std().item() == pytest.approx(0.001, rel=0.05)
    assert model.roi_heads.mask_predictor.mask_fcn_logits.weight.std().item() == pytest.approx(0.001, rel=0.1)
    assert model.rpn.head.conv[0][0].weight.std().item() == pytest.approx(0.01, rel=0.05)
    fc = model.roi_heads.box_head[-2]
    assert isinstance(fc, nn.Linear)
    bound = (3.0 / fc.in_features) ** 0.5  # kaiming_uniform(a=1): U(-sqrt(3/fan_in), sqrt(3/fan_in))
    assert fc.weight.abs().max().item() <= bound and fc.weight.abs().max().item() > 0.95 * bound
    conv = model.backbone.body.layer1[0].conv2  # MSRA fill: std = sqrt(2 / fan_out)
    fan_out = conv.out_channels * 9
    assert conv.weight.std().item() == pytest.approx((2.0 / fan_out) ** 0.5, rel=0.05)
    lateral = model.backbone.fpn.inner_blocks[0][0]
    assert lateral.bias is None  # FPN.NORM GN: no conv bias, like detectron2


def _batch():
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 96, 128, generator=g) * 255, torch.rand(3, 128, 96, generator=g) * 255]
    targets = []
    for img, label in zip(images, (1, 3)):
        h, w = img.shape[-2:]
        masks = torch.zeros(1, h, w, dtype=torch.uint8)
        masks[0, 20:60, 30:70] = 1
        targets.append(dict(boxes=torch.tensor([[30.0, 20.0, 70.0, 60.0]]), labels=torch.tensor([label]), masks=masks))
    return images, targets


def test_train_forward_gives_detectron2_loss_terms():
    model = build_model(tiny_cfg())
    model.train()
    images, targets = _batch()
    losses = model(images, targets)
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_cls"].item() == pytest.approx(torch.log(torch.tensor(4.0)).item(), abs=0.1)
    sum(losses.values()).backward()
    assert model.roi_heads.box_predictor.bbox_pred.weight.grad.abs().sum() > 0


def test_eval_outputs_in_requested_size_and_background_is_padding():
    model = build_model(tiny_cfg("MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"))
    model.eval()
    images, _ = _batch()
    with torch.no_grad():
        out = model(images, output_sizes=[(192, 256), (64, 48)])
        feats = torch.randn(5, 128)
        scores, deltas = model.roi_heads.box_predictor(feats)
        masks = model.roi_heads.mask_predictor(torch.randn(2, 64, 14, 14))
    assert scores.shape == (5, 4) and deltas.shape == (5, 16) and deltas[:, :4].abs().sum() == 0
    assert masks.shape == (2, 4, 28, 28) and masks[:, 0].abs().sum() == 0
    assert out[0]["masks"].shape[-2:] == (192, 256) and out[1]["masks"].shape[-2:] == (64, 48)
    assert len(out[0]["boxes"]) > 0
    assert out[0]["boxes"][:, 2].max() <= 256 and out[0]["boxes"][:, 3].max() <= 192
    assert out[0]["labels"].min() >= 1 and out[0]["labels"].max() <= 3


def test_mask_off_builds_faster_rcnn():
    model = build_model(tiny_cfg("MODEL.MASK_ON", "False"))
    assert not model.roi_heads.has_mask()


def test_anchors_on_fixed_fpn_strides_and_unrounded():
    """detectron2's anchors: P6 on a 64 px grid even when the padded side (800) is not a multiple of 64."""
    from torchvision.models.detection.image_list import ImageList

    gen = build_model(tiny_cfg()).rpn.anchor_generator
    sizes = [(200, 336), (100, 168), (50, 84), (25, 42), (13, 21)]  # 800 x 1344 input
    feats = [torch.zeros(1, 1, h, w) for h, w in sizes]
    anchors = gen(ImageList(torch.zeros(1, 3, 800, 1344), [(800, 1344)]), feats)[0]
    assert anchors.shape[0] == 3 * sum(h * w for h, w in sizes)
    p6 = anchors[-3 * 13 * 21:]
    centers_x = ((p6[:, 0] + p6[:, 2]) / 2).unique()
    assert centers_x[1] - centers_x[0] == 64 and centers_x.max() == 64 * 20
    cell = gen.cell_anchors[0]  # 32 px on P2, ratios 0.5, 1, 2: detectron2 does not round
    assert not torch.equal(cell, cell.round())
    assert torch.allclose((cell[:, 2] - cell[:, 0]) * (cell[:, 3] - cell[:, 1]), torch.full((3,), 1024.0))
