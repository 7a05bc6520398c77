"""The run directory module: file names, which checkpoint resumes, the checkpoints present, metrics
(strict and lenient, rethink and detectron2), "is AP logged at iteration k", "is the run done"; and
that the checkpointer and the log set-up write where it says."""
import json
import logging
import os

import pytest
import torch

from rethink.engine.checkpoint import Checkpointer
from rethink.utils import rundir
from rethink.utils.logger import setup_logging
from rethink.utils.rundir import FINAL_CHECKPOINT, RunDir, checkpoint_name


def write_lines(path, entries, tail=""):
    path.write_text("".join(json.dumps(e) + "\n" for e in entries) + tail)


def test_paths_name_every_file(tmp_path):
    run = RunDir(tmp_path)
    assert os.fspath(run) == str(tmp_path) and repr(run) == f"RunDir({str(tmp_path)!r})"
    names = {
        run.config_file: "config.yaml", run.metrics_file: "metrics.jsonl", run.log_file(): "log.txt",
        run.log_file(3): "log.txt.rank3", run.last_checkpoint_file: "last_checkpoint",
        run.eval_results_file: "eval_results.json", run.fork_marker: "fork.json",
        run.detectron2_metrics_file: "metrics.json", run.checkpoint(5000): "model_0005000.pth",
        run.checkpoint(12_345_678): "model_12345678.pth", run.final_checkpoint: "model_final.pth",
        run.checkpoint_file("model_best"): "model_best.pth",
    }
    for path, name in names.items():
        assert path == str(tmp_path / name)
    assert run.tensorboard_dir == str(tmp_path)
    assert checkpoint_name(6) == "model_0000006" and FINAL_CHECKPOINT == "model_final"


def test_checkpoints_sorted_by_iteration_from_names(tmp_path):
    run = RunDir(tmp_path)
    assert run.checkpoints() == [] and RunDir(tmp_path / "absent").checkpoints() == []
    for name in ("model_0000120.pth", "model_0000012.pth", "model_12345678.pth", "model_final.pth",
                 ".model_0000130.pth.abc.tmp", "model_0000140.pth.bak", "model_14.pth", "last_checkpoint"):
        (tmp_path / name).write_text("x")
    assert run.checkpoints() == [(12, run.checkpoint(12)), (120, run.checkpoint(120)),
                                 (12345678, run.checkpoint(12345678))]


def test_last_checkpoint_is_what_the_pointer_names(tmp_path):
    run = RunDir(tmp_path)
    assert run.last_checkpoint() is None and not run.has_last_checkpoint()
    (tmp_path / "model_0000006.pth").write_text("x")
    (tmp_path / "model_0000012.pth").write_text("x")
    run.set_last_checkpoint(run.checkpoint(6))  # not the newest file: the pointer decides
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000006.pth"
    assert run.has_last_checkpoint() and run.last_checkpoint() == run.checkpoint(6)
    (tmp_path / "last_checkpoint").write_text("model_final.pth\n")
    with pytest.raises(FileNotFoundError, match="model_final.pth, which does not exist"):
        run.last_checkpoint()


def test_checkpointer_saves_and_resumes_where_the_run_dir_says(tmp_path):
    model = torch.nn.Linear(2, 2)
    ckpt = Checkpointer(model, str(tmp_path))
    assert ckpt.save(checkpoint_name(4), 4) == RunDir(tmp_path).checkpoint(4)
    ckpt.save(FINAL_CHECKPOINT, 8)
    run = RunDir(tmp_path)
    assert run.checkpoints() == [(4, run.checkpoint(4))]
    assert run.last_checkpoint() == ckpt.last_checkpoint() == run.final_checkpoint
    assert Checkpointer(torch.nn.Linear(2, 2), str(tmp_path)).resume_or_load("", resume=True) == 8
    assert not list(tmp_path.glob(".*.tmp"))


def test_metrics_dedupe_and_skip_damaged_lines_naming_them(tmp_path, caplog):
    run = RunDir(tmp_path)
    assert run.metrics() == [] and run.metrics(lenient=True) == [] and run.metrics_source() is None
    write_lines(tmp_path / "metrics.jsonl", [{"iteration": 20, "loss": 1}, {"iteration": 40, "loss": 2, "bbox/AP": 5},
                                             {"iteration": 40, "loss": 3}, {"iteration": 20, "loss": 4}],
                tail='{"iteration": 60, "lo')
    assert run.metrics_source() == "rethink"
    assert run.metrics() == [{"iteration": 20, "loss": 4}, {"iteration": 40, "loss": 3, "bbox/AP": 5}]
    assert run.metrics() == rundir.read_metrics(run.metrics_file)
    (tmp_path / "metrics.jsonl").write_text('{"iteration": 20}\nnot json\n{"iteration": 40}\n')
    assert run.metrics() == [{"iteration": 20}, {"iteration": 40}]
    assert "metrics.jsonl:2: skipping a damaged line" in caplog.text
    (tmp_path / "metrics.jsonl").write_text('{"iteration": 20}\n{"loss": 1}\n')
    assert run.metrics() == [{"iteration": 20}]
    assert "metrics.jsonl:2: skipping a damaged line (not an object with an integer 'iteration')" in caplog.text


