"""A run directory belongs to one run: before a training writes OUTPUT_DIR, rank 0 takes its lock
(one writer at a time, utils.runlock), checks the recorded fingerprint against this run's config
(utils.fingerprint: a different run is refused, naming the keys), records it on the first start, and
removes the temporary files of writes a killed process left behind."""
import logging
import os
from typing import Optional

from ..utils.fingerprint import config_fingerprint, fingerprint_diff
from ..utils.rundir import RunDir
from ..utils.runlock import lock_run_dir
from ..utils.usererrors import UserError

logger = logging.getLogger(__name__)


class RunDirMismatch(RuntimeError, UserError):
    pass


def check_fingerprint(cfg, recorded: Optional[dict]) -> dict:
    """This run's fingerprint, after checking it against `recorded`, the one OUTPUT_DIR holds (None:
    none). Raises RunDirMismatch naming the directory and each differing key."""
    run = RunDir(cfg.OUTPUT_DIR)
    mine = config_fingerprint(cfg)
    if recorded is not None and recorded.get("sha256") != mine["sha256"]:
        diff = fingerprint_diff(recorded, mine)
        if diff:
            raise RunDirMismatch(
                f"{cfg.OUTPUT_DIR} belongs to another run: its {os.path.basename(run.fingerprint_file)} differs from "
                f"this config in {len(diff)} key(s): " + "; ".join(diff[:12]) + (" ..." if len(diff) > 12 else "") +
                ". Resuming would continue that run's checkpoint under other settings: give this run its own "
                f"OUTPUT_DIR (or, to adopt the directory for these settings, delete {run.fingerprint_file})")
    return mine


def claim_run_dir(cfg) -> None:
    """Rank 0, before writing anything in OUTPUT_DIR: lock, fingerprint check and record, clean-up."""
    run = RunDir(cfg.OUTPUT_DIR)
    os.makedirs(run.path, exist_ok=True)
    lock_run_dir(run.path)
    recorded = run.read_fingerprint()
    mine = check_fingerprint(cfg, recorded)
    if recorded is None:
        if run.has_started():
            logger.info("%s holds a run from before fingerprints: recording this config's", run.path)
        run.write_fingerprint(mine)
    for tmp in run.temp_files():
        logger.warning("Removing %s, left by a write that did not finish (a killed process)", tmp)
        os.remove(tmp)
