"""Atomic file writes: a temporary file in the same folder, fsync, then a rename, so a reader (or a
crash) sees either the old file or the complete new one, never a truncated one. The file gets the
mode a plain open() would give (0666 less the umask). A write that fails removes its temporary file;
when the disk or quota is full the error says which file, how much was needed and how much is free."""
import contextlib
import errno
import os
import shutil
import tempfile
from typing import Callable, Optional

_UMASK = os.umask(0)
os.umask(_UMASK)
_FULL = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(OSError):
    pass


def _full_disk_errno(exc: BaseException) -> Optional[int]:
    """ENOSPC / EDQUOT when `exc` or an exception it came from is that error (torch.save reports a
    failed write as a RuntimeError whose context is the OSError)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _FULL:
            return exc.errno
        exc = exc.__cause__ or exc.__context__
    return None


def _mb(n: float) -> str:
    return f"{n / 2**20:.1f} MB"


def atomic_write(path: str, write: Callable, binary: bool = True, size_hint: Optional[int] = None) -> str:
    """Call `write(f)` on a temporary file beside `path`, then rename it to `path`. `size_hint`: the
    bytes the file will take, for the message when the disk is full."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    written = 0
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            written = os.path.getsize(tmp)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        code = _full_disk_errno(e)
        if code is not None:
            st = os.statvfs(folder)
            free = st.f_bavail * st.f_frsize
            needed = f"{_mb(size_hint)} needed, " if size_hint else ""
            what = "disk quota exceeded" if code == errno.EDQUOT else "no space left on the device"
            raise DiskFullError(code, f"{path}: {what} while writing it ({needed}{_mb(written)} written before the "
                                f"failure, {_mb(free)} free in {folder}). The previous {os.path.basename(path)}, if "
                                "any, is intact and the temporary file was removed; free space and resume") from e
        raise
    return path


def atomic_write_bytes(path: str, data: bytes) -> str:
    return atomic_write(path, lambda f: f.write(data), size_hint=len(data))


def atomic_write_text(path: str, text: str) -> str:
    return atomic_write(path, lambda f: f.write(text), binary=False, size_hint=len(text.encode()))


def _tensor_bytes(obj) -> int:
    """Bytes of the tensors in a nested dict/list (what torch.save writes, give or take the pickle)."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.untyped_storage().nbytes()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def atomic_torch_save(obj, path: str) -> str:
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f), size_hint=_tensor_bytes(obj))


def atomic_copy(src: str, dst: str) -> str:
    with open(src, "rb") as s:
        return atomic_write(dst, lambda f: shutil.copyfileobj(s, f, 16 << 20), size_hint=os.path.getsize(src))
