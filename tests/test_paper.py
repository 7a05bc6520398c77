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
    assert lookup(50, "GN", "pretrained", train_images=10000).iterations == 60000
    assert lookup(50, "SyncBN", "scratch", 9.0) is None
    assert lookup(50, "SyncBN", "scratch", 9.0, include_zoo=True).mask_ap == 39.3


def test_table1_is_complete():
    assert len([r for r in PAPER if r.source == "Table 1"]) == 20
