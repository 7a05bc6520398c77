"""A real local SLURM cluster (2 nodes, one host) for tests that go through submitit / sbatch.

Use it from a test module with::

    from tests.slurm import slurm_cluster  # noqa: F401  (session-scoped pytest fixture)

    @pytest.mark.slurm
    def test_something(slurm_cluster):
        ex = submitit.AutoExecutor(folder=..., cluster="slurm")
        ex.update_parameters(timeout_min=15, slurm_partition=slurm_cluster.partition)

The fixture runs ``tests/slurm/cluster.sh up`` once per session (a few seconds when the packages are installed,
~0.1 s when the cluster is already running), puts the cluster's environment (``SLURM_CONF``, ...) into
``os.environ`` for the test process (submitit calls sbatch/sacct/scancel with it) and yields a :class:`SlurmCluster`.
The cluster is left running afterwards (cheap to reuse) unless ``RETHINK_SLURM_TEARDOWN=1``.
Tests are skipped only when the SLURM packages are missing and cannot be installed (cluster.sh exits 77);
any other start-up failure is a test error carrying the daemon log tails.
"""
from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
from pathlib import Path

import pytest

CLUSTER_SH = Path(__file__).resolve().with_name("cluster.sh")
UNAVAILABLE_RC = 77  # cluster.sh: packages missing and not installable


class ClusterUnavailable(RuntimeError):
    """SLURM cannot be installed here (no apt, not root, apt failure)."""


@dataclasses.dataclass(frozen=True)
class SlurmCluster:
    state_dir: Path
    partition: str
    nodes: tuple[str, ...]
    env: dict[str, str]  # what env.sh exports (SLURM_CONF, RETHINK_SLURM_*)

    @property
    def slurm_conf(self) -> Path:
        return Path(self.env["SLURM_CONF"])

    def log_tail(self, lines: int = 20) -> str:
        """Tail of every daemon log, for failure messages."""
        out = []
        for f in sorted((self.state_dir / "log").glob("*.log")):
            text = f.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"----- {f}\n" + "\n".join(text))
        return "\n".join(out)


def read_env_file(path: Path) -> dict[str, str]:
    """Parse the ``export KEY='value'`` lines that cluster.sh writes to env.sh."""
    env: dict[str, str] = {}
    for line in Path(path).read_text().splitlines():
        words = shlex.split(line, comments=True)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            key, value = words[1].split("=", 1)
            env[key] = value
    return env


def _run_script(action: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(CLUSTER_SH), action], capture_output=True, text=True, timeout=timeout)


def cluster_up(timeout: float = 900) -> SlurmCluster:
    """Start (or reuse) the cluster. Raises ClusterUnavailable (rc 77) or RuntimeError."""
    try:
        proc = _run_script("up", timeout)
    except FileNotFoundError as e:  # no bash
        raise ClusterUnavailable(f"cannot run {CLUSTER_SH}: {e}") from e
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"{CLUSTER_SH} up did not finish in {timeout:.0f} s") from e
    output = (proc.stdout + proc.stderr)[-6000:]
    if proc.returncode == UNAVAILABLE_RC:
        raise ClusterUnavailable(f"local SLURM cluster unavailable: {output.strip().splitlines()[-1]}")
    if proc.returncode != 0:
        raise RuntimeError(f"{CLUSTER_SH} up failed (rc={proc.returncode}):\n{output}")
    state_dir = Path(os.environ.get("RETHINK_SLURM_DIR", "/tmp/rethink-slurm"))
    env = read_env_file(state_dir / "env.sh")
    return SlurmCluster(
        state_dir=Path(env.get("RETHINK_SLURM_DIR", state_dir)),
        partition=env.get("RETHINK_SLURM_PARTITION", "debug"),
        nodes=tuple(env.get("RETHINK_SLURM_NODES", "n1,n2").split(",")),
        env=env,
    )


def cluster_down(timeout: float = 120) -> None:
    _run_script("down", timeout)


@pytest.fixture(scope="session")
def slurm_cluster():
    """Session fixture: a running 2-node SLURM cluster with its environment loaded into os.environ."""
    try:
        info = cluster_up()
    except ClusterUnavailable as e:
        pytest.skip(str(e))
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)
    saved = {key: os.environ.get(key) for key in info.env}
    os.environ.update(info.env)
    try:
        yield info
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if os.environ.get("RETHINK_SLURM_TEARDOWN") == "1":
            cluster_down()
