"""Curves and table from generated runs, including a requeued run that repeats iterations; run directories that
always plot: partial, older/newer and detectron2 configs, detectron2 metrics, bad metrics lines."""
import csv
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rethink.config import load_config
from rethink.engine.events import JSONWriter, read_metrics
from rethink.results.curves import plot_curves, reference_for
from rethink.results.report import build_table, write_table
from rethink.results.runs import RunSettings, find_runs, settings_from_config

from .conftest import CONFIGS, ROOT


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
    p.write_text('{"iteration": 20}\nnot json\n{"iteration": 40}\n{"iteration": 60, "lo{"iteration": 60}\n')
    assert read_metrics(str(p)) == [{"iteration": 20}, {"iteration": 40}]  # damaged lines skipped anywhere


def test_metrics_writer_after_a_truncated_line_starts_a_new_one(tmp_path, caplog):
    p = tmp_path / "metrics.jsonl"
    p.write_text('{"iteration": 20, "loss": 1}\n{"iteration": 40, "lo')  # killed mid-write
    JSONWriter(str(p)).write(40, {"loss": 2.0})  # the resumed run appends
    m = read_metrics(str(p))
    assert [(x["iteration"], x["loss"]) for x in m] == [(20, 1), (40, 2.0)]
    assert "metrics.jsonl:2: skipping a damaged line" in caplog.text


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
    row = by[("pretrained freeze_at=2", 160)]
    assert float(row["box_ap_mean"]) == 31.0 and int(row["n_seeds"]) == 1
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


def test_tta_metrics_in_table_and_curves(tmp_path):
    """The final evaluation's TTA AP ("bbox_TTA/AP", detectron2's suffix) becomes the table's box_AP_TTA /
    mask_AP_TTA and the curves' *_tta_* columns, on the runs that have it; runs without it leave them empty."""
    root = tmp_path / "sweep"
    tta = [{"iteration": 200, "bbox_TTA/AP": 23.5, "segm_TTA/AP": 21.25, "bbox_TTA/AP50": 40.0}]
    make_run(root, "a_s1", "scratch_gn_r50.yaml", 1, {100: (10.0, 9.0), 200: (20.0, 18.0)}, extra_lines=tta)
    make_run(root, "a_s2", "scratch_gn_r50.yaml", 2, {100: (12.0, 11.0), 200: (22.0, 20.0)},
             extra_lines=[{"iteration": 200, "bbox_TTA/AP": 25.5, "segm_TTA/AP": 22.75}])
    make_run(root, "b", "pretrained_gn_r50.yaml", 1, {100: (30.0, 27.0), 200: (25.0, 24.0)})
    runs = find_runs([str(root)])
    rows = build_table(runs)
    by_seed = {(r["init"], r["seed"]): r for r in rows}
    assert by_seed[("scratch", 1)]["box_AP_TTA"] == 23.5 and by_seed[("scratch", 1)]["mask_AP_TTA"] == 21.25
    assert by_seed[("scratch", 1)]["box_AP"] == 20.0  # the plain AP stays the plain one
    assert by_seed[("scratch", 2)]["box_AP_TTA"] == 25.5
    assert "box_AP_TTA" not in by_seed[("pretrained", 1)]
    paths = write_table(rows, str(tmp_path / "table"))
    md = open(paths["md"]).read().splitlines()
    header = [c.strip() for c in md[0].strip("|").split("|")]
    line = next(x for x in md[2:] if "| 1 |" in x and "scratch" in x)
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    assert cells[header.index("box_AP_TTA")] == "23.50" and cells[header.index("mask_AP_TTA")] == "21.25"
    assert next(r for r in csv.DictReader(open(paths["csv"])) if r["seed"] == "2")["box_AP_TTA"] == "25.5"
    curves = list(csv.DictReader(open(plot_curves(runs, str(tmp_path / "ap_curves"))["csv"])))
    end = next(r for r in curves if r["group"].startswith("scratch") and r["iteration"] == "200")
    assert float(end["box_ap_tta_mean"]) == pytest.approx(24.5) and float(end["box_ap_tta_max"]) == 25.5
    assert float(end["mask_ap_tta_min"]) == 21.25 and float(end["box_ap_mean"]) == pytest.approx(21.0)
    assert all(r["box_ap_tta_mean"] == "" for r in curves if r is not end)  # only the final evaluation has it
    # without any TTA metric there is no TTA column at all
    md_plain = open(write_table(build_table([r for r in runs if r.axes["init"] == "pretrained"]),
                                str(tmp_path / "plain"))["md"]).read()
    assert "box_AP" in md_plain and "TTA" not in md_plain


