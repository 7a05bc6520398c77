"""Atomic file writes: a temporary file in the same folder, fsync, then a rename, so a reader (or a
crash) sees either the old file or the complete new one, never a truncated one."""
import contextlib
import os
import shutil
import tempfile
from typing import Callable


def atomic_write(path: str, write: Callable, binary: bool = True) -> str:
    """Call `write(f)` on a temporary file beside `path`, then rename it to `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_bytes(path: str, data: bytes) -> str:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str, text: str) -> str:
    return atomic_write(path, lambda f: f.write(text), binary=False)


def atomic_torch_save(obj, path: str) -> str:
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))


def atomic_copy(src: str, dst: str) -> str:
    with open(src, "rb") as s:
        return atomic_write(dst, lambda f: shutil.copyfileobj(s, f, 16 << 20))
