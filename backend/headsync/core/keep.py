"""What a long-lived process keeps from one job to the next: the latest value of each slot, rebuilt when
its key changes.

Off by default, so the command line and a per-job worker build everything afresh, exactly as before. The
service's warm worker (:mod:`headsync.service.warm`) turns it on: a Preview Frame then finds the model,
the audio features of its dialogue and the hand detector already loaded, and loads them again only
when the files behind them change (the key holds their size and modification time).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Hashable, TypeVar

T = TypeVar("T")

_on = False
_slots: dict[str, tuple[Hashable, Any]] = {}


def enable(on: bool = True) -> None:
    """Keep values from now on (``on``), or forget them all and build every time."""
    global _on
    _on = bool(on)
    if not _on:
        _slots.clear()


def kept(slot: str, key: Hashable, build: Callable[[], T]) -> T:
    """The value of ``slot`` built for ``key``: ``build()`` unless it was built for an equal key before.

    One value per slot (the latest), so a process that moves to another subject holds one model, not two;
    the old value is dropped before the new one is built. When keeping is off, always ``build()``."""
    if not _on:
        return build()
    hit = _slots.get(slot)
    if hit is not None and hit[0] == key:
        return hit[1]
    _slots.pop(slot, None)
    value = build()
    _slots[slot] = (key, value)
    return value


def file_key(path: str | os.PathLike | None) -> tuple[str, int, int] | None:
    """What identifies a file's content for :func:`kept`: (resolved path, size, mtime in ns); None when
    ``path`` is None or missing (a missing file is built for, and fails, every time)."""
    if path is None:
        return None
    p = Path(path).resolve()
    try:
        st = p.stat()
    except OSError:
        return None
    return str(p), st.st_size, st.st_mtime_ns