# --------------------------------------------------------------------------------------------------------------------
# run directories that always plot: partial and foreign configs, bad metrics lines, detectron2 runs
# --------------------------------------------------------------------------------------------------------------------
GOLDEN = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "detectron2-golden" / "model"


def _write_metrics(d, name, entries, tail=""):
    (d / name).write_text("".join(json.dumps(e) + "\n" for e in entries) + tail)


def _detectron2_run(root, name="d2_run"):
    """detectron2's own config.yaml and metrics.json of the golden fixture (losses at 0-based iterations 19..359,
    its final evaluation at MAX_ITER = 360), plus a synthetic periodic evaluation as detectron2 logs it after 180
    steps: at iteration 179, with NaN for an undefined metric."""
    d = root / name
    d.mkdir(parents=True)
    shutil.copy(GOLDEN / "config.yaml", d / "config.yaml")
    lines = (GOLDEN / "train_metrics.json").read_text().splitlines()
    mid = {"bbox/AP": 3.0, "bbox/AP50": 9.0, "bbox/APl": float("nan"), "iteration": 179, "segm/AP": 8.0}
    at = next(i for i, line in enumerate(lines) if json.loads(line)["iteration"] > 179)
    lines.insert(at, json.dumps(mid))  # json.dumps writes NaN, as detectron2's JSONWriter does
    (d / "metrics.json").write_text("\n".join(lines) + "\n")
    return d


