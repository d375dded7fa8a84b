"""curves.json (``headsync.curves/1``): the format and its rules, defined once for the backend and the add-on.

Standard library only (no numpy, no bpy, nothing of the headsync package): ``build_addon.py`` copies this
file into the Blender extension as ``curves_format.py``, so Blender and the backend accept exactly the same
files. The backend wraps it in :mod:`headsync.curves` (numpy arrays, :class:`headsync.errors.UserError`);
the add-on in ``blender_addon/curves_io.py`` (atomic file I/O). The schema (DESIGN.md)::

    {"schema": "headsync.curves/1", "fps": 25.0, "frame_start": 1, "frame_count": 250,
     "expression": {"names": [the seven core names], "values": [[7 floats in 0..1] x frame_count]},
     "head_pose": {"rotation_euler_xyz": [[3 floats] x frame_count], "translation": [[3] x frame_count]},
     "source": "captured" | "generated" | "edited"}

The rules, in one place:

* ``frame_start`` defaults to :data:`DEFAULT_FRAME_START` (1, Blender's first frame) and is an integer (an
  integral float such as ``5.0`` is accepted as 5);
* expression values lie in [0, 1]; values up to :data:`RANGE_TOLERANCE` outside (float round-off of an
  F-curve sampled at a key) are clamped into range, anything further is an error;
* ``head_pose`` is optional and has both keys when present: Blender's XYZ Euler angles in radians
  (``R = Rz @ Ry @ Rx``) of the stabilised pose ``X_cam = R @ X_head + T``, and ``T``;
* expression columns may come in any order as long as they are exactly the seven core names; a validated
  document has them in the core order;
* ``source`` defaults to ``edited``.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Sequence

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
DEFAULT_FRAME_START = 1
DEFAULT_SOURCE = "edited"
#: How far outside [0, 1] an expression value may be and still be accepted (then clamped).
RANGE_TOLERANCE = 1e-6
_RANGE_RE = re.compile(r"^\s*(-?\d+)\s*(?:-\s*(-?\d+))?\s*$")
DEFAULT_HINT = "export the curves again from Blender (Render Shot writes a valid file), or see DESIGN.md"


class CurvesError(ValueError):
    """A document that does not follow the schema: ``message`` says where, ``hint`` what to do."""

    def __init__(self, message: str, hint: str = DEFAULT_HINT):
        super().__init__(message)
        self.message, self.hint = message, hint


def _tolist(x: Any) -> Any:
    return x.tolist() if hasattr(x, "tolist") else x


def _rows(x: Any, width: int, what: str, count: int) -> list[list[float]]:
    x = _tolist(x)
    if not isinstance(x, (list, tuple)):
        raise CurvesError(f"{what} must be a list of rows")
    if len(x) != count:
        raise CurvesError(f"{what} has {len(x)} rows, expected {count} (one per frame)")
    out = []
    for i, row in enumerate(x):
        row = _tolist(row)
        if not isinstance(row, (list, tuple)) or len(row) != width:
            raise CurvesError(f"{what} must have rows of {width} numbers (row {i} does not)")
        r = []
        for j, v in enumerate(row):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise CurvesError(f"{what}[{i}][{j}] is not a number: {v!r}")
            v = float(v)
            if not math.isfinite(v):
                raise CurvesError(f"{what} has a non-finite value (NaN or infinity) in row {i}")
            r.append(v)
        out.append(r)
    return out


def _integer(v: Any, what: str) -> int:
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise CurvesError(f"{what} must be an integer, got {v!r}")
    return v


def validate(data: Any, n_frames: int | None = None) -> dict[str, Any]:
    """A checked, normalised copy of a parsed curves document; raises :class:`CurvesError`.

    ``n_frames``: the row count the caller needs (a render's frame count), or None for any. The copy has
    the columns in the core order, values as floats clamped into [0, 1], and every default filled in.
    """
    if not isinstance(data, dict):
        raise CurvesError("curves.json must hold a JSON object")
    if data.get("schema") != SCHEMA:
        raise CurvesError(f"unknown curves schema {data.get('schema')!r}", f"expected {SCHEMA!r}")
    fps = data.get("fps")
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
        raise CurvesError(f"fps must be a positive number, got {fps!r}")
    start = _integer(data.get("frame_start", DEFAULT_FRAME_START), "frame_start")
    count = data.get("frame_count")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise CurvesError(f"frame_count must be a positive integer, got {count!r}")
    if n_frames is not None and count != n_frames:
        raise CurvesError(f"frame_count is {count} but the audio gives {n_frames} frames at {fps:g} fps",
                          "sample the curves over exactly the shot's frames (audio duration x subject fps)")
    expr = data.get("expression")
    if not isinstance(expr, dict) or "names" not in expr or "values" not in expr:
        raise CurvesError("expression must be an object with 'names' and 'values'")
    names = _tolist(expr["names"])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise CurvesError("expression.names must be a list of strings")
    unknown = [n for n in names if n not in CORE_NAMES]
    missing = [n for n in CORE_NAMES if n not in names]
    if unknown or missing or len(names) != len(CORE_NAMES):
        raise CurvesError(f"expression.names must be the seven core names {list(CORE_NAMES)} once each"
                          + (f"; unknown: {unknown}" if unknown else "") + (f"; missing: {missing}" if missing else ""))
    values = _rows(expr["values"], len(CORE_NAMES), "expression.values", count)
    lo, hi = -RANGE_TOLERANCE, 1.0 + RANGE_TOLERANCE
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            if v < lo or v > hi:
                raise CurvesError(f"expression.values[{i}][{j}] = {v:g} is outside [0, 1]",
                                  "expression coefficients are between 0 and 1")
            if v < 0.0 or v > 1.0:
                row[j] = min(1.0, max(0.0, v))
    if names != list(CORE_NAMES):
        order = [names.index(n) for n in CORE_NAMES]
        values = [[row[k] for k in order] for row in values]
    out: dict[str, Any] = {"schema": SCHEMA, "fps": float(fps), "frame_start": start, "frame_count": count,
                           "expression": {"names": list(CORE_NAMES), "values": values}}
    pose = data.get("head_pose")
    if pose is not None:
        if not isinstance(pose, dict) or pose.get("rotation_euler_xyz") is None or pose.get("translation") is None:
            raise CurvesError("head_pose must be an object with both 'rotation_euler_xyz' and 'translation'")
        out["head_pose"] = {k: _rows(pose[k], 3, f"head_pose.{k}", count)
                            for k in ("rotation_euler_xyz", "translation")}
    source = data.get("source", DEFAULT_SOURCE)
    if source not in SOURCES:
        raise CurvesError(f"source must be one of {list(SOURCES)}, got {source!r}")
    out["source"] = source
    return out


def make(values: Any, fps: float, frame_start: int = DEFAULT_FRAME_START, rotation: Any = None,
         translation: Any = None, source: str = DEFAULT_SOURCE, names: Sequence[str] = CORE_NAMES
         ) -> dict[str, Any]:
    """A valid document from per-frame rows: ``values`` (frame_count, 7) in ``names`` order, optional
    ``rotation`` and ``translation`` (frame_count, 3) in radians and head units. Raises CurvesError."""
    rows = [list(r) for r in _tolist(values)]
    doc: dict[str, Any] = {"schema": SCHEMA, "fps": fps, "frame_start": frame_start, "frame_count": len(rows),
                           "expression": {"names": list(names), "values": rows}, "source": source}
    if rotation is not None and translation is not None:
        doc["head_pose"] = {"rotation_euler_xyz": _tolist(rotation), "translation": _tolist(translation)}
    return validate(doc)


def dumps(doc: dict[str, Any]) -> str:
    """The compact JSON text of a valid document (floats written exactly: ``repr`` round-trips)."""
    return json.dumps(validate(doc), separators=(",", ":"))


def loads(text: str | bytes, n_frames: int | None = None) -> dict[str, Any]:
    """Parse and validate curves.json text; raises :class:`CurvesError`."""
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise CurvesError(f"not valid JSON ({e})") from None
    return validate(data, n_frames)


def ping_pong(n_source: int, n_out: int) -> list[int]:
    """The source row of each of ``n_out`` output frames: 0, 1, ..., n-1, n-2, ..., 1, 0, 1, ... (no row
    repeated at the turns, so the motion has no stall). How a render without curves plays the captured
    performance (its plate and, by default, its expression and pose), and how Blender loops the captured
    curves over a new shot."""
    if n_source <= 1:
        return [0] * n_out
    period = 2 * (n_source - 1)
    return [k if k < n_source else period - k for k in (i % period for i in range(n_out))]


def looped(doc: dict[str, Any], n_out: int) -> dict[str, Any]:
    """A validated document's rows played back and forth (:func:`ping_pong`) over ``n_out`` frames; the
    same ``fps``, ``frame_start`` and ``source``. The rows are shared with ``doc``, not copied."""
    idx = ping_pong(doc["frame_count"], n_out)
    out = dict(doc, frame_count=n_out,
               expression={"names": list(doc["expression"]["names"]),
                           "values": [doc["expression"]["values"][i] for i in idx]})
    pose = doc.get("head_pose")
    if pose is not None:
        out["head_pose"] = {k: [pose[k][i] for i in idx] for k in ("rotation_euler_xyz", "translation")}
    return out


def parse_frame_range(text: str, frame_start: int, frame_count: int) -> tuple[int, int]:
    """``"A-B"`` (or ``"A"``) in the curves' own frame numbers -> (first, last) row indices, inclusive.

    The frames of a document are ``frame_start .. frame_start + frame_count - 1``. Raises CurvesError.
    """
    hint = f"give frames as A-B between {frame_start} and {frame_start + frame_count - 1}"
    m = _RANGE_RE.match(str(text))
    if m is None:
        raise CurvesError(f"frames {text!r} is not a range A-B of whole frame numbers", hint)
    a = int(m.group(1))
    b = int(m.group(2)) if m.group(2) is not None else a
    if a > b or a < frame_start or b > frame_start + frame_count - 1:
        raise CurvesError(f"frames {text!r} is outside the shot's frames "
                          f"{frame_start}-{frame_start + frame_count - 1}", hint)
    return a - frame_start, b - frame_start
