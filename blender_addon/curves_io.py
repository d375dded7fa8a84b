"""curves.json on the Blender side: the shared format plus atomic file I/O and F-curve overshoot clamping.

The format and its rules (schema, frame_start default, range tolerance, column order) are the backend's
standard-library module ``headsync/curves_format.py``, which ``build_addon.py`` copies into the extension
as ``curves_format.py``; run from a checkout (the pure tests) it is loaded from ``backend/`` by path, never
by importing the backend package. Either way there is one definition and both sides accept the same files.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence


def _load_format():
    try:
        from . import curves_format  # the copy build_addon.py vendors into the extension
        return curves_format
    except ImportError:
        pass
    path = Path(__file__).resolve().parents[1] / "backend" / "headsync" / "curves_format.py"
    name = f"{__package__}.curves_format"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or not path.is_file():
        raise ImportError(f"curves_format.py is missing: build the extension with build_addon.py ({path})")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


fmt = _load_format()
SCHEMA, CORE_NAMES, SOURCES = fmt.SCHEMA, fmt.CORE_NAMES, fmt.SOURCES
CurvesError = fmt.CurvesError
validate, make, dumps, loads, looped = fmt.validate, fmt.make, fmt.dumps, fmt.loads, fmt.looped


def clamp01(rows: Iterable[Sequence[float]]) -> tuple[list[list[float]], int]:
    """Rows clamped into [0, 1] (F-curve overshoot between keys), and how many values were clamped."""
    n = 0
    out = []
    for r in rows:
        rr = []
        for v in r:
            v = float(v)
            if not math.isfinite(v) or v < 0.0:
                v, n = 0.0, n + 1
            elif v > 1.0:
                v, n = 1.0, n + 1
            rr.append(v)
        out.append(rr)
    return out, n


def write(path: str | os.PathLike, doc: dict[str, Any]) -> Path:
    """Validate and write atomically (a temporary file renamed into place)."""
    text = dumps(doc)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".curves-", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def read(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise CurvesError(f"{path} does not exist", "was it moved? render the shot again") from None
    except OSError as e:
        raise CurvesError(f"{path} is not readable ({e.__class__.__name__})") from None
    try:
        return loads(text)
    except CurvesError as e:
        raise CurvesError(f"{path}: {e.message}", e.hint) from None
