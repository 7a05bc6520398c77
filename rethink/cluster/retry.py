"""Which failures a requeue can fix, and the requeue itself, up to a limit per run.

Transient: what fails because of the machine, not the run: CUDA out of memory on one node (another
node or a later start has the memory), a lost NCCL / gloo connection or store (a peer's node failed,
the network flapped), a GPU that fell off the bus. A retry resumes from the last checkpoint.
Not transient: errors in the data, the config or the code (they would fail again at the same step,
since every start reproduces the same data order), a loss that became NaN (the same, exactly).

Rank 0 decides: its own error, or the loss of a peer (whose node or process died; the peer's own
log names its error). The count of requeues lives in the run directory (RunDir.retries_file), so it
survives the requeues it counts.
"""
import json
import logging
import os
import re
from typing import Optional

import torch
import torch.distributed as dist

from ..utils.atomic import atomic_write_text
from ..utils.rundir import RunDir

logger = logging.getLogger(__name__)

TRANSIENT_TYPES = (torch.cuda.OutOfMemoryError, dist.DistNetworkError, dist.DistStoreError)
TRANSIENT_MESSAGES = re.compile("|".join([
    r"CUDA out of memory",
    r"NCCL (communicator was aborted|error|Error).*(unhandled system error|remote process exited|connection|timeout)",
    r"Connection (closed|reset) by peer", r"Broken pipe", r"Connection refused",   # gloo / TCP store: a peer is gone
    r"Timed out waiting", r"Watchdog caught collective operation timeout",
    r"unspecified launch failure", r"uncorrectable ECC error", r"GPU is lost", r"CUDA-capable device.*unavailable",
]))


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` (or an exception it came from) is a failure a requeue can fix."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, TRANSIENT_TYPES) or TRANSIENT_MESSAGES.search(str(exc)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _record(output_dir: str) -> dict:
    """The run's retry record {"retries": n, "errors": [...]} ({} when there is none or it is unreadable)."""
    path = RunDir(output_dir).retries_file
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            record = json.load(f)
        return record if isinstance(record, dict) else {}
    except (OSError, ValueError):
        logger.warning("%s: unreadable, counting its retries as 0", path)
        return {}


def retries_so_far(output_dir: str) -> int:
    return int(_record(output_dir).get("retries", 0))


def record_retry(output_dir: str, exc: BaseException) -> int:
    """Count one more requeue for `exc` in the run directory; returns the new count."""
    record = _record(output_dir)
    n = int(record.get("retries", 0)) + 1
    errors = list(record.get("errors", []))
    errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}")
    atomic_write_text(RunDir(output_dir).retries_file, json.dumps({"retries": n, "errors": errors}, indent=1))
    return n


def retry_decision(exc: BaseException, output_dir: str, limit: int) -> Optional[str]:
    """Why to requeue after `exc` (a line for the log), or None: not transient, or `limit` reached."""
    if not is_transient(exc):
        return None
    done = retries_so_far(output_dir)
    if done >= limit:
        logger.error("Transient failure, but the run was requeued %d times already (limit %d): not requeueing",
                     done, limit)
        return None
    n = record_retry(output_dir, exc)
    return f"transient failure ({type(exc).__name__}): requeue {n} of at most {limit}; the run resumes from its last " \
           "checkpoint"