def test_metrics_lenient_skips_bad_lines_with_a_warning(tmp_path, caplog):
    run = RunDir(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"iteration": 20, "bbox/AP": NaN}\nnot json\n{"loss": 1}\n'
                                            '{"iteration": 40.0, "bbox/AP": 7}\n{"iteration": 6')
    with caplog.at_level(logging.WARNING):
        m = run.metrics(lenient=True, max_iter=40)
    assert m == [{"iteration": 20, "bbox/AP": None}, {"iteration": 40, "bbox/AP": 7}]
    assert "metrics.jsonl:2" in caplog.text and "metrics.jsonl:3" in caplog.text
    assert "3 of 5 lines skipped" in caplog.text


def test_detectron2_metrics_are_read_in_completed_iterations(tmp_path):
    run = RunDir(tmp_path)
    write_lines(tmp_path / "metrics.json", [{"iteration": 19, "total_loss": 1.0}, {"iteration": 4999, "bbox/AP": 3.0},
                                            {"iteration": 89999, "loss": 0.5}, {"iteration": 90000, "bbox/AP": 9.0}])
    assert run.metrics_source() == "detectron2"
    assert run.metrics() == []  # strict readers (engine, status, branches) read rethink's file only
    assert [m["iteration"] for m in run.metrics(lenient=True, max_iter=90000)] == [20, 5000, 90000]
    write_lines(tmp_path / "metrics.jsonl", [{"iteration": 20, "total_loss": 2.0}])
    assert run.metrics_source() == "rethink" and run.metrics(lenient=True, max_iter=90000) == [
        {"iteration": 20, "total_loss": 2.0}]


def test_ap_logged_at(tmp_path):
    run = RunDir(tmp_path)
    assert not run.ap_logged_at(6)
    write_lines(tmp_path / "metrics.jsonl", [
        {"iteration": 6, "total_loss": 1.0}, {"iteration": 6, "bbox/AP": 1.0, "segm/AP": 2.0},
        {"iteration": 12, "total_loss": 0.9},  # preempted during the evaluation at 12: losses, no AP
        {"iteration": 18, "val_a/bbox/AP": 3.0}, {"iteration": 20, "bbox/AP50": 4.0}])
    assert run.ap_logged_at(6) and run.ap_logged_at(18)
    assert not run.ap_logged_at(12) and not run.ap_logged_at(20) and not run.ap_logged_at(7)


def test_is_done_needs_the_final_checkpoint_and_ap_at_the_end(tmp_path):
    run = RunDir(tmp_path)
    write_lines(tmp_path / "metrics.jsonl", [{"iteration": 6, "bbox/AP": 1.0}, {"iteration": 12, "total_loss": 1.0}])
    assert not run.is_done(12)
    (tmp_path / "model_final.pth").write_text("x")
    assert not run.is_done(12)  # trained to the end, not evaluated there yet
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"iteration": 12, "bbox/AP": 2.0}) + "\n")
    assert run.is_done(12) and not run.is_done(18)
    assert not run.is_done(12, metrics=[{"iteration": 12, "total_loss": 1.0}])  # metrics already read


def test_log_file_of_each_rank(tmp_path):
    root = logging.getLogger()
    try:
        setup_logging(str(tmp_path), rank=0)
        logging.getLogger("rethink.test").info("rank zero")
        setup_logging(str(tmp_path), rank=1)
        logging.getLogger("rethink.test").warning("rank one")
    finally:
        for h in [h for h in root.handlers if getattr(h, "_rethink", False)]:
            root.removeHandler(h)
            h.close()
    run = RunDir(tmp_path)
    assert "rank zero" in open(run.log_file()).read() and "rank one" in open(run.log_file(1)).read()


def test_checkpoint_retention_keeps_the_newest_and_the_fork_points(tmp_path):
    """SOLVER.CHECKPOINT_KEEP: each periodic save removes the older ones beyond the newest N, but
    never a fork point (SOLVER.CHECKPOINT_ITERS) nor model_final; 0 keeps all."""
    model = torch.nn.Linear(2, 2)
    ckpt = Checkpointer(model, str(tmp_path), keep=2, protected=(30,))
    for k in (10, 20, 30, 40, 50, 60):
        ckpt.save(checkpoint_name(k), k)
    ckpt.save(FINAL_CHECKPOINT, 70)
    run = RunDir(str(tmp_path))
    assert [k for k, _ in run.checkpoints()] == [30, 50, 60]
    assert os.path.isfile(run.final_checkpoint) and run.last_checkpoint() == run.final_checkpoint
    keep_all = Checkpointer(model, str(tmp_path / "all"))
    for k in (10, 20, 30):
        keep_all.save(checkpoint_name(k), k)
    assert [k for k, _ in RunDir(str(tmp_path / "all")).checkpoints()] == [10, 20, 30]