def test_plot_partial_foreign_and_detectron2_runs_together(tmp_path, caplog):
    if not GOLDEN.is_dir():
        pytest.skip(f"detectron2 golden fixture not found at {GOLDEN} (it lives in ../shared/reference)")
    root = tmp_path / "runs"
    # 1. a full rethink run (scratch GN R50, 2x of a 100-iteration unit, seed 1)
    make_run(root, "full_s1", "scratch_gn_r50.yaml", 1, {100: (10.0, 9.0), 200: (20.0, 18.0)})
    # 2. a partial config.yaml (an older rethink wrote only these keys), same setting with seed 2; its metrics end
    #    in a truncated line (killed mid-write) that must not count
    d = root / "partial_s2"
    d.mkdir()
    (d / "config.yaml").write_text(
        "MODEL:\n  RESNETS:\n    NORM: GN\n  BACKBONE:\n    FREEZE_AT: 0\n"
        "DATASETS:\n  TRAIN: [coco_2017_train]\nSOLVER:\n  SCHEDULE: 2x\n  SCHEDULE_UNIT: 100\nSEED: 2\n")
    _write_metrics(d, "metrics.jsonl", [{"iteration": 20, "total_loss": 2.0, "time": 0.5},
                                        {"iteration": 100, "bbox/AP": 14.0, "segm/AP": 13.0},
                                        {"iteration": 200, "bbox/AP": 24.0, "segm/AP": 22.0}],
                   tail='{"iteration": 200, "bbox/AP": 99.0, "se')
    # 3. a pre-trained run whose config holds an unknown key and a value today's validation refuses
    d = make_run(root, "newer_pre_s1", "pretrained_gn_r50.yaml", 1, {100: (30.0, 27.0), 200: (33.0, 29.5)})
    raw = yaml.safe_load((d / "config.yaml").read_text())
    raw["MODEL"]["FUTURE_HEAD"] = {"ENABLED": True}
    raw["MODEL"]["BACKBONE"]["NAME"] = "build_resnet_backbone"
    (d / "config.yaml").write_text(yaml.safe_dump(raw))
    # 4. a detectron2 run directory
    _detectron2_run(root)

    out = tmp_path / "fig" / "ap_curves"
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "plot_curves.py"), str(root), "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"{root / 'partial_s2' / 'metrics.jsonl'}:4: ignoring truncated last line" in r.stderr
    assert "4 runs" in r.stderr
    assert (tmp_path / "fig" / "ap_curves.png").stat().st_size > 1000

    rows = list(csv.DictReader(open(f"{out}.csv")))
    by = {(row["group"], int(row["iteration"])): row for row in rows}
    # labels name the axes that vary: init, depth, schedule, FREEZE_AT and where the run comes from
    scratch = "scratch depth=50 2x freeze_at=0 source=rethink"
    pre = "pretrained depth=50 2x freeze_at=2 source=rethink"
    d2 = "scratch depth=18 0.0005x freeze_at=0 source=detectron2"
    assert sorted({row["group"] for row in rows}) == sorted([scratch, pre, d2])
    # the partial run is the second seed of the full one; its truncated line (99.0) is not there
    assert int(by[scratch, 200]["n_seeds"]) == 2 and float(by[scratch, 200]["box_ap_mean"]) == pytest.approx(22.0)
    assert float(by[scratch, 200]["box_ap_max"]) == 24.0 and float(by[scratch, 100]["mask_ap_min"]) == 9.0
    assert float(by[pre, 200]["box_ap_mean"]) == 33.0 and float(by[pre, 200]["x_1x"]) == 2.0
    # detectron2: evaluation after 180 steps (logged at 179) and the final one (logged at MAX_ITER 360)
    assert sorted(it for g, it in by if g == d2) == [180, 360]
    assert float(by[d2, 180]["box_ap_mean"]) == 3.0 and float(by[d2, 180]["mask_ap_mean"]) == 8.0
    assert float(by[d2, 360]["box_ap_mean"]) == pytest.approx(5.6162, abs=1e-4)
    assert float(by[d2, 360]["mask_ap_mean"]) == pytest.approx(15.9967, abs=1e-4)
    assert float(by[d2, 360]["x_1x"]) == pytest.approx(360 / (90000 * 16 / 2))  # 1x = 90k at batch 16, here 2

    table = {row["run"]: row for row in csv.DictReader(open(f"{out}_table.csv"))}
    assert len(table) == 4
    t = table[str(root / "d2_run")]
    assert (t["source"], t["init"], t["norm"], t["depth"], t["train"], t["freeze_at"], t["seed"]) == (
        "detectron2", "scratch", "GN", "18", "coco_2017_train", "0", "1")
    assert t["iters_done"] == "360" and t["max_iter"] == "360" and t["gpu_hours"] == ""
    assert float(t["box_AP"]) == pytest.approx(5.61625, abs=1e-5) and float(t["box_AP_best"]) == float(t["box_AP"])
    assert float(t["mask_AP"]) == pytest.approx(15.99670, abs=1e-5)
    assert float(t["box_AP50"]) == pytest.approx(19.302, abs=1e-3)
    p = table[str(root / "partial_s2")]
    assert (p["source"], p["schedule"], p["seed"], p["iters_done"], p["max_iter"], p["box_AP"]) == (
        "rethink", "2x", "2", "200", "200", "24.0")
    assert p["depth"] == "50"  # missing: detectron2's default
    n = table[str(root / "newer_pre_s1")]
    assert (n["init"], n["box_AP"], n["box_AP_best"], n["paper_box_AP"]) == ("pretrained", "33.0", "33.0", "40.3")
    md = open(f"{out}_table.md").read()
    assert "| scratch | GN | 18 | coco_2017_train | 0.0005x | 0 | detectron2 | 1 |" in md


