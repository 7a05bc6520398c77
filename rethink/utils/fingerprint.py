"""A run's fingerprint: the resolved config's values that decide what the run computes, flattened
to {"SOLVER.BASE_LR": 0.02, ...}, with their sha256. An OUTPUT_DIR records it at the first start
(RunDir.fingerprint_file) so that a second run with other settings cannot resume, overwrite or be
reported as that run; the differing keys are named.

Operational keys (where files go, how often to checkpoint or evaluate, loader processes) are not part
of it: changing them on a resume changes no trained weight.
"""
import hashlib
import json
from typing import Dict, List, Mapping

VERSION = 1
# Keys that may differ between the starts of one run. Keep the list short: everything else counts.
OPERATIONAL_KEYS = frozenset({
    "OUTPUT_DIR",                # where the run is, not what it is
    "DATALOADER.NUM_WORKERS",    # loader processes: the data order depends on seed, iteration and ranks only
    "SOLVER.CHECKPOINT_PERIOD",  # how often to save
    "SOLVER.CHECKPOINT_KEEP",    # how many periodic checkpoints to keep
    "SOLVER.CHECKPOINT_ITERS",   # extra saves (schedule forks add them to a trunk)
    "TEST.EVAL_PERIOD",          # how often to evaluate
    "TEST.EVALUATOR",            # COCO backends give identical numbers
    "VIS_PERIOD",
    "CUDNN_BENCHMARK",
})


def flatten(node: Mapping, prefix: str = "") -> Dict[str, object]:
    """{"A.B": value} for every leaf of a nested mapping; tuples become lists (as YAML reads them)."""
    flat = {}
    for k, v in node.items():
        if isinstance(v, Mapping):
            flat.update(flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = _plain(v)
    return flat


def _plain(v):
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def config_fingerprint(cfg: Mapping) -> dict:
    """{"version", "sha256", "config": {KEY: value}} of a resolved config (a CfgNode or nested dict)."""
    values = {k: v for k, v in sorted(flatten(cfg).items()) if k not in OPERATIONAL_KEYS}
    digest = hashlib.sha256(json.dumps(values, sort_keys=True, default=repr).encode()).hexdigest()
    return {"version": VERSION, "sha256": digest, "config": values}


def fingerprint_diff(old: dict, new: dict) -> List[str]:
    """"KEY: old -> new" for each key whose value differs between two fingerprints (a key only in
    one of them reads "(absent)" on the other side); [] when they describe the same run."""
    a, b = old.get("config", {}), new.get("config", {})
    lines = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k, "(absent)"), b.get(k, "(absent)")
        if va != vb:
            lines.append(f"{k}: {va!r} -> {vb!r}")
    return lines
