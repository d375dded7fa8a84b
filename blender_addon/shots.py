"""The shot model without Blender: names, the initial curves of a new shot, timeline placement, job states.

No bpy here (numpy only where a subject's ``.npy``/``.npz`` files are read; Blender ships numpy).

Initial curves of a new shot
----------------------------
A new shot is keyed from the subject's *captured* curves: ``WORKSPACE/subjects/NAME/expression.npy``
(N x 7, the prepared frame rate) and ``pose.npz`` (``R`` N x 3 x 3, ``T`` N x 3), read straight from the
workspace (the add-on never imports the backend). The captured sequence is played back and forth (ping-pong:
0, 1, ..., n-1, n-2, ..., 1, 0, 1, ...) until it covers the shot, one row per frame, exactly as the
renderer loops it without ``--curves``; so an untouched shot renders like a plain ``headsync render``,
and the filmmaker edits the keys from there. A shot has as many frames as the render of its sound will
have: round(audio seconds x the subject's source fps), the backend's rule.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

from .curves_io import CORE_NAMES

#: Names the service accepts for subjects and runs (mirrors the service's rule).
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

ACTIVE_STATES = ("submitting", "queued", "running")
FINAL_STATES = ("succeeded", "failed", "cancelled")


class ShotError(Exception):
    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message, self.hint = message, hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


# ---- names ------------------------------------------------------------------------------------
def safe_name(text: str, fallback: str = "subject") -> str:
    """A name the service accepts: letters, digits, '_', '-', '.', starting with a letter or digit."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", text or "").strip("._-")
    stem = stem.replace("..", "_")
    if not stem:
        stem = fallback
    return stem[:64]


def unique_name(base: str, existing: Iterable[str]) -> str:
    taken = set(existing)
    if base not in taken:
        return base
    i = 2
    while True:
        cand = f"{base[:58]}_{i:03d}"
        if cand not in taken:
            return cand
        i += 1


def empty_name(shot: str) -> str:
    return f"HS_{shot}"


def data_path(name: str) -> str:
    """The F-curve data path of a custom property on the Empty."""
    return f'["{name}"]'


# ---- subject files ----------------------------------------------------------------------------
def subject_dir(workspace: str | os.PathLike, subject: str) -> Path:
    return Path(workspace).expanduser() / "subjects" / subject


