"""Errors a user can fix (a config key, a dataset file, MODEL.WEIGHTS, a sweep file, a run directory),
and how every command-line tool reports them: one message, exit status 2, no traceback.

The error classes of the layers (rethink.config.ConfigError, rethink.data.DatasetError,
rethink.weights.WeightsError, rethink.cluster.sweep.SweepError, the run-directory refusals) derive
from :class:`UserError`; their messages already name the key, the file or the id. A missing file
(FileNotFoundError, e.g. MODEL.WEIGHTS) is reported the same way.

    if __name__ == "__main__":
        sys.exit(run_cli(main))

The message goes to stderr (and to the run's log.txt when the run opened one), prefixed "error: ".
Set ``RETHINK_TRACEBACK=1`` to get the full traceback instead (to report a bug, or to see where it
was raised).
"""
import logging
import os
import sys
from typing import Callable

logger = logging.getLogger("rethink")

TRACEBACK_ENV = "RETHINK_TRACEBACK"
USER_ERROR_EXIT = 2  # as argparse's usage errors


class UserError(Exception):
    """An error whose message says what to fix; command-line tools print that message alone."""


USER_ERRORS = (UserError, FileNotFoundError)


def traceback_wanted() -> bool:
    return os.environ.get(TRACEBACK_ENV, "").strip().lower() not in ("", "0", "false", "no")


def one_line(e: BaseException) -> str:
    """How a user error is shown: its class, then its message."""
    return f"{type(e).__name__}: {e}"


def run_cli(main: Callable, *args, **kwargs) -> int:
    """Run a tool's `main(*args, **kwargs)` and return its exit status (None counts as 0). A user
    error (:data:`USER_ERRORS`) is logged as one message and gives exit status 2, unless
    $RETHINK_TRACEBACK asks for the traceback (then it propagates)."""
    try:
        rc = main(*args, **kwargs)
    except USER_ERRORS as e:
        if traceback_wanted():
            raise
        report(e)
        return USER_ERROR_EXIT
    return 0 if rc is None else int(rc)


def report(e: BaseException) -> None:
    """The message on stderr (whatever logging is set to), and in the run's log file when one is open."""
    message = f"error: {e}"
    record = logger.makeRecord(logger.name, logging.ERROR, __file__, 0, "%s", (message,), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):  # OUTPUT_DIR/log.txt (utils.logger.setup_logging)
            handler.handle(record)
    sys.stderr.write(f"{message}\n({TRACEBACK_ENV}=1 shows the traceback)\n")
    sys.stderr.flush()
