"""Logging set-up for a rank (console + OUTPUT_DIR/log.txt) and log-once messages."""
import logging
import os
import sys

from .rundir import RunDir


def setup_logging(output_dir: str = None, rank: int = 0) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_rethink", False):
            root.removeHandler(h)
    tag = f" r{rank}" if rank else ""
    fmt = logging.Formatter(f"[%(asctime)s %(name)s{tag}] %(message)s", datefmt="%m/%d %H:%M:%S")
    handlers = [logging.StreamHandler(sys.stderr)]
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        handlers.append(logging.FileHandler(RunDir(output_dir).log_file(rank)))
    for h in handlers:
        h.setFormatter(fmt)
        h.setLevel(logging.INFO if rank == 0 else logging.WARNING)
        h._rethink = True
        root.addHandler(h)
    root.setLevel(logging.INFO)


_logged_once = set()


def log_once(log: logging.Logger, key, level: int, msg: str, *args) -> None:
    """Log a message once per process for `key` (e.g. one summary per dataset)."""
    if key in _logged_once:
        return
    _logged_once.add(key)
    log.log(level, msg, *args)
