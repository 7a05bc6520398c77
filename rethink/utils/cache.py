"""The shared cache folder: where it is, content hashes memoised by file stat, canonical JSON bytes
for manifests, and an inter-process lock for building an entry once.

Environment:
    RETHINK_CACHE   cache folder (default ``~/.cache/rethink``): columnar annotation caches, subsets,
                    synthetic datasets and the sha256 memo. Read at call time, not import time.
"""
import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from typing import Callable, Iterator, Optional

from .atomic import atomic_write_bytes

logger = logging.getLogger(__name__)

_CACHE_ENV = "RETHINK_CACHE"


def cache_root() -> str:
    """The cache folder: ``$RETHINK_CACHE`` or ``~/.cache/rethink`` (absolute, not created)."""
    return os.path.abspath(os.path.expanduser(os.environ.get(_CACHE_ENV) or os.path.join("~", ".cache", "rethink")))


def _sha256_of_file(path: str, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def _memo_path(path: str) -> str:
    key = hashlib.sha1(os.path.abspath(path).encode("utf-8", "surrogateescape")).hexdigest()
    return os.path.join(cache_root(), "sha256", key + ".json")


def remember_sha256(path: str, digest: str, st: Optional[os.stat_result] = None) -> None:
    """Record `digest` as the sha256 of `path` as it is now (size, mtime_ns) in the memo."""
    st = st or os.stat(path)
    rec = {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    try:
        atomic_write_bytes(_memo_path(path), json.dumps(rec, sort_keys=True).encode())
    except OSError as e:  # a read-only cache must not stop anything: the memo is only a speed-up
        logger.debug("could not write the sha256 memo for %s: %s", path, e)


def file_sha256(path: str) -> str:
    """sha256 (hex) of a file's content, memoised in ``$RETHINK_CACHE/sha256/`` by (absolute path, size,
    mtime_ns), so unchanged files (e.g. a 450 MB annotation file opened by 8 ranks) are hashed once."""
    st = os.stat(path)
    memo = _memo_path(path)
    try:
        with open(memo) as f:
            rec = json.load(f)
        if (rec.get("path") == os.path.abspath(path) and rec.get("size") == st.st_size
                and rec.get("mtime_ns") == st.st_mtime_ns):
            return rec["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    digest = _sha256_of_file(path)
    remember_sha256(path, digest, st)
    return digest


def canonical_json_bytes(obj) -> bytes:
    """Deterministic JSON: sorted keys, fixed separators, ASCII only, trailing newline."""
    return (json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False) + "\n").encode()


@contextlib.contextmanager
def file_lock(path: str) -> Iterator[None]:
    """Exclusive advisory lock (``fcntl.flock``) on `path` (created if needed) for the duration of the
    block: one process builds a cache/subset while the others wait, then find it built. Builders also
    publish by atomic rename, so a file system without working flock still never exposes half a file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:  # e.g. some network file systems
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            logger.warning("file locks are not supported for %s (%s); relying on atomic renames", path, e)
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def build_directory_once(path: str, build: Callable[[str], None], what: str) -> None:
    """Make the directory `path` once, by one process: `build(tmp_dir)` fills a temporary directory beside
    it, which is then published by rename with a DONE marker; others wait on the lock and reuse it."""
    done = os.path.join(path, "DONE")
    if os.path.isfile(done):
        return
    with file_lock(path + ".lock"):
        if os.path.isfile(done):
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=os.path.basename(path) + ".tmp-", dir=os.path.dirname(path))
        try:
            build(tmp)
            with open(os.path.join(tmp, "DONE"), "w") as f:
                f.write("ok\n")
            shutil.rmtree(path, ignore_errors=True)
            os.rename(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        logger.info("generated %s in %s", what, path)
