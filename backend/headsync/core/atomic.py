"""Atomic writes: every file and folder HeadSync produces appears whole or not at all.

A writer fills a temporary sibling named ``.NAME.tmp-PID`` and renames it over ``NAME`` when complete
(``os.replace`` is atomic on one filesystem). A killed process leaves only the temporary name, which the
next run of the stage ignores and the service's cleanup (:mod:`headsync.service.cleanup`) removes by that
pattern; a folder being replaced is parked as ``.NAME.old-PID`` for the moment between the two renames.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np


def temporary_sibling(path: Path, kind: str = "tmp") -> Path:
    """``.NAME.KIND-PID`` next to ``path`` (the pattern the service's cleanup recognises)."""
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}")


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on error it is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def write_bytes_atomic(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` atomically, flushed to disk before the rename. With ``mode`` (e.g. 0o600)
    the file has that mode from its first byte, whatever the umask. The temporary name is created
    exclusively (a leftover, or a link planted there, is removed first, never written through)."""
    with atomic_file(path) as tmp:
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 if mode is None else mode)
        try:
            if mode is not None:
                os.fchmod(fd, mode)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)


def write_json_atomic(path: Path, obj: Any, mode: int | None = None) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_bytes_atomic(path, json.dumps(obj, indent=1).encode(), mode)


def save_npy_atomic(path: Path, arr: np.ndarray) -> None:
    """``np.save`` to ``path`` atomically."""
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        np.save(f, arr)


def save_npz_atomic(path: Path, **arrays: Any) -> None:
    """``np.savez`` to ``path`` atomically."""
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def torch_save_atomic(path: Path, obj: Any) -> None:
    """``torch.save`` to ``path`` atomically, so a kill never leaves half a checkpoint."""
    import torch

    with atomic_file(path) as tmp:
        torch.save(obj, tmp)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)$")


def sweep_dead(folder: Path) -> list[Path]:
    """Remove the temporary siblings in ``folder`` (not below) whose writer process is gone: what a
    SIGKILL (or a power cut) left. A parked ``.NAME.old-PID`` whose NAME is missing is put back instead.
    Returns the paths removed or restored."""
    done: list[Path] = []
    if not folder.is_dir():
        return done
    for p in folder.iterdir():
        m = _TEMP_NAME.match(p.name)
        if not m or int(m["pid"]) == os.getpid() or _alive(int(m["pid"])):
            continue
        final = folder / m["name"]
        if m["kind"] == "old" and not final.exists():
            os.replace(p, final)
        elif p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        done.append(p)
    return done


@contextmanager
def staging_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``final`` whole, on error it is removed.
    Leftovers of killed writers beside it are swept first (:func:`sweep_dead`)."""
    sweep_dead(final.parent)
    tmp = temporary_sibling(final)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        old = temporary_sibling(final, "old")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
