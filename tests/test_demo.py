"""tools/demo.py's closing lines: the head-start / catch-up verdict on given AP curves (no training)."""
import importlib.util

import pytest

from .conftest import ROOT


@pytest.fixture(scope="module")
def demo():
    """tools/demo.py as a module (a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("demo_tool", ROOT / "tools" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def curve(*points):
    return [(it, {"scratch": s, "pretrained": p}) for it, s, p in points]


def test_figure1_shown(demo):
    lines = demo.verdict(curve((100, 4.0, 21.5), (200, 30.0, 36.0), (300, 48.0, 49.5), (400, 51.0, 50.2)))
    text = "\n".join(lines)
    assert "Head start: yes" in lines[0] and "leads by 17.5 box AP" in lines[0] and "iteration 100" in lines[0]
    assert "Catch-up: yes" in lines[1] and "until iteration 200" in lines[1] and "from iteration 300 on" in lines[1]
    assert "0.8 apart" in lines[1]
    assert "the paper's Figure 1 in small" in text and "does not show" not in text


def test_no_head_start(demo):
    lines = demo.verdict(curve((50, 2.6, 1.2), (300, 50.7, 51.9)))
    text = "\n".join(lines)
    assert "Head start: no" in lines[0] and "trails by 1.4" in lines[0]
    assert "nothing to catch up" in lines[1]
    assert "does not show the paper's Figure 1 picture (no head start and no catch-up)" in text


def test_no_catch_up(demo):
    lines = demo.verdict(curve((100, 5.0, 20.0), (300, 40.0, 47.0)))
    assert "Head start: yes" in lines[0]
    assert "Catch-up: no" in lines[1] and "pre-trained is ahead by more than 3" in lines[1]
    assert "(no catch-up)" in lines[2]


def test_thresholds_are_the_goal(demo):
    """A lead of exactly HEAD_START counts; a final gap of exactly CATCH_UP counts as caught up."""
    lines = demo.verdict(curve((100, 10.0, 10.0 + demo.HEAD_START), (300, 50.0, 50.0 - demo.CATCH_UP)))
    assert "Head start: yes" in lines[0] and "Catch-up: yes" in lines[1]