def subject_fps(sdir: Path, default: float = 25.0) -> float:
    """The frame rate renders of the subject run at: its source video's (``subject.json`` source.fps)."""
    try:
        man = json.loads((sdir / "subject.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default
    src = man.get("source") if isinstance(man, dict) else None
    fps = src.get("fps") if isinstance(src, dict) else None
    if isinstance(fps, (int, float)) and not isinstance(fps, bool) and fps > 0:
        return float(fps)
    return default


def workspace_subject_video(workspace: str | os.PathLike, subject: str) -> str | None:
    """The source video a subject of the workspace was prepared from (None when there is no such subject)."""
    try:
        man = json.loads((subject_dir(workspace, subject) / "subject.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    src = man.get("source") if isinstance(man, dict) else None
    path = src.get("path") if isinstance(src, dict) else None
    return str(path) if path else ""


def free_subject_name(base: str, workspace: str | os.PathLike | None, video: str, taken: Iterable[str]) -> str:
    """``base``, or a numbered variant when the scene has it or the workspace has it for another video.

    Re-importing the same video under the same name reuses the workspace's subject (its finished stages are
    kept); another video never overwrites it."""
    taken = set(taken)
    name, i = base, 1
    while True:
        other = workspace_subject_video(workspace, name) if workspace else None
        same_video = other is None or other == "" or os.path.realpath(other) == os.path.realpath(video)
        if name not in taken and same_video:
            return name
        i += 1
        name = f"{base[:58]}_{i:03d}"


def audio_seconds(path: str | os.PathLike) -> float | None:
    """The duration of a WAV file (standard library); None for other formats or unreadable files."""
    import wave

    try:
        with wave.open(str(path), "rb") as w:
            rate = w.getframerate()
            return w.getnframes() / rate if rate > 0 else None
    except (OSError, EOFError, wave.Error):
        return None


def render_frame_count(seconds: float, fps: float) -> int:
    """Frames a render of ``seconds`` of audio has at ``fps`` (the backend rounds the same way)."""
    return max(1, int(round(seconds * fps)))


def load_captured(workspace: str | os.PathLike, subject: str) -> dict[str, Any]:
    """The subject's captured curves: {"values": N x 7, "rotation": N x 3 | None, "translation": N x 3 | None,
    "fps": float} as Python lists. Raises :class:`ShotError` with a clear message."""
    sdir = subject_dir(workspace, subject)
    if not sdir.is_dir():
        raise ShotError(f"subject {subject!r} is not in the workspace {workspace}",
                        "import and prepare the subject first, or check the workspace in the preferences")
    expr = sdir / "expression.npy"
    if not expr.is_file():
        raise ShotError(f"subject {subject!r} has no captured expression yet ({expr} is missing)",
                        "wait for its 'prepare' job to finish")
    import numpy as np  # Blender ships numpy

    try:
        values = np.load(expr, allow_pickle=False)
    except Exception as e:  # corrupt file: a message, not a traceback
        raise ShotError(f"{expr} is unreadable ({e.__class__.__name__})", "prepare the subject again") from None
    if values.ndim != 2 or values.shape[1] != 7 or values.shape[0] < 1:
        raise ShotError(f"{expr} has shape {values.shape}, expected (N, 7)", "prepare the subject again")
    values = np.clip(np.nan_to_num(values.astype(np.float64)), 0.0, 1.0)
    rot = trans = None
    pose = sdir / "pose.npz"
    if pose.is_file():
        try:
            with np.load(pose, allow_pickle=False) as z:
                if "R" in z.files and len(z["R"]) == len(values):
                    rot = [matrix_to_euler_xyz(m) for m in np.nan_to_num(z["R"]).tolist()]
                if "T" in z.files and len(z["T"]) == len(values):
                    trans = np.nan_to_num(z["T"]).astype(np.float64).tolist()
        except Exception:
            rot = trans = None  # pose is optional for keying; the expression is what matters
    return {"values": values.tolist(), "rotation": rot, "translation": trans if rot is not None else None,
            "fps": subject_fps(sdir)}


# ---- curve maths ------------------------------------------------------------------------------
def matrix_to_euler_xyz(m: Sequence[Sequence[float]]) -> list[float]:
    """Blender's XYZ Euler angles (R = Rz @ Ry @ Rx) of a 3x3 rotation matrix."""
    r20 = max(-1.0, min(1.0, float(m[2][0])))
    y = -math.asin(r20)
    if abs(r20) < 0.999999:
        x = math.atan2(m[2][1], m[2][2])
        z = math.atan2(m[1][0], m[0][0])
    else:  # gimbal lock
        x = math.atan2(-m[1][2], m[1][1])
        z = 0.0
    return [x, y, z]


def euler_xyz_to_matrix(e: Sequence[float]) -> list[list[float]]:
    x, y, z = e
    cx, sx, cy, sy, cz, sz = math.cos(x), math.sin(x), math.cos(y), math.sin(y), math.cos(z), math.sin(z)
    return [[cz * cy, cz * sy * sx - sz * cx, cz * sy * cx + sz * sx],
            [sz * cy, sz * sy * sx + cz * cx, sz * sy * cx - cz * sx],
            [-sy, cy * sx, cy * cx]]


def fit_to_length(rows: Sequence[Sequence[float]], src_fps: float, dst_fps: float, count: int) -> list[list[float]]:
    """``count`` rows at ``dst_fps`` from ``rows`` at ``src_fps``: linear resampling, played back and forth."""
    n = len(rows)
    if n == 0:
        raise ShotError("the captured curves are empty", "prepare the subject again")
    if count <= 0:
        return []
    width = len(rows[0])
    if n == 1:
        return [list(rows[0]) for _ in range(count)]
    period = 2 * (n - 1)
    ratio = float(src_fps) / float(dst_fps)
    out = []
    for i in range(count):
        t = (i * ratio) % period
        if t > n - 1:
            t = period - t
        k = int(t)
        if k >= n - 1:
            out.append(list(rows[n - 1]))
            continue
        a = t - k
        r0, r1 = rows[k], rows[k + 1]
        out.append([r0[j] + (r1[j] - r0[j]) * a for j in range(width)])
    return out


def keyframe_co(frame_start: int, column: Sequence[float]) -> list[float]:
    """The flat (frame, value, frame, value, ...) list that ``keyframe_points.foreach_set('co', ...)`` takes."""
    co = [0.0] * (2 * len(column))
    co[0::2] = [float(frame_start + i) for i in range(len(column))]
    co[1::2] = [float(v) for v in column]
    return co


def columns(rows: Sequence[Sequence[float]], width: int = 7) -> list[list[float]]:
    return [[r[j] for r in rows] for j in range(width)]


# ---- timeline ---------------------------------------------------------------------------------
def free_channel(occupied: Iterable[tuple[int, int, int]], start: int, end: int, above: int,
                 max_channel: int = 128) -> int:
    """The lowest channel > ``above`` with no strip overlapping [start, end) (``occupied``: channel, start, end)."""
    busy: dict[int, list[tuple[int, int]]] = {}
    for ch, s, e in occupied:
        busy.setdefault(int(ch), []).append((int(s), int(e)))
    for ch in range(above + 1, max_channel + 1):
        if all(e <= start or s >= end for s, e in busy.get(ch, [])):
            return ch
    return max_channel


def frame_files(frames_dir: str | os.PathLike) -> list[str]:
    """The sorted image file names of a rendered frames folder (000000.png, ...)."""
    d = Path(frames_dir)
    try:
        names = [p.name for p in d.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".exr")]
    except OSError:
        return []
    return sorted(names)


# ---- jobs -------------------------------------------------------------------------------------
def format_eta(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)) or seconds < 0 or not math.isfinite(seconds):
        return ""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def job_fields(job: dict[str, Any]) -> dict[str, Any]:
    """The fields the add-on keeps from a job record (tolerant of missing keys)."""
    prog = job.get("progress") or {}
    err = job.get("error") or {}
    if isinstance(err, str):
        err = {"message": err}
    frac = prog.get("fraction") if isinstance(prog, dict) else None
    return {
        "state": str(job.get("state") or "queued"),
        "fraction": float(frac) if isinstance(frac, (int, float)) and math.isfinite(frac) else 0.0,
        "stage": str(prog.get("stage") or "") if isinstance(prog, dict) else "",
        "message": str(prog.get("message") or "") if isinstance(prog, dict) else "",
        "eta": format_eta(prog.get("eta_s")) if isinstance(prog, dict) else "",
        "error": str(err.get("message") or "") if isinstance(err, dict) else "",
        "hint": str(err.get("hint") or "") if isinstance(err, dict) else "",
        "artifacts": job.get("artifacts") if isinstance(job.get("artifacts"), dict) else {},
    }


def find_frames_dir(artifacts: dict[str, Any]) -> str | None:
    """The rendered frames folder named by a render job's artifacts."""
    for key in ("frames", "frames_dir", "frames_folder"):
        v = artifacts.get(key)
        if isinstance(v, str) and v:
            return v
    for key in ("out", "out_dir", "render_dir", "dir", "folder"):
        v = artifacts.get(key)
        if isinstance(v, str) and v and (Path(v) / "frames").is_dir():
            return str(Path(v) / "frames")
    for key in ("video", "mp4", "render_mp4", "curves"):
        v = artifacts.get(key)
        if isinstance(v, str) and v and (Path(v).parent / "frames").is_dir():
            return str(Path(v).parent / "frames")
    return None