def test_detectron2_iterations_and_lenient_metrics(tmp_path, caplog):
    """A detectron2 run written here (no golden needed): 0-based iterations shift by one, the final evaluation at
    MAX_ITER stays, NaN is undefined (None); bad lines anywhere are skipped with a warning naming file and line."""
    d = tmp_path / "d2"
    d.mkdir()
    (d / "config.yaml").write_text(
        "MODEL:\n  WEIGHTS: detectron2://ImageNetPretrained/FAIR/R-50-GN.pkl\n  RESNETS:\n    DEPTH: 101\n"
        "    NORM: SyncBN\n  META_ARCHITECTURE: GeneralizedRCNN\nSOLVER:\n  IMS_PER_BATCH: 64\n  MAX_ITER: 67500\n"
        "  STEPS: [52500, 62500]\nDATASETS:\n  TRAIN: [coco_2017_train]\nVERSION: 2\n")
    _write_metrics(d, "metrics.json", [
        {"iteration": 19, "total_loss": 3.0, "time": 0.4},
        {"iteration": 4999, "bbox/AP": 20.0, "bbox/APl": float("nan"), "segm/AP": 18.0},
        {"iteration": 4999, "total_loss": 1.0},
        "not an object",
        {"no_iteration": 1},
        {"iteration": 67499, "total_loss": 0.5},
        {"iteration": 67500, "bbox/AP": 41.0, "segm/AP": 37.0},
    ])
    with open(d / "metrics.json", "a") as f:
        f.write('{"iteration": 1\n{"iteration": 67500, "bbox/AP": 41.5}\n')  # a broken line mid-file, then a repeat
    caplog.set_level(logging.WARNING, logger="rethink.results.runs")
    [run] = find_runs([str(tmp_path)])
    assert run.source == "detectron2" and run.gpu_hours() is None
    assert run.axes == {"init": "pretrained", "norm": "SyncBN", "depth": 101, "train": "coco_2017_train",
                        "schedule": "3x", "freeze_at": 2, "source": "detectron2", "seed": -1}
    assert run.steps == [52500, 62500] and run.unit == 22500
    assert [m["iteration"] for m in run.metrics] == [20, 5000, 67500]
    assert run.metrics[1] == {"iteration": 5000, "bbox/AP": 20.0, "bbox/APl": None, "segm/AP": 18.0,
                              "total_loss": 1.0}
    assert run.metrics[2]["bbox/AP"] == 41.5 and run.metrics[2]["total_loss"] == 0.5
    messages = [r.getMessage() for r in caplog.records]
    path = str(d / "metrics.json")
    assert f"{path}:4: ignoring an entry without an integer 'iteration'" in messages
    assert f"{path}:5: ignoring an entry without an integer 'iteration'" in messages
    assert any(m.startswith(f"{path}:8: ignoring a line that is not JSON") for m in messages)
    assert f"{path}: 3 of 9 lines skipped" in messages
    ref = reference_for(run)
    assert ref is None  # no SyncBN R101 3x in the paper's tables


