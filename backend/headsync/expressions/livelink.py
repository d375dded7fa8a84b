"""Import of ARKit coefficient CSVs as recorded by Epic's Live Link Face app (iPhone/iPad).

The app's CSV export (one file per take) has a header row and one row per captured frame::

    Timecode,BlendShapeCount,EyeBlinkLeft,EyeLookDownLeft,...,TongueOut,HeadYaw,HeadPitch,HeadRoll,
        LeftEyeYaw,LeftEyePitch,LeftEyeRoll,RightEyeYaw,RightEyePitch,RightEyeRoll
    14:03:52:28.207,61,0.0123,0.0,...

* ``Timecode`` is ``HH:MM:SS:FF.fff``: ``FF`` counts frames at the app's capture rate (60 by default, 30
  or others when set) and the digits after the point are a fraction of a frame;
* ``BlendShapeCount`` is 61: the 52 ARKit blendshapes (PascalCase; matched to ARKit's camelCase names
  without regard to case; the app does not keep one column order across versions, so columns are found by
  name) and 9 head/eye rotations, which are read but not used: the shot's head pose stays the subject's.

The capture rate is not in the file: it is taken from ``fps`` when given, else inferred as the smallest
common rate (24, 25, 30, 48, 50, 60, 120) above every ``FF`` seen. The take is resampled to the shot's
frame rate, its columns mapped onto the subject's names (:func:`.coefficients.map_named`), and the result
must then go through the subject's VQ-VAE (the caller, :mod:`.express`).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import UserError

#: The 52 ARKit blendshape names (Apple's ARFaceAnchor.BlendShapeLocation), in ARKit's camelCase.
ARKIT_NAMES = (
    "eyeBlinkLeft", "eyeLookDownLeft", "eyeLookInLeft", "eyeLookOutLeft", "eyeLookUpLeft", "eyeSquintLeft",
    "eyeWideLeft", "eyeBlinkRight", "eyeLookDownRight", "eyeLookInRight", "eyeLookOutRight", "eyeLookUpRight",
    "eyeSquintRight", "eyeWideRight", "jawForward", "jawLeft", "jawRight", "jawOpen", "mouthClose",
    "mouthFunnel", "mouthPucker", "mouthLeft", "mouthRight", "mouthSmileLeft", "mouthSmileRight",
    "mouthFrownLeft", "mouthFrownRight", "mouthDimpleLeft", "mouthDimpleRight", "mouthStretchLeft",
    "mouthStretchRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper",
    "mouthPressLeft", "mouthPressRight", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthUpperUpLeft",
    "mouthUpperUpRight", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "noseSneerLeft", "noseSneerRight", "tongueOut",
)
#: The nine rotation columns that follow the blendshapes.
ROTATION_NAMES = ("HeadYaw", "HeadPitch", "HeadRoll", "LeftEyeYaw", "LeftEyePitch", "LeftEyeRoll",
                  "RightEyeYaw", "RightEyePitch", "RightEyeRoll")
COMMON_RATES = (24, 25, 30, 48, 50, 60, 120)
_TIMECODE = re.compile(r"^\s*(\d+):(\d{1,2}):(\d{1,2})[:;](\d+)(?:\.(\d+))?\s*$")
_HINT = "export the take again from Live Link Face (Take Browser > share > CSV), or check the file is its CSV"


@dataclass
class Take:
    """A parsed take: ``times_s`` (M,) from the first frame, ``values`` (M, 52) in ``ARKIT_NAMES`` order,
    ``fps`` the capture rate, ``rotations`` (M, 9) or None."""

    times_s: np.ndarray
    values: np.ndarray
    fps: float
    rotations: np.ndarray | None

    @property
    def names(self) -> list[str]:
        return list(ARKIT_NAMES)


def parse_timecode(text: str) -> tuple[int, float]:
    """``HH:MM:SS:FF.fff`` -> (whole seconds, frames including the fraction)."""
    m = _TIMECODE.match(text)
    if not m:
        raise ValueError(text)
    h, mi, s, ff, frac = m.groups()
    return int(h) * 3600 + int(mi) * 60 + int(s), int(ff) + (float("0." + frac) if frac else 0.0)


def infer_rate(frames: np.ndarray) -> float:
    """The smallest common rate above every frame number seen (``frames`` the ``FF`` fields)."""
    top = float(np.max(frames)) if len(frames) else 0.0
    for r in COMMON_RATES:
        if top < r:
            return float(r)
    raise UserError(f"the timecodes count frames up to {top:.0f}, above every common rate",
                    "pass the take's capture rate (livelink_fps)")


def parse(text: str, fps: float | None = None, source: str = "the CSV") -> Take:
    """Parse the CSV text of a Live Link Face take. Raises :class:`UserError` naming the problem."""
    rows = [r for r in csv.reader(text.splitlines()) if any(c.strip() for c in r)]
    if not rows:
        raise UserError(f"{source} is empty", _HINT)
    header = [c.strip() for c in rows[0]]
    if not header or header[0].lower() != "timecode":
        raise UserError(f"{source} does not start with a 'Timecode' column (got {header[:3]})", _HINT)
    col = {c.lower(): i for i, c in enumerate(header)}
    missing = [n for n in ARKIT_NAMES if n.lower() not in col]
    if len(missing) == len(ARKIT_NAMES):
        raise UserError(f"{source} has no ARKit blendshape columns (EyeBlinkLeft, JawOpen, ...)", _HINT)
    if missing:
        raise UserError(f"{source} lacks blendshape column(s) {', '.join(missing)}", _HINT)
    if len(rows) < 3:
        raise UserError(f"{source} holds {len(rows) - 1} frame(s); a take needs at least two", "record a longer take")
    idx = [col[n.lower()] for n in ARKIT_NAMES]
    rot_idx = [col.get(n.lower()) for n in ROTATION_NAMES]
    secs, frames, values, rots = [], [], [], []
    for line, r in enumerate(rows[1:], start=2):
        try:
            s, f = parse_timecode(r[0])
        except (ValueError, IndexError):
            raise UserError(f"{source} line {line}: timecode {r[0] if r else ''!r} is not HH:MM:SS:FF.fff", _HINT)
        if len(r) < len(header):
            raise UserError(f"{source} line {line} has {len(r)} fields, the header {len(header)}", _HINT)
        try:
            v = [float(r[i]) for i in idx]
            rot = [float(r[i]) if i is not None and r[i].strip() else np.nan for i in rot_idx]
        except ValueError as e:
            raise UserError(f"{source} line {line}: a value is not a number ({e})", _HINT)
        if not np.isfinite(v).all():
            raise UserError(f"{source} line {line}: a blendshape value is not finite", _HINT)
        secs.append(s)
        frames.append(f)
        values.append(v)
        rots.append(rot)
    rate = float(fps) if fps else infer_rate(np.floor(np.asarray(frames)))
    t = np.asarray(secs, np.float64) + np.asarray(frames, np.float64) / rate
    if t[-1] < t[0]:  # a take past midnight
        t = np.where(t < t[0], t + 86400.0, t)
    if np.any(np.diff(t) <= 0):
        bad = int(np.flatnonzero(np.diff(t) <= 0)[0]) + 3
        raise UserError(f"{source} line {bad}: timecodes do not increase (at {rate:g} fps)",
                        "pass the take's capture rate (livelink_fps) or export the take again")
    v = np.clip(np.asarray(values, np.float32), 0.0, 1.0)  # ARKit coefficients are defined on [0, 1]
    rot = np.asarray(rots, np.float32)
    return Take(t - t[0], v, rate, None if np.isnan(rot).all() else rot)


def read(path: str | Path, fps: float | None = None) -> Take:
    """Read a Live Link Face CSV file (see :func:`parse`)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Live Link Face CSV not found: {path}", "pass the CSV exported from the app")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (UnicodeDecodeError, OSError) as e:
        raise UserError(f"{path} is not a text CSV ({e})", _HINT)
    return parse(text, fps, str(path))


def is_livelink(path: str | Path) -> bool:
    """Whether ``path`` looks like a Live Link Face CSV (by its first line), not a curves.json."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            return f.readline().strip().lower().startswith("timecode")
    except (OSError, UnicodeDecodeError):
        return False
