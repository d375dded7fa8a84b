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

from . import curves_format
from .curves_format import SCHEMA, SOURCES
from .core.errors import UserError
from .core.atomic import write_json_atomic
from .core.euler import euler_xyz_to_matrix, matrix_to_euler_xyz  # noqa: F401  (part of this module's API)
from .subject.folder import CORE_EXPRESSIONS, Subject


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
    # Exact (repr of the float), not rounded: a render's curves.json gives back what Blender sent.
    return np.asarray(a, np.float64).tolist()


# ---- looping -------------------------------------------------------------------------------------------
def ping_pong(n_source: int, n_out: int) -> np.ndarray:
    """Source frame for each of ``n_out`` output frames (n_out,) int64: the rule of
    :func:`headsync.curves_format.ping_pong`, shared with Blender, which loops the captured curves itself."""
    return np.asarray(curves_format.ping_pong(n_source, n_out), np.int64).reshape(n_out)


# ---- validation ----------------------------------------------------------------------------------------
def validate(obj: Any, n_frames: int | None = None) -> Curves:
    """Check a parsed curves.json against the schema (the rules of :mod:`headsync.curves_format`, shared with
    the add-on); ``n_frames`` the row count required (the render's). Raises :class:`UserError` naming the
    problem: schema, names, row count, non-finite values, ranges."""
    try:
        doc = curves_format.validate(obj, n_frames)
    except curves_format.CurvesError as e:
        raise UserError(f"curves: {e.message}", e.hint) from None
    pose = doc.get("head_pose")
    rotation = np.asarray(pose["rotation_euler_xyz"], np.float64) if pose else None
    translation = np.asarray(pose["translation"], np.float64) if pose else None
    return Curves(doc["fps"], doc["frame_start"], np.asarray(doc["expression"]["values"], np.float32),
                  rotation, translation, doc["source"])


# ---- files ---------------------------------------------------------------------------------------------
def read_curves(path: str | Path, n_frames: int | None = None) -> Curves:
    """Read and validate a curves.json file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"curves file not found: {path}", "pass the curves.json exported from Blender")
    try:
        obj = json.loads(path.read_bytes())
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