def test_lenient_config_defaults_base_and_unreadable(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="rethink.results.runs")
    # an empty config: every axis is detectron2's default
    assert settings_from_config({}) == RunSettings(
        init="scratch", norm="FrozenBN", depth=50, train="none", freeze_at=2, seed=-1, max_iter=40000,
        steps=[30000], unit=90000, ims_per_batch=16)
    # an unresolved rethink config: 6x written at batch 16, run at 64 (linear scaling rule), no MAX_ITER/STEPS
    s = settings_from_config({"SOLVER": {"SCHEDULE": "6x", "IMS_PER_BATCH": 64, "REFERENCE_IMS_PER_BATCH": 16}})
    assert (s.max_iter, s.steps, s.unit) == (135000, [120000, 130000], 22500)
    # wrong types warn (naming file and key) and fall back
    s = settings_from_config({"MODEL": {"BACKBONE": {"FREEZE_AT": "two"}, "RESNETS": {"DEPTH": "R50"}},
                              "SOLVER": {"MAX_ITER": [1]}, "SEED": 3}, "x/config.yaml")
    assert (s.freeze_at, s.depth, s.max_iter, s.seed) == (2, "R50", 40000, 3)
    msgs = [r.getMessage() for r in caplog.records]
    assert "x/config.yaml: cannot read MODEL.BACKBONE.FREEZE_AT = 'two' (_int expected); using 2" in msgs
    assert "x/config.yaml: cannot read SOLVER.MAX_ITER = [1] (_int expected); using 40000" in msgs

    root = tmp_path / "runs"
    # _BASE_ merged when it exists, a missing one only warns
    (root / "a").mkdir(parents=True)
    (root / "base.yaml").write_text("MODEL:\n  RESNETS:\n    DEPTH: 101\n    NORM: GN\nSEED: 7\n")
    (root / "a" / "config.yaml").write_text("_BASE_: ../base.yaml\nMODEL:\n  RESNETS:\n    NORM: SyncBN\n")
    (root / "b").mkdir()
    (root / "b" / "config.yaml").write_text("_BASE_: ../missing.yaml\nSEED: 4\n")
    (root / "c").mkdir()
    (root / "c" / "config.yaml").write_text("MODEL: [unclosed\n")  # not YAML: the run is skipped
    runs = {os.path.basename(r.path): r for r in find_runs([str(root)])}
    assert sorted(runs) == ["a", "b"]
    assert (runs["a"].axes["depth"], runs["a"].axes["norm"], runs["a"].axes["seed"]) == (101, "SyncBN", 7)
    assert runs["b"].axes["seed"] == 4 and runs["b"].metrics == []
    msgs = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"skipping run {root / 'c'}: {root / 'c' / 'config.yaml'}: not valid YAML") for m in msgs)
    assert any(f"{root / 'b' / 'config.yaml'}: _BASE_ " in m and "not found" in m for m in msgs)
    with pytest.raises(FileNotFoundError, match="no readable runs"):
        find_runs([str(root / "c")])


def test_table_compares_enhanced_runs_and_their_tta_with_the_paper(tmp_path):
    """A cascade run with train aug (configs/enhanced) is compared with Figure 5 / Table 3, and its
    final TTA AP with the paper's "+ test aug" number; a plain run of the same axes keeps Table 1/2."""
    root = tmp_path / "sweep"
    make_run(root, "cascade", "enhanced/scratch_gn_r101_cascade.yaml", 1, {900: (47.0, 40.0)},
             overrides=["SOLVER.SCHEDULE", "9x"],
             extra_lines=[{"iteration": 900, "bbox_TTA/AP": 49.0, "segm_TTA/AP": 42.0}])
    make_run(root, "standard", "enhanced/scratch_gn_r101.yaml", 1, {900: (45.5, 39.0)},
             overrides=["SOLVER.SCHEDULE", "9x"])
    rows = {r["run"].rsplit("/", 1)[-1]: r for r in build_table(find_runs([str(root)]))}
    c = rows["cascade"]
    assert (c["paper_box_AP"], c["paper_mask_AP"], c["delta_box"]) == (47.4, 40.5, -0.4)  # cascade + train aug
    assert c["paper_mask_AP_TTA"] == 42.5 and c["delta_mask_TTA"] == -0.5 and "Figure 5" in c["paper_source_TTA"]
    s = rows["standard"]
    assert (s["paper_box_AP"], s["paper_mask_AP"], s["delta_mask"]) == (45.0, 39.5, -0.5)  # train aug only
    assert "paper_mask_AP_TTA" not in s  # no TTA metrics, no TTA comparison
