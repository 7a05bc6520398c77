"""submitit's local executor (`--cluster local`) seen from outside: its job id is the pid of the job's
controller (`/bin/sh -c '<setup> && python -m submitit.local._local <folder>'`), which runs one
process per task (`python -m submitit.core._submit <folder>`, SUBMITIT_LOCAL_JOB_ID=<job id> in its
environment) and ends when they end. A task killed by a signal (SIGKILL, the OOM killer) writes no
result, so whether a job still runs is asked of the process table.

A pid is reused by the kernel once its process is gone: a process counts as the job only if it runs
submitit's controller or a task on this sweep's own `.submitit` folder, so an unrelated process that
got the pid later is not taken for the job.

The controller inherits the submitting process's stdout and stderr; kept, they would hold a pipe open
(`submit.py ... | tail` would wait for the jobs to end), so :func:`controller_setup` sends them to a
log file in the job's folder and reads stdin from /dev/null.
"""
import logging
import os
import shlex
from typing import List, Optional, Set

logger = logging.getLogger(__name__)

CONTROLLER_MODULE = "submitit.local._local"
TASK_MODULE = "submitit.core._submit"
JOB_ID_ENV = "SUBMITIT_LOCAL_JOB_ID"
CONTROLLER_LOG = "controller.log"


def controller_setup(folder: str) -> List[str]:
    """Shell lines run before the controller (submitit's `local_setup`): its stdout and stderr go to
    <folder with %j = the job id>/controller.log, its stdin is /dev/null. `$$` is the shell's pid, which
    submitit takes as the job id."""
    job_dir = "$$".join(shlex.quote(part) for part in folder.split("%j"))
    log = f"{job_dir}/{CONTROLLER_LOG}"
    return [f"mkdir -p {job_dir}", f"exec >>{log} 2>&1 </dev/null"]


def _read(path: str) -> Optional[bytes]:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:  # the process ended meanwhile, or it is another user's
        return None


def _environ_job_id(pid: str) -> Optional[str]:
    data = _read(f"/proc/{pid}/environ")
    for item in (data or b"").split(b"\0"):
        if item.startswith(JOB_ID_ENV.encode() + b"="):
            return item.split(b"=", 1)[1].decode(errors="replace")
    return None


def alive_jobs(submitit_dir: str) -> Optional[Set[str]]:
    """The ids of the local jobs of `submitit_dir` (a sweep's .submitit folder) that still have a
    controller or a task running; None where there is no /proc to ask (not Linux)."""
    if not os.path.isdir("/proc/self"):
        return None
    mark = os.path.abspath(submitit_dir).encode()
    alive: Set[str] = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        cmdline = _read(f"/proc/{pid}/cmdline")
        if not cmdline or mark not in cmdline:
            continue
        if CONTROLLER_MODULE.encode() in cmdline:
            alive.add(pid)  # the shell (the job id) or, if the shell exec'd it, the controller itself
            stat = _read(f"/proc/{pid}/stat") or b""
            fields = stat.rsplit(b")", 1)[-1].split()
            if len(fields) > 1:
                alive.add(fields[1].decode())  # its parent: the shell whose pid is the job id
        elif TASK_MODULE.encode() in cmdline:
            job = _environ_job_id(pid)  # a task outliving its controller still runs the job
            if job:
                alive.add(job)
    return alive


def job_alive(job_id: str, submitit_dir: str, alive: Optional[Set[str]] = None) -> Optional[bool]:
    """Whether local job `job_id` still runs (see :func:`alive_jobs`); None when that cannot be told."""
    alive = alive_jobs(submitit_dir) if alive is None else alive
    if alive is not None:
        return str(job_id) in alive
    try:  # no /proc: the pid alone (a reused pid reads as alive)
        os.kill(int(job_id), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return None
    return True


def task_error_tail(submitit_dir: str, job_id: str, lines: int = 3) -> str:
    """The last lines of task 0's stderr (what a killed task printed last), joined by ' | '."""
    path = os.path.join(submitit_dir, str(job_id), f"{job_id}_0_log.err")
    data = _read(path)
    if not data:
        return ""
    tail = [line.strip() for line in data.decode(errors="replace").splitlines() if line.strip()][-lines:]
    return " | ".join(tail)
