"""Paper schedules ("Nx") and the linear scaling rule for batch sizes other than the reference."""
import re
from typing import Dict, Optional

from fvcore.common.config import CfgNode

_SCHEDULE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*x\s*$")


def parse_schedule(text: str) -> float:
    """'6x' -> 6.0, '0.5x' -> 0.5. Raises ValueError on anything else."""
    m = _SCHEDULE_RE.match(str(text))
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"SOLVER.SCHEDULE must look like '6x' or '0.5x' (a positive multiple of SCHEDULE_UNIT), "
                         f"got {text!r}")
    return float(m.group(1))


def schedule_steps(max_iter: int, unit: int) -> tuple:
    """LR drop iterations for a run of `max_iter` iterations: the paper's "last 60k and last 20k"
    (2/3 and 2/9 of a unit) for schedules of 2x and longer; for shorter ones the drops sit at 2/3 and
    8/9 of the run, which gives detectron2's 1x (60k, 80k). Depends only on max_iter and unit."""
    first = max_iter - min(round(unit * 2 / 3), round(max_iter / 3))
    second = max_iter - min(round(unit * 2 / 9), round(max_iter / 9))
    return (first, second)


def resolve_schedule(cfg: CfgNode, explicit: set) -> Dict[str, object]:
    """Fill SOLVER.MAX_ITER/STEPS from SOLVER.SCHEDULE (unless set explicitly), then apply the linear
    scaling rule when IMS_PER_BATCH differs from SOLVER.REFERENCE_IMS_PER_BATCH. Idempotent: the
    scaled config records REFERENCE_IMS_PER_BATCH = IMS_PER_BATCH. Returns what it did
    ({"schedule": "6x" or "", "scaled_from": the reference batch or 0}) for :func:`describe_schedule`."""
    s = cfg.SOLVER
    done = {"schedule": s.SCHEDULE if s.SCHEDULE and "SOLVER.MAX_ITER" not in explicit else "", "scaled_from": 0}
    if s.SCHEDULE:
        n = parse_schedule(s.SCHEDULE)
        if "SOLVER.MAX_ITER" not in explicit:
            s.MAX_ITER = int(round(n * s.SCHEDULE_UNIT))
        if "SOLVER.STEPS" not in explicit:
            s.STEPS = schedule_steps(s.MAX_ITER, s.SCHEDULE_UNIT)
    ref = s.REFERENCE_IMS_PER_BATCH
    if ref > 0 and ref != s.IMS_PER_BATCH:
        factor = s.IMS_PER_BATCH / ref
        s.BASE_LR = s.BASE_LR * factor
        s.MAX_ITER = int(round(s.MAX_ITER / factor))
        s.STEPS = tuple(int(round(x / factor)) for x in s.STEPS)
        s.WARMUP_ITERS = int(round(s.WARMUP_ITERS / factor))
        s.CHECKPOINT_PERIOD = int(round(s.CHECKPOINT_PERIOD / factor))
        s.SCHEDULE_UNIT = int(round(s.SCHEDULE_UNIT / factor))
        cfg.TEST.EVAL_PERIOD = int(round(cfg.TEST.EVAL_PERIOD / factor))
        s.REFERENCE_IMS_PER_BATCH = s.IMS_PER_BATCH
        done["scaled_from"] = ref
    return done


def describe_schedule(cfg: CfgNode, resolution: Optional[Dict[str, object]] = None) -> str:
    """The resolved schedule in one line: batch (and whether the linear scaling rule changed LR and
    iteration counts), LR, MAX_ITER, STEPS, warm-up, evaluation and checkpoint periods."""
    s, res = cfg.SOLVER, resolution or {}
    ref = res.get("scaled_from") or 0
    if ref:
        batch = (f"batch {s.IMS_PER_BATCH} (reference {ref}: LR x{s.IMS_PER_BATCH / ref:g}, "
                 f"iteration counts x{ref / s.IMS_PER_BATCH:g})")
    else:
        batch = f"batch {s.IMS_PER_BATCH} (not scaled)"
    sched = f" = {res['schedule']} of {s.SCHEDULE_UNIT}" if res.get("schedule") else ""
    return (f"schedule: {batch}, LR {s.BASE_LR:g}, MAX_ITER {s.MAX_ITER}{sched}, STEPS {tuple(s.STEPS)}, "
            f"warm-up {s.WARMUP_ITERS}, "
            f"{f'eval every {cfg.TEST.EVAL_PERIOD}' if cfg.TEST.EVAL_PERIOD > 0 else 'no periodic eval'}, "
            f"checkpoint every {s.CHECKPOINT_PERIOD}")
