"""Curves and table from generated runs, including a requeued run that repeats iterations."""
import csv
import json

import pytest

from rethink.config import load_config
from rethink.curves import plot_curves
from rethink.engine.events import read_metrics
from rethink.report import build_table, write_table
from rethink.runs import find_runs

from .conftest import CONFIGS


def make_run(root, name, config, seed, evals, overrides=(), requeue_at=None, extra_lines=()):
    d = root / name
    d.mkdir(parents=True)
    cfg = load_config(CONFIGS / config, ["SOLVER.SCHEDULE_UNIT", "100", "SOLVER.SCHEDULE", "2x", "SEED", str(seed),
                                         *overrides])
    (d / "config.yaml").write_text(cfg.dump())
    lines = []
    for it in range(20, cfg.SOLVER.MAX_ITER + 1, 20):
        lines.append({"iteration": it, "total_loss": 1.0 / it, "time": 0.5, "world_size": 2})
        if it in evals:
            lines.append({"iteration": it, "bbox/AP": evals[it][0], "segm/AP": evals[it][1], "bbox/AP50": 50.0})
        if requeue_at and it == requeue_at[0]:
            # preempted: the run restarts from an earlier checkpoint and repeats iterations, new values win
            for rit in range(requeue_at[1] + 20, it + 1, 20):
                lines.append({"iteration": rit, "total_loss": 2.0, "time": 0.5, "world_size": 2})
                if rit in requeue_at[2]:
                    lines.append({"iteration": rit, "bbox/AP": requeue_at[2][rit][0], "segm/AP": requeue_at[2][rit][1]})
    lines.extend(extra_lines)
    (d / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return d


def test_read_metrics_keeps_last_entry_per_iteration(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text('{"iteration": 20, "loss": 1}\n{"iteration": 40, "loss": 2, "bbox/AP": 5}\n'
                 '{"iteration": 40, "loss": 3}\n{"iteration": 20, "loss": 4}\n{"iteration": 60, "lo')
    m = read_metrics(str(p))
    assert m == [{"iteration": 20, "loss": 4}, {"iteration": 40, "loss": 3, "bbox/AP": 5}]
    p.write_text('{"iteration": 20}\nnot json\n{"iteration": 40}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2"):
        read_metrics(str(p))


def test_curves_csv_values_with_seeds_and_requeue(tmp_path):
    root = tmp_path / "sweep"
    evals_a = {100: (10.0, 9.0), 200: (20.0, 18.0)}
    make_run(root, "scratch_s1", "scratch_gn_r50.yaml", 1, evals_a)
    make_run(root, "scratch_s2", "scratch_gn_r50.yaml", 2, {100: (12.0, 11.0), 200: (22.0, 20.0)},
             requeue_at=(200, 100, {200: (24.0, 21.0)}))  # repeated iteration 200: final value 24
    make_run(root, "pre_s1", "pretrained_gn_r50.yaml", 1, {100: (30.0, 27.0), 160: (31.0, 28.0), 200: (33.0, 29.5)})
    runs = find_runs([str(root)])
    assert len(runs) == 3
    paths = plot_curves(runs, str(tmp_path / "out" / "ap_curves"))
    for ext in ("png", "pdf", "csv"):
        assert (tmp_path / "out" / f"ap_curves.{ext}").stat().st_size > 1000 or ext == "csv"
    rows = list(csv.DictReader(open(paths["csv"])))
    by = {(r["group"], int(r["iteration"])): r for r in rows}
    s200 = by[("scratch freeze_at=0", 200)]
    assert float(s200["box_ap_mean"]) == pytest.approx(22.0) and float(s200["box_ap_min"]) == 20.0
    assert float(s200["box_ap_max"]) == 24.0 and float(s200["mask_ap_mean"]) == pytest.approx(19.5)
    assert int(s200["n_seeds"]) == 2 and float(s200["x_1x"]) == 2.0
    assert float(by[("pretrained freeze_at=2", 160)]["box_ap_mean"]) == 31.0 and int(by[("pretrained freeze_at=2", 160)]["n_seeds"]) == 1
    assert sorted({r["group"] for r in rows}) == ["pretrained freeze_at=2", "scratch freeze_at=0"]  # varying axes only
    assert len(rows) == 5


def test_table_against_paper(tmp_path):
    root = tmp_path / "sweep"
    make_run(root, "a", "scratch_gn_r50.yaml", 1, {100: (10.0, 9.0), 200: (20.0, 18.0)},
             overrides=["SOLVER.SCHEDULE", "6x"])
    make_run(root, "b", "pretrained_gn_r50.yaml", 1, {100: (30.0, 27.0), 200: (25.0, 24.0)})
    rows = build_table(find_runs([str(root)]))
    a = next(r for r in rows if r["init"] == "scratch")
    assert a["schedule"] == "6x" and a["box_AP"] == 20.0 and a["paper_box_AP"] == 41.3 and a["delta_box"] == -21.3
    assert a["paper_mask_AP"] == 36.6 and a["delta_mask"] == -18.6 and a["iters_done"] == 600
    assert a["gpu_hours"] == pytest.approx(600 * 0.5 * 2 / 3600, abs=1e-3)
    b = next(r for r in rows if r["init"] == "pretrained")
    assert b["box_AP"] == 25.0 and b["box_AP_best"] == 30.0 and b["paper_box_AP"] == 40.3  # Table 1, 2x
    paths = write_table(rows, str(tmp_path / "table"))
    md = open(paths["md"]).read()
    assert "| scratch | GN | 50 |" in md and "-21.30" in md
