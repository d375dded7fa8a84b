"""The shot model without Blender: names, the initial curves of a new shot, timeline placement, job states,
and re-attaching jobs after undo, redo or reopening the file.

No bpy here (standard library only).

Initial curves of a new shot
----------------------------
A new shot is keyed from the subject's *captured* curves, which the service serves as curves.json
(``GET /api/v1/subjects/NAME/curves?frames=N``): the captured performance played back and forth until it
covers the shot, one row per frame, exactly as the renderer loops it without ``--curves``; so an untouched
shot renders like a plain ``headsync render``, and the filmmaker edits the keys from there. A shot has as
many frames as the render of its sound will have: round(audio seconds x the subject's source fps), the
backend's rule.

Jobs and undo
-------------
Job records live in the scene (so they are saved with the file), and scene data is what undo restores: an
undo can bring back a shot that points at an older render, or at none. Jobs themselves are not undoable,
they run on the service. So after undo, redo and load the add-on asks the service for its job list and
re-attaches each shot to its newest render job, found by the shot's id (a folder of the curves file the
render job reads), and each subject to its newest prepare and train jobs (by subject name).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

#: Names the service accepts for subjects and runs: its rule (backend/headsync/core/names.py), copied because
#: the add-on does not import the backend; tests/test_addon_curves.py pins the two equal.
NAME_PATTERN = r"^[A-Za-z0-9](?:\.?[A-Za-z0-9_-])*\.?$"
NAME_MAX = 64
NAME_RE = re.compile(NAME_PATTERN)


def is_name(value: Any) -> bool:
    """True when ``value`` is a name the service accepts (the pattern, at most :data:`NAME_MAX` characters)."""
    return isinstance(value, str) and len(value) <= NAME_MAX and NAME_RE.fullmatch(value) is not None

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
    return stem[:NAME_MAX]


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


def captured_rows(doc: dict[str, Any]) -> dict[str, Any]:
    """A validated curves document as columns for keying: {"values" (N, 7), "rotation" (N, 3) | None,
    "translation" (N, 3) | None, "fps", "frame_count"} (Python lists)."""
    pose = doc.get("head_pose") or {}
    return {"values": doc["expression"]["values"], "rotation": pose.get("rotation_euler_xyz"),
            "translation": pose.get("translation"), "fps": float(doc["fps"]), "frame_count": int(doc["frame_count"])}


def keyframe_co(frame_start: int, column: Sequence[float], rows: Sequence[int] | None = None) -> list[float]:
    """The flat (frame, value, frame, value, ...) list that ``keyframe_points.foreach_set('co', ...)`` takes,
    for the rows ``rows`` of ``column`` (default: all of them)."""
    rows = range(len(column)) if rows is None else rows
    co = [0.0] * (2 * len(rows))
    co[0::2] = [float(frame_start + i) for i in rows]
    co[1::2] = [float(column[i]) for i in rows]
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


# ---- shot ids and re-attaching jobs -----------------------------------------------------------
UID_RE = re.compile(r"^[0-9a-f]{12}$")


def new_uid() -> str:
    """A shot's id: it names the folder of the curves its render jobs read, so the service's job list
    tells which jobs belong to which shot even after the scene was undone or reloaded."""
    import uuid

    return uuid.uuid4().hex[:12]


def curves_path(workspace: str | os.PathLike, blend_stem: str, uid: str, stamp: str, what: str = "curves") -> Path:
    """Where a job of shot ``uid`` reads or writes its curves: WORKSPACE/blender/STEM/shots/UID/STAMP.WHAT.json
    (``curves``: those a render is sent; ``expressions``: those an ``express`` job writes for the shot)."""
    return Path(workspace) / "blender" / blend_stem / "shots" / uid / f"{stamp}.{what}.json"


#: The parameter naming a shot's curves file, per job kind a shot submits (its folder is the shot's id).
SHOT_FILE_PARAM = {"render": "curves", "express": "out"}


def uid_of_job(job: dict[str, Any]) -> str:
    """The shot id a render or express job belongs to ('' for jobs not submitted by a shot)."""
    params = job.get("params") if isinstance(job.get("params"), dict) else {}
    path = params.get(SHOT_FILE_PARAM.get(str(job.get("kind")), ""))
    if not isinstance(path, str):
        return ""
    p = Path(path)
    return p.parent.name if p.parent.parent.name == "shots" and UID_RE.match(p.parent.name) else ""


def is_preview(job: dict[str, Any]) -> bool:
    """A Preview Frame job (a render of a frame range) rather than a shot's render."""
    params = job.get("params") if isinstance(job.get("params"), dict) else {}
    return bool(params.get("frames"))


def _newest(jobs: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    best = None
    for j in jobs:
        if best is None or (str(j.get("created") or ""), str(j.get("id"))) > (str(best.get("created") or ""),
                                                                              str(best.get("id"))):
            best = j
    return best


def _shot_job_field(job: dict[str, Any]) -> str:
    if job.get("kind") == "express":
        return "expression_job"
    return "preview_job" if is_preview(job) else "render_job"


def reattach_shots(shots: Iterable[tuple[str, str, str, str, str]], service_jobs: list[dict[str, Any]]
                   ) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Which job each shot should follow after undo/redo/load.

    ``shots``: (name, uid, render_job, preview_job, expression_job) of each shot in the scene. Returns {shot
    name: [(field, job record)]} with field ``render_job``, ``preview_job`` or ``expression_job``, for every
    shot whose newest job on the service is not the one it points at (the service's job is the truth: jobs
    are not undoable)."""
    by_uid: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for j in service_jobs:
        uid = uid_of_job(j)
        if uid:
            by_uid.setdefault((uid, _shot_job_field(j)), []).append(j)
    plan: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for name, uid, *current_jobs in shots:
        for field, current in zip(("render_job", "preview_job", "expression_job"), current_jobs):
            newest = _newest(by_uid.get((uid, field), []))
            if newest is not None and str(newest.get("id")) != current:
                plan.setdefault(name, []).append((field, newest))
    return plan


#: The job fields of a subject and the kinds they hold.
SUBJECT_JOBS = (("prepare_job", "prepare"), ("train_job", "train"), ("torso_job", "torso"))


def reattach_subjects(subjects: Iterable[tuple[str, ...]], service_jobs: list[dict[str, Any]]
                      ) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Like :func:`reattach_shots` for subjects: (name, prepare_job, train_job, torso_job) -> {name: [(field,
    job)]}."""
    plan: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for name, *current_jobs in subjects:
        for (field, kind), current in zip(SUBJECT_JOBS, current_jobs):
            newest = _newest(j for j in service_jobs if j.get("kind") == kind and j.get("subject") == name)
            if newest is not None and str(newest.get("id")) != current:
                plan.setdefault(name, []).append((field, newest))
    return plan


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
