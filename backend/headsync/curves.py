"""curves.json (``headsync.curves/1``): the per-frame expression and head pose of a render.

The round trip with Blender (DESIGN.md)::

    {"schema": "headsync.curves/1", "fps": 25.0, "frame_start": 1, "frame_count": 250,
     "expression": {"names": [... the seven core names ...], "values": [[...7 floats...], ...]},
     "head_pose": {"rotation_euler_xyz": [[rx, ry, rz], ...], "translation": [[tx, ty, tz], ...]},
     "source": "captured" | "generated" | "edited"}

``head_pose`` is optional. It is the Head-Sync Stabilizer's pose ``X_cam = R @ X_head + T`` (OpenCV camera
axes, head units): ``rotation_euler_xyz`` are Blender's XYZ Euler angles of ``R`` in radians
(``R = Rz @ Ry @ Rx``) and ``translation`` is ``T``. Expression names may come in any order; they are
stored and used in the core order.

Pure logic (validation, conversions, the ping-pong loop) is separate from the two file functions.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .core.errors import UserError
from .core.atomic import write_json_atomic
from .core.euler import euler_xyz_to_matrix, matrix_to_euler_xyz  # noqa: F401  (part of this module's API)
from .subject.folder import CORE_EXPRESSIONS, Subject

SCHEMA = "headsync.curves/1"
SOURCES = ("captured", "generated", "edited")


@dataclass
class Curves:
    """Validated curves: ``expression`` (N, 7) in core order; ``rotation``/``translation`` (N, 3) or None."""

    fps: float
    frame_start: int
    expression: np.ndarray
    rotation: np.ndarray | None = None
    translation: np.ndarray | None = None
    source: str = "captured"

    @property
    def frame_count(self) -> int:
        return int(self.expression.shape[0])

    @property
    def has_pose(self) -> bool:
        return self.rotation is not None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schema": SCHEMA, "fps": float(self.fps), "frame_start": int(self.frame_start),
            "frame_count": self.frame_count,
            "expression": {"names": list(CORE_EXPRESSIONS), "values": _rows(self.expression)},
        }
        if self.has_pose:
            out["head_pose"] = {"rotation_euler_xyz": _rows(self.rotation), "translation": _rows(self.translation)}
        out["source"] = self.source
        return out


def _rows(a: np.ndarray) -> list[list[float]]:
    return [[round(float(v), 6) for v in row] for row in np.asarray(a)]


# ---- looping -------------------------------------------------------------------------------------------
def ping_pong(n_source: int, n_out: int) -> np.ndarray:
    """Source frame for each of ``n_out`` output frames: 0, 1, ..., n-1, n-2, ..., 1, 0, 1, ... (no frame
    repeated at the turns, so the motion has no stall)."""
    if n_source <= 1:
        return np.zeros(n_out, np.int64)
    period = 2 * (n_source - 1)
    k = np.arange(n_out) % period
    return np.where(k < n_source, k, period - k).astype(np.int64)


# ---- validation ----------------------------------------------------------------------------------------
def _fail(msg: str, hint: str = "") -> None:
    raise UserError(f"curves: {msg}", hint or "export the curves again from Blender, or see DESIGN.md (curves.json)")


def _matrix(obj: Any, name: str, n: int | None, width: int) -> np.ndarray:
    if not isinstance(obj, list):
        _fail(f"{name} must be a list of rows")
    try:
        a = np.asarray(obj, np.float64)
    except (TypeError, ValueError):
        _fail(f"{name} must hold only numbers, in rows of {width}")
    if a.ndim != 2 or a.shape[1] != width:
        _fail(f"{name} must have rows of {width} numbers, got shape {list(a.shape)}")
    if n is not None and a.shape[0] != n:
        _fail(f"{name} has {a.shape[0]} rows, expected {n} (one per frame)")
    if not np.isfinite(a).all():
        bad = int(np.argwhere(~np.isfinite(a))[0][0])
        _fail(f"{name} has a non-finite value (NaN or infinity) in row {bad}")
    return a


def validate(obj: Any, n_frames: int | None = None) -> Curves:
    """Check a parsed curves.json against the schema; ``n_frames`` the row count required (the render's).

    Raises :class:`UserError` naming the problem: schema, names, row count, non-finite values, ranges.
    """
    if not isinstance(obj, dict):
        _fail("the file must hold a JSON object")
    if obj.get("schema") != SCHEMA:
        _fail(f"schema is {obj.get('schema')!r}, expected {SCHEMA!r}")
    fps = obj.get("fps")
    if not isinstance(fps, (int, float)) or isinstance(fps, bool) or not math.isfinite(fps) or fps <= 0:
        _fail(f"fps must be a positive number, got {fps!r}")
    frame_start = obj.get("frame_start", 1)
    if not isinstance(frame_start, int) or isinstance(frame_start, bool):
        _fail(f"frame_start must be an integer, got {frame_start!r}")
    count = obj.get("frame_count")
    if not isinstance(count, int) or isinstance(count, bool) or count <= 0:
        _fail(f"frame_count must be a positive integer, got {count!r}")
    if n_frames is not None and count != n_frames:
        _fail(f"frame_count is {count} but the audio gives {n_frames} frames at {fps:g} fps",
              "sample the curves over exactly the shot's frames (audio duration x subject fps)")
    expr = obj.get("expression")
    if not isinstance(expr, dict) or "names" not in expr or "values" not in expr:
        _fail("expression must be an object with 'names' and 'values'")
    names = expr["names"]
    if not isinstance(names, list) or not all(isinstance(x, str) for x in names):
        _fail("expression.names must be a list of strings")
    unknown = [x for x in names if x not in CORE_EXPRESSIONS]
    missing = [x for x in CORE_EXPRESSIONS if x not in names]
    if unknown or missing or len(names) != len(CORE_EXPRESSIONS):
        _fail(f"expression.names must be the seven core names {list(CORE_EXPRESSIONS)} once each"
              + (f"; unknown: {unknown}" if unknown else "") + (f"; missing: {missing}" if missing else ""))
    values = _matrix(expr["values"], "expression.values", count, len(names))
    if values.min() < -1e-6 or values.max() > 1 + 1e-6:
        _fail(f"expression.values must lie in [0, 1], got [{values.min():.3g}, {values.max():.3g}]")
    order = [names.index(x) for x in CORE_EXPRESSIONS]
    rotation = translation = None
    pose = obj.get("head_pose")
    if pose is not None:
        if not isinstance(pose, dict) or "rotation_euler_xyz" not in pose or "translation" not in pose:
            _fail("head_pose must be an object with 'rotation_euler_xyz' and 'translation'")
        rotation = _matrix(pose["rotation_euler_xyz"], "head_pose.rotation_euler_xyz", count, 3)
        translation = _matrix(pose["translation"], "head_pose.translation", count, 3)
    source = obj.get("source", "edited")
    if source not in SOURCES:
        _fail(f"source must be one of {list(SOURCES)}, got {source!r}")
    return Curves(float(fps), frame_start, np.clip(values[:, order], 0.0, 1.0).astype(np.float32),
                  rotation, translation, source)


# ---- files ---------------------------------------------------------------------------------------------
def read_curves(path: str | Path, n_frames: int | None = None) -> Curves:
    """Read and validate a curves.json file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"curves file not found: {path}", "pass the curves.json exported from Blender")
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"curves file {path} is not valid JSON ({e})", "export the curves again")
    return validate(obj, n_frames)


def write_curves(path: str | Path, curves: Curves) -> None:
    write_json_atomic(Path(path), curves.to_json())


def captured_curves(subject: Subject, n_frames: int) -> Curves:
    """The captured expression and head pose of ``subject`` over ``n_frames`` (looped back and forth)."""
    n = subject.frame_count()
    idx = ping_pong(n, n_frames)
    expr = np.clip(np.load(subject.path("expression.npy")).astype(np.float32), 0.0, 1.0)[idx]
    pose = np.load(subject.path("pose.npz"))
    R, T = pose["R"].astype(np.float64)[idx], pose["T"].astype(np.float64)[idx]
    return Curves(float(subject.source()["fps"]), 1, expr, matrix_to_euler_xyz(R), T, "captured")


def pose_matrices(curves: Curves) -> tuple[np.ndarray, np.ndarray]:
    """``(R (N, 3, 3), T (N, 3))`` of curves that have a head pose."""
    assert curves.has_pose
    return euler_xyz_to_matrix(curves.rotation), np.asarray(curves.translation, np.float64)
