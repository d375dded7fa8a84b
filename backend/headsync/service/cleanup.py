"""Removing what an interrupted job left half-written.

Every stage writes through :mod:`headsync.core.atomic` (``.NAME.tmp-PID`` files, and for folders
its ``staging_dir``, ``.NAME.tmp-PID`` and ``.NAME.old-PID`` for the moment between
moving the old folder away and the new one in). A worker killed with SIGKILL never runs its own
``except`` blocks, so the service sweeps the names carrying that worker's PID. Finished outputs (stages
marked done, checkpoints saved whole) are kept: they are what a re-run or a resumed train reuses.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Iterable


def _remove(p: Path) -> str | None:
    """Remove a file or folder (a link itself, never its target); None when it is gone, else why not."""
    failures: list[str] = []

    def failed(fn, path, info):  # noqa: ARG001 - shutil's onerror signature (Python 3.11)
        failures.append(f"{path}: {getattr(info[1], 'strerror', None) or info[1]}")

    try:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, onerror=failed)
        else:
            p.unlink(missing_ok=True)
    except OSError as e:
        failures.append(f"{p}: {e.strerror or e}")
    if os.path.lexists(p):
        return "; ".join(failures[:3]) or "still there"
    return None


def _report(p: Path, what: str = "removed") -> str:
    why = _remove(p)
    return f"{what} {p}" if why is None else f"could not remove {p} ({why})"


def sweep_temp(roots: Iterable[Path], pid: int | None, max_entries: int = 200_000,
               inside: Path | None = None) -> list[str]:
    """Remove ``.NAME.tmp-PID`` files/folders under ``roots``; put ``.NAME.old-PID`` back when NAME is gone.
    A root that leads out of ``inside`` (the workspace; a subject folder swapped for a link) is left alone.

    Returns one line per path: ``removed P``, ``restored P`` or ``could not remove P (why)``. Symbolic
    links are not followed.
    """
    if not pid:
        return []
    pat = re.compile(rf"^\.(?P<name>.+)\.(?P<kind>tmp|old)-{int(pid)}$")
    done: list[str] = []
    seen = 0
    ws = Path(inside).resolve() if inside is not None else None
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            continue
        if ws is not None and ws != root.resolve() and ws not in root.resolve().parents:
            done.append(f"not swept {root}: it leads out of the workspace (to {root.resolve()})")
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            seen += len(dirnames) + len(filenames)
            if seen > max_entries:
                return done
            for name in list(dirnames) + filenames:
                m = pat.match(name)
                if not m:
                    continue
                p = Path(dirpath) / name
                if m["kind"] == "old":
                    final = Path(dirpath) / m["name"]
                    if not final.exists():
                        try:
                            os.replace(p, final)
                            done.append(f"restored {final}")
                            continue
                        except OSError:
                            pass
                done.append(_report(p))
                if name in dirnames:
                    dirnames.remove(name)
    return done


def remove_owned(paths: Iterable[str], workspace: Path) -> list[str]:
    """Remove output folders a failed or cancelled job created (only ever inside the workspace); one line
    per folder, ``removed P`` or ``could not remove P (why)``."""
    ws = Path(workspace).resolve()
    done = []
    for s in paths:
        p = Path(s)
        try:
            rp = p.resolve()
        except (OSError, RuntimeError):
            continue
        if rp == ws or ws not in rp.parents:
            continue
        if p.exists() or p.is_symlink():
            done.append(_report(p))
    return done
