from rethink.results.paper import PAPER, lookup


def test_lookup_prefers_table2_at_6x():
    r = lookup(50, "GN", "scratch", 6.0)
    assert (r.source, r.box_ap, r.mask_ap, r.box_ap50, r.mask_ap75) == ("Table 2", 41.3, 36.6, 61.8, 38.9)
    r = lookup(50, "GN", "pretrained", 6.0)
    assert (r.box_ap, r.mask_ap) == (41.1, 36.4)


def test_table1_schedules_and_less_data():
    assert lookup(101, "GN", "scratch", 3.0).box_ap == 41.0
    assert lookup(101, "GN", "pretrained", 5.0).box_ap == 41.9
    assert lookup(50, "GN", "scratch", 1.0) is None
    assert lookup(50, "GN", "scratch", train_images=1000).box_ap == 3.5
    assert lookup(50, "GN", "scratch", train_images=1000, recipe="scratch_tuned").box_ap == 5.4
    assert lookup(50, "GN", "scratch", train_images=1000, recipe="plain") is None  # no number for the plain recipe
    assert (lookup(50, "GN", "pretrained", train_images=3500).box_ap, lookup(50, "GN", "scratch", train_images=3500,
                                                                            recipe="retuned").box_ap) == (16.0, 9.3)
    assert lookup(50, "GN", "scratch", train_images=10000).iterations == 220000
    assert lookup(50, "GN", "pretrained", train_images=35000).source == "Sec. 5.2, Fig. 7 (middle)"
    assert lookup(50, "GN", "pretrained", train_images=10000).iterations == 60000
    assert lookup(50, "SyncBN", "scratch", 9.0) is None
    assert lookup(50, "SyncBN", "scratch", 9.0, include_zoo=True).mask_ap == 39.3


def test_table1_is_complete():
    assert len([r for r in PAPER if r.source == "Table 1"]) == 20


def test_enhanced_baselines_and_table3():
    from rethink.results.runs import config_settings

    tta = dict(cascade=True, train_aug=True, test_aug=True)
    assert lookup(50, "GN", "scratch", 9.0, **tta).mask_ap == 41.6
    assert lookup(50, "GN", "pretrained", 6.0, **tta).mask_ap == 40.9
    assert (lookup(101, "GN", "scratch", 9.0, **tta).mask_ap, lookup(101, "GN", "pretrained", 6.0, **tta).mask_ap) \
        == (42.5, 41.9)
    r = lookup(101, "GN", "scratch", 9.0, train_aug=True)
    assert (r.box_ap, r.box_ap50, r.mask_ap, r.mask_ap75) == (45.0, 65.7, 39.5, 42.1)
    assert lookup(101, "GN", "scratch", 9.0, cascade=True, train_aug=True).box_ap == 47.4
    assert lookup(101, "GN", "scratch", 6.0, train_aug=True) is None  # Figure 5's scratch runs are 9x
    x = dict(resnext="32x8d")
    assert [lookup(152, "GN", "scratch", 9.0, **x, **kw).box_ap for kw in
            (dict(train_aug=True), dict(cascade=True, train_aug=True), tta)] == [46.4, 48.6, 50.9]
    assert (lookup(152, "GN", "scratch", 9.0, **x, **tta).mask_ap75, lookup(152, "GN", "pretrained", 6.0, **x, **tta)
            .box_ap) == (46.8, 50.3)
    assert lookup(152, "GN", "scratch", 9.0, train_aug=True) is None  # a ResNet-152 is not the X152
    assert lookup(101, "GN", "scratch", 6.0).source == "Table 2"  # the plain runs still find Table 1/2
    raw = {"MODEL": {"ROI_HEADS": {"NAME": "CascadeROIHeads"}, "RESNETS": {"NUM_GROUPS": 32, "WIDTH_PER_GROUP": 8}},
           "INPUT": {"MIN_SIZE_TRAIN": [640, 672, 704, 736, 768, 800]}}
    assert config_settings(raw) == {"cascade": True, "train_aug": True, "recipe": "plain", "resnext": "32x8d"}
    raw = {"SOLVER": {"BASE_LR": 0.16, "GAMMA": 0.02, "IMS_PER_BATCH": 64, "REFERENCE_IMS_PER_BATCH": 64},
           "INPUT": {"MIN_SIZE_TRAIN": [800]}}
    assert config_settings(raw) == {"cascade": False, "train_aug": False, "recipe": "retuned", "resnext": ""}
