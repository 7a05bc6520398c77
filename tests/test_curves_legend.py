"""Curves a user can read: legend entries name what differs between the curves (or the run when nothing does) and
sit beside the axes, hiding no point; iteration ticks are whole numbers; the table names each row's run; a
config.yaml written as detectron2's hand-written configs write tuples (STEPS: (4000, 5000)) gives its LR drops."""
import csv
import logging

import matplotlib
import pytest

from rethink.results.curves import plot_curves
from rethink.results.report import build_table, write_table
from rethink.results.runs import find_runs

from .test_curves import make_run

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


@pytest.fixture
def figures(monkeypatch):
    """The figures plot_curves draws, kept open for inspection."""
    kept = []
    monkeypatch.setattr(plt, "close", lambda fig=None: kept.append(fig))
    yield kept
    monkeypatch.undo()
    plt.close("all")


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_legend_names_the_settings_that_differ_and_hides_no_point(tmp_path, figures):
    root = tmp_path / "sweep"
    evals = {100: (10.0, 9.0), 200: (20.0, 18.0)}
    make_run(root, "lr02", "scratch_gn_r50.yaml", 1, evals)
    make_run(root, "lr01", "scratch_gn_r50.yaml", 1, {100: (8.0, 7.0), 200: (15.0, 14.0)},
             overrides=["SOLVER.BASE_LR", "0.01"])
    make_run(root, "lr01_s2", "scratch_gn_r50.yaml", 2, {100: (9.0, 8.0), 200: (16.0, 15.0)},
             overrides=["SOLVER.BASE_LR", "0.01"])  # a second seed: the same curve
    paths = plot_curves(find_runs([str(root)]), str(tmp_path / "ap"))
    groups = {row["group"] for row in csv.DictReader(open(paths["csv"]))}
    assert groups == {"BASE_LR=0.01", "BASE_LR=0.02"}  # nothing else differs (the axes are shared)
    (fig,) = figures
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [ax.get_window_extent(renderer) for ax in fig.axes if ax.get_legend() is not None]
    assert len(boxes) == 2  # box AP, mask AP
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is None:
            continue
        curves = [t.get_text() for t in legend.get_texts() if not t.get_text().startswith("paper ")]
        assert curves == ["BASE_LR=0.01 (2 seeds)", "BASE_LR=0.02"]  # (and the paper's number as a star)
        box = legend.get_window_extent(renderer)
        assert not any(_overlaps(box, other) for other in boxes)  # on no plot
        assert 0 <= box.x0 and box.x1 <= fig.bbox.x1 + 1  # and in the figure


def test_iteration_ticks_are_whole_numbers(tmp_path, figures):
    d = tmp_path / "short"  # a few iterations: matplotlib alone would tick 4.0, 4.2, ..., 5.0
    d.mkdir()
    (d / "config.yaml").write_text("SOLVER:\n  STEPS: [4]\n  MAX_ITER: 5\n")
    (d / "metrics.jsonl").write_text('{"iteration": 4, "bbox/AP": 1.0}\n{"iteration": 5, "bbox/AP": 2.0}\n')
    plot_curves(find_runs([str(d)]), str(tmp_path / "ap"))
    (fig,) = figures
    fig.canvas.draw()
    ticks = [t for ax in fig.axes if ax.get_legend() is not None for t in ax.get_xticks()
             if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks), ticks


def test_one_curve_is_named_by_its_run_and_the_table_names_every_run(tmp_path, figures):
    root = tmp_path / "sweep"
    make_run(root / "exp_a", "s1", "scratch_gn_r50.yaml", 1, {100: (10.0, 9.0), 200: (20.0, 18.0)})
    runs = find_runs([str(root)])
    paths = plot_curves(runs, str(tmp_path / "ap"))
    assert {row["group"] for row in csv.DictReader(open(paths["csv"]))} == {"s1"}  # not "run"
    assert [t.get_text() for t in figures[0].axes[0].get_legend().get_texts()][0] == "s1"
    make_run(root / "exp_b", "s1", "pretrained_gn_r50.yaml", 1, {100: (30.0, 27.0), 200: (33.0, 29.0)})
    rows = build_table(find_runs([str(root)]))
    assert sorted(r["name"] for r in rows) == ["exp_a/s1", "exp_b/s1"]  # relative to the folder searched
    md = open(write_table(rows, str(tmp_path / "table"))["md"]).read().splitlines()
    assert md[0].startswith("| name | init |")
    assert any(line.startswith("| exp_a/s1 | scratch |") for line in md)
    assert any(line.startswith("| exp_b/s1 | pretrained |") for line in md)


def test_tuple_written_config_gives_the_lr_drops_it_says(tmp_path, caplog, figures):
    d = tmp_path / "d2_style"
    d.mkdir()
    (d / "config.yaml").write_text(  # as detectron2's hand-written configs write tuples
        "MODEL:\n  WEIGHTS: ''\n  RESNETS:\n    NORM: GN\nDATASETS:\n  TRAIN: (\"coco_2017_train\",)\n"
        "SOLVER:\n  STEPS: (4000, 5000)\n  MAX_ITER: 6000\n  IMS_PER_BATCH: 16\nSEED: 1\n")
    (d / "metrics.jsonl").write_text('{"iteration": 3000, "bbox/AP": 5.0}\n{"iteration": 6000, "bbox/AP": 9.0}\n')
    with caplog.at_level(logging.WARNING):
        (run,) = find_runs([str(d)])
    assert "cannot read" not in caplog.text
    assert run.steps == [4000, 5000] and run.settings.train == "coco_2017_train" and run.max_iter == 6000
    plot_curves([run], str(tmp_path / "ap"))
    ax = figures[0].axes[0]
    drops = sorted({line.get_xdata()[0] for line in ax.lines if line.get_linestyle() == ":"})
    assert drops == [4000, 5000]
