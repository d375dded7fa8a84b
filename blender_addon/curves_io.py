"""curves.json: build, validate, read and write (the round trip between Blender and the backend).

Standard library only (no bpy, no numpy needed; numpy arrays are accepted where lists are). Schema
(DESIGN.md)::

    {"schema": "headsync.curves/1", "fps": 25.0, "frame_start": 1, "frame_count": 250,
     "expression": {"names": [seven core names], "values": [[7 floats in 0..1] * frame_count]},
     "head_pose": {"rotation_euler_xyz": [[3 floats] * frame_count], "translation": [[3] * frame_count]},
     "source": "captured" | "generated" | "edited"}

``head_pose`` is optional; when present it has both keys: the rotation as Blender's XYZ Euler angles
(R = Rz @ Ry @ Rx) of the stabilised pose ``X_cam = R @ X_head + T`` and ``T``. On reading, the expression columns may come in any order as long as they are
exactly the seven core names; they are returned in the core order.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

SCHEMA = "headsync.curves/1"
#: The seven core expression coefficients, always in this order (ARKit names).
CORE_NAMES = (
    "browDownLeft",
    "browDownRight",
    "browInnerUp",
    "browOuterUpLeft",
    "browOuterUpRight",
    "eyeBlinkLeft",
    "eyeBlinkRight",
)
SOURCES = ("captured", "generated", "edited")


class CurvesError(ValueError):
    """A curves.json that does not follow the schema: ``message`` says where, ``hint`` what to do."""

    def __init__(self, message: str, hint: str = "fix or re-export the curves (Render Shot writes a valid file)"):
        super().__init__(message)
        self.message, self.hint = message, hint


def _tolist(x: Any) -> Any:
    return x.tolist() if hasattr(x, "tolist") else x


def _rows(x: Any, width: int, what: str, count: int, lo: float | None = None, hi: float | None = None
          ) -> list[list[float]]:
    x = _tolist(x)
    if not isinstance(x, (list, tuple)):
        raise CurvesError(f"{what} must be a list of rows")
    if len(x) != count:
        raise CurvesError(f"{what} has {len(x)} rows but frame_count is {count}")
    out = []
    for i, row in enumerate(x):
        row = _tolist(row)
        if not isinstance(row, (list, tuple)) or len(row) != width:
            raise CurvesError(f"{what}[{i}] must be a list of {width} numbers")
        r = []
        for j, v in enumerate(row):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise CurvesError(f"{what}[{i}][{j}] is not a number: {v!r}")
            v = float(v)
            if not math.isfinite(v):
                raise CurvesError(f"{what}[{i}][{j}] is not finite")
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                raise CurvesError(f"{what}[{i}][{j}] = {v:g} is outside [{lo:g}, {hi:g}]",
                                  "expression coefficients are between 0 and 1")
            r.append(v)
        out.append(r)
    return out


def validate(data: Any) -> dict[str, Any]:
    """A checked, normalised copy of a curves document (columns in the core order); raises CurvesError."""
    if not isinstance(data, dict):
        raise CurvesError("curves.json must hold a JSON object")
    if data.get("schema") != SCHEMA:
        raise CurvesError(f"unknown curves schema {data.get('schema')!r}", f"expected {SCHEMA!r}")
    fps = data.get("fps")
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
        raise CurvesError(f"fps must be a positive number, got {fps!r}")
    start = data.get("frame_start", 0)
    if isinstance(start, bool) or not isinstance(start, int):
        if isinstance(start, float) and start.is_integer():
            start = int(start)
        else:
            raise CurvesError(f"frame_start must be an integer, got {start!r}")
    count = data.get("frame_count")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise CurvesError(f"frame_count must be a positive integer, got {count!r}")
    expr = data.get("expression")
    if not isinstance(expr, dict):
        raise CurvesError("missing the 'expression' object")
    names = _tolist(expr.get("names"))
    if not isinstance(names, list) or sorted(map(str, names)) != sorted(CORE_NAMES) or len(names) != 7:
        raise CurvesError(f"expression.names must be the seven core names {list(CORE_NAMES)}, got {names!r}")
    values = _rows(expr.get("values"), 7, "expression.values", count, 0.0, 1.0)
    if list(names) != list(CORE_NAMES):
        order = [names.index(n) for n in CORE_NAMES]
        values = [[row[k] for k in order] for row in values]
    out: dict[str, Any] = {"schema": SCHEMA, "fps": float(fps), "frame_start": start, "frame_count": count,
                           "expression": {"names": list(CORE_NAMES), "values": values}}
    pose = data.get("head_pose")
    if pose is not None:
        if not isinstance(pose, dict):
            raise CurvesError("head_pose must be an object")
        p: dict[str, Any] = {}
        for key in ("rotation_euler_xyz", "translation"):
            if pose.get(key) is not None:
                p[key] = _rows(pose[key], 3, f"head_pose.{key}", count)
        if "rotation_euler_xyz" not in p or "translation" not in p:
            raise CurvesError("head_pose needs both rotation_euler_xyz and translation")
        out["head_pose"] = p
    source = data.get("source", "edited")
    if source not in SOURCES:
        raise CurvesError(f"source must be one of {list(SOURCES)}, got {source!r}")
    out["source"] = source
    return out


def make(values: Any, fps: float, frame_start: int = 1, rotation: Any = None, translation: Any = None,
         source: str = "edited", names: Sequence[str] = CORE_NAMES) -> dict[str, Any]:
    """Build a valid document from per-frame rows (``values``: frame_count x 7 in ``names`` order)."""
    values = [list(map(float, _tolist(r))) for r in _tolist(values)]
    doc: dict[str, Any] = {"schema": SCHEMA, "fps": float(fps), "frame_start": int(frame_start),
                           "frame_count": len(values), "expression": {"names": list(names), "values": values},
                           "source": source}
    if rotation is not None and translation is not None:
        doc["head_pose"] = {"rotation_euler_xyz": _tolist(rotation), "translation": _tolist(translation)}
    return validate(doc)


def clamp01(rows: Iterable[Sequence[float]]) -> tuple[list[list[float]], int]:
    """Rows clamped into [0, 1] (F-curve overshoot), and how many values were clamped."""
    n = 0
    out = []
    for r in rows:
        rr = []
        for v in r:
            v = float(v)
            if not math.isfinite(v):
                v, n = 0.0, n + 1
            elif v < 0.0:
                v, n = 0.0, n + 1
            elif v > 1.0:
                v, n = 1.0, n + 1
            rr.append(v)
        out.append(rr)
    return out, n


def dumps(doc: dict[str, Any]) -> str:
    return json.dumps(validate(doc), separators=(",", ":"))


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
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CurvesError(f"{path} does not exist", "was it moved? render the shot again") from None
    except (OSError, ValueError) as e:
        raise CurvesError(f"{path} is not readable JSON ({e.__class__.__name__})") from None
    try:
        return validate(data)
    except CurvesError as e:
        raise CurvesError(f"{path}: {e.message}", e.hint) from None
