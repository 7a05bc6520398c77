"""One writer per run directory: the training that writes OUTPUT_DIR holds an exclusive flock on
its lock file (RunDir.lock_file) until its process ends. The kernel drops the lock when the process
dies, however it dies, so a crashed or killed run never leaves it stuck; the file's text (host, pid,
SLURM job) only names the holder in the refusal message."""
import errno
import fcntl
import json
import os
import socket
import time
from typing import Dict

from .rundir import RunDir
from .usererrors import UserError


class RunDirBusy(RuntimeError, UserError):
    pass


_HELD: Dict[str, int] = {}  # lock file -> fd, for the locks this process holds


def _holder_text(path: str) -> str:
    try:
        with open(path) as f:
            info = json.loads(f.read() or "{}")
    except (OSError, ValueError):
        return "another process"
    job = f", SLURM job {info['job']}" if info.get("job") else ""
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["since"])) if info.get("since") else "?"
    return f"pid {info.get('pid', '?')} on {info.get('host', '?')}{job}, since {since}"


def lock_run_dir(output_dir: str) -> str:
    """Take the run directory's lock for this process (kept until the process ends; taking it again
    in the same process is a no-op). Raises RunDirBusy naming the holder when another process has it."""
    path = RunDir(output_dir).lock_file
    key = os.path.abspath(path)
    if key in _HELD:
        return path
    os.makedirs(os.path.dirname(key), exist_ok=True)
    fd = os.open(key, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise RunDirBusy(f"{output_dir} is being written by another training ({_holder_text(key)}; lock "
                             f"{key}). Two trainings in one OUTPUT_DIR would mix their checkpoints and metrics: "
                             "wait for it to end, or give this one another OUTPUT_DIR") from None
        raise
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time(),
                             "job": os.environ.get("SLURM_JOB_ID", "")}).encode())
    _HELD[key] = fd
    return path


def unlock_run_dir(output_dir: str) -> None:
    """Release the lock this process holds on the run directory (no-op when it holds none)."""
    fd = _HELD.pop(os.path.abspath(RunDir(output_dir).lock_file), None)
    if fd is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
