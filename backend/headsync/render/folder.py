"""Where a render may write: the rule that keeps a render from replacing anything but an earlier render of
the same shot.

A render is written into a staging folder and then swapped in whole, so whatever was at ``out`` before
is gone afterwards. It may therefore go only into

* a folder that does not exist yet, or an empty one, outside every subject folder except in the
  ``renders/`` folder of its own subject; or
* a previous render of the same shot of the same subject: a folder holding this module's manifest
  (``render.json``) that names them.

A subject folder, the folder holding subjects, a workspace, another subject's renders, a render of
another shot or any folder of the user's with files in it are refused with a clear error. The command
line and the service check it at submission (``tasks.validate``) and the render checks it again just
before the swap.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..core.errors import UserError
from ..subject.folder import MANIFEST as SUBJECT_MANIFEST

#: The manifest a render leaves in its folder.
MANIFEST = "render.json"
SCHEMA = "headsync.render/1"
#: The subject's folder of renders (the default output goes to RENDERS/ID).
RENDERS = "renders"


def manifest(subject_root: Path, shot: str, **extra: Any) -> dict[str, Any]:
    """The ``render.json`` record of a render of ``shot`` by the subject at ``subject_root``."""
    return {"schema": SCHEMA, "subject": str(Path(subject_root).resolve()), "shot": shot, **extra}


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The render manifest of ``folder``, or None when it has none (or an unreadable one)."""
    try:
        m = json.loads((Path(folder) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) and m.get("schema") == SCHEMA else None


def _is_subject(folder: Path) -> bool:
    return (folder / SUBJECT_MANIFEST).is_file()


def check_render_folder(out: Path, subject_root: Path, shot: str) -> Path:
    """Raise :class:`UserError` unless a render of ``shot`` by ``subject_root`` may be written to ``out``.

    Both paths are resolved (symbolic links followed). Returns the resolved ``out``."""
    try:
        out = Path(out).expanduser().resolve()
        subject_root = Path(subject_root).expanduser().resolve()
    except (OSError, RuntimeError, ValueError) as e:
        raise UserError(f"render output {out}: not a usable path ({e})", "give the path of a new folder")
    renders = subject_root / RENDERS
    hint = (f"render into a new folder, e.g. {renders / 'NAME'} (or leave out the output folder: "
            f"{renders}/ID is used)")
    if out == subject_root or subject_root in out.parents and renders not in out.parents:
        raise UserError(f"render output {out} is inside the subject folder {subject_root}", hint)
    for up in out.parents:
        if _is_subject(up) and up != subject_root:
            raise UserError(f"render output {out} is inside another subject's folder ({up})", hint)
        if read_manifest(up) is not None:
            raise UserError(f"render output {out} is inside another render ({up})", hint)
    if subject_root.is_relative_to(out):
        raise UserError(f"render output {out} holds the subject folder {subject_root}", hint)
    if not os.path.lexists(out):
        return out
    if not out.is_dir():
        raise UserError(f"render output {out} exists and is not a folder", hint)
    m = read_manifest(out)
    if m is not None:
        if m.get("subject") == str(subject_root) and m.get("shot") == shot:
            return out  # an earlier render of this very shot: replaced
        raise UserError(f"render output {out} holds a render of another shot ({m.get('shot')!r} of "
                        f"{m.get('subject')}), which it would replace",
                        hint + "; or pass the same shot to re-render it")
    if _is_subject(out):
        raise UserError(f"render output {out} is a subject folder", hint)
    try:
        empty = next(os.scandir(out), None) is None
    except OSError as e:
        raise UserError(f"render output {out} cannot be read ({e.strerror})", hint)
    if not empty:
        raise UserError(f"render output {out} is a folder with files in it, which the render would replace", hint)
    return out
