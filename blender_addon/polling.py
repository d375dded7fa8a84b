"""Job polling from ``bpy.app.timers`` (never a thread, never a blocking wait) and applying job results.

The state of every job lives in the scene (``props``), so it is saved with the file, and undone with it.
After ``undo_post``, ``redo_post`` and ``load_post`` a short timer re-attaches every shot and subject to its
newest job in the service's job list (:func:`shots.reattach_shots`: jobs are not undoable, the service
knows the truth), then the polling timer applies what finished meanwhile (a render's strip is placed
again). When a job ends it is announced in the status bar and the info log, sidebar open or not.
"""

from __future__ import annotations

import os
import time

import bpy
from bpy.app.handlers import persistent

from . import client, compat, curves_io, prefs, props, ui_text
from . import shots as shotlib

ACTIVE_INTERVAL = 1.0      # seconds between polls while jobs run
PREVIEW_INTERVAL = 0.1     # ... while a Preview Frame runs (the user waits for it; a poll is one SQLite row read)
DOWN_INTERVAL = 5.0        # while the service does not answer
POLL_TIMEOUT = 1.0         # each request

REATTACH_DELAY = 0.1       # after undo/redo/load, before asking the service
STATUS_SECONDS = 10.0      # how long a notification stays in the status bar

_state = {"proc": None, "waiting_since": 0.0}
#: The latest notifications (level, text), newest last (session state; the sidebar shows the last one).
NOTICES: list[tuple[str, str]] = []
_ANNOUNCED: set[str] = set()


def _active_jobs(scene):
    return [j for j in props.hs(scene).jobs if j.state in shotlib.ACTIVE_STATES or
            (j.state == "succeeded" and not j.handled)]


def any_active() -> bool:
    return any(_active_jobs(s) for s in bpy.data.scenes if hasattr(s, "headsync"))


def poll_once() -> int:
    """Poll every job of every scene that is not finished; returns how many are still active. Never raises."""
    scenes = [s for s in bpy.data.scenes if hasattr(s, "headsync")]
    todo = [(s, j) for s in scenes for j in _active_jobs(s)]
    if not todo:
        return 0
    try:
        c = prefs.make_client(bpy.context, POLL_TIMEOUT)
    except client.ServiceError as e:
        prefs.STATUS.update(connected=False, message=e.message, hint=e.hint)
        return len(todo)
    for scene, job in todo:
        try:
            rec = c.job(job.name)
        except client.NotFound:
            _apply(scene, job, {"state": "failed", "error": {
                "message": f"the service does not know job {job.name}",
                "hint": "was the workspace changed? submit it again"}})
            continue
        except client.ServiceError as e:
            prefs.STATUS.update(connected=False, message=e.message, hint=e.hint)
            break
        prefs.STATUS.update(connected=True, message="", hint="")
        _apply(scene, job, rec)
    for scene in scenes:
        update_batch(scene)
    _tag_redraw()
    return sum(len(_active_jobs(s)) for s in scenes)


def sync_subjects(scene, listing: list) -> int:
    """Update the stage of the scene's subjects from ``GET /subjects`` (those without a running job)."""
    by_name = {s.get("name"): s for s in listing if isinstance(s, dict)}
    n = 0
    for subj in props.hs(scene).subjects:
        rec = by_name.get(subj.name)
        if rec is not None:
            props.apply_subject_record(subj, rec)  # warnings, renderer, torso: whatever its stage
        if rec is None or subj.stage in ("preparing", "training"):
            continue
        if rec.get("runs"):
            stage = "trained"
        elif rec.get("prepared") or rec.get("stages"):
            stage = "prepared"
        else:
            continue
        if subj.stage != stage:
            subj.stage, n = stage, n + 1
    return n


def refresh_subjects(context=None) -> None:
    """Ask the service which subjects are prepared/trained (e.g. trained from a terminal). Raises ServiceError."""
    listing = prefs.make_client(context, 2.0).subjects()
    for scene in bpy.data.scenes:
        if hasattr(scene, "headsync"):
            sync_subjects(scene, listing)


def _apply(scene, job, rec: dict) -> None:
    f = shotlib.job_fields(rec)
    job.state, job.fraction, job.stage, job.message, job.eta = (f["state"], f["fraction"], f["stage"],
                                                                f["message"], f["eta"])
    job.error, job.hint = f["error"], f["hint"]
    st = props.hs(scene)
    if job.kind in ("prepare", "train", "torso"):
        subj = st.subjects.get(job.subject)
        if subj is not None:
            _apply_subject(subj, job)
            if job.state == "succeeded" and not job.handled:
                refresh_subject(subj)
        job.handled = job.state in shotlib.FINAL_STATES
    elif job.kind == "express":
        shot = st.shots.get(job.shot)
        if shot is not None and shot.expression_job == job.name and job.state == "succeeded" and not job.handled:
            from .operators import EXPECTED, apply_expressions  # the keying lives with New Shot's

            try:
                apply_expressions(shot, f["artifacts"])
            except EXPECTED as e:
                job.error, job.hint = getattr(e, "message", str(e)), getattr(e, "hint", "")
                shot.message, shot.hint = job.error, job.hint
        elif shot is not None and shot.expression_job == job.name and job.state in ("failed", "cancelled"):
            shot.message = job.error or f"expressions {job.state}"
            shot.hint = job.hint or ("open the job's log" if job.state == "failed" else "")
        job.handled = job.state in shotlib.FINAL_STATES
    elif job.kind == "render" and job.preview:
        shot = st.shots.get(job.shot)
        if shot is None or shot.preview_job != job.name:  # gone, or a newer preview was asked for
            job.handled = True
        elif job.state == "succeeded" and not job.handled:
            try:
                place_preview(scene, shot, f["artifacts"], job)
            except shotlib.ShotError as e:
                job.error, job.hint = e.message, e.hint
            job.handled = True
        elif job.state in ("failed", "cancelled"):
            job.handled = True
    elif job.kind == "render":
        shot = st.shots.get(job.shot)
        if shot is None or shot.render_job != job.name:  # the shot is gone or was re-rendered since
            job.handled = True
            _announce(job)
            return
        if job.state == "running":
            shot.state = "rendering"
        elif job.state == "queued":
            shot.state = "queued"
        elif job.state == "succeeded" and not job.handled:
            try:
                place_result(scene, shot, f["artifacts"], job.name)
                shot.state, shot.message, shot.hint = "rendered", shot.message, ""
            except shotlib.ShotError as e:
                shot.state, shot.message, shot.hint = "failed", e.message, e.hint
            job.handled = True
        elif job.state in ("failed", "cancelled"):
            shot.state = job.state
            shot.message = job.error or ("cancelled" if job.state == "cancelled" else "the render failed")
            shot.hint = job.hint or ("open the job's log" if job.state == "failed" else "")
            job.handled = True
    else:
        job.handled = job.state in shotlib.FINAL_STATES
    _announce(job)


def refresh_subject(subj) -> None:
    """Ask the service what it now knows of ``subj`` (warnings, renderer, torso). Never raises."""
    try:
        props.apply_subject_record(subj, prefs.make_client(bpy.context, POLL_TIMEOUT).subject(subj.name))
    except client.ServiceError:
        pass  # the next Refresh (or job) brings it


def _announce(job) -> None:
    """Tell the user once that a job ended (status bar and info log): ``notified`` is saved with the file,
    the session's set of announced jobs survives undo and redo (which restore the scene's records)."""
    if job.notified or job.name in _ANNOUNCED or job.state not in shotlib.FINAL_STATES:
        return
    job.notified = True
    _ANNOUNCED.add(job.name)
    level, text = ui_text.notice(job.kind, job.subject, job.shot, job.state, job.error, job.hint, job.preview)
    notify(level, text)


def notify(level: str, text: str) -> None:
    """Show ``text`` in every window's status bar (for a while) and as an info report. Never raises."""
    NOTICES.append((level, text))
    del NOTICES[:-20]
    wm = getattr(bpy.context, "window_manager", None)
    for win in (wm.windows if wm is not None else []):
        try:
            win.workspace.status_text_set(text)
            with bpy.context.temp_override(window=win, screen=win.screen):
                bpy.ops.headsync.notify(level=level, message=text)
        except (AttributeError, RuntimeError, TypeError):
            pass  # a window without a workspace, or an add-on being disabled: the NOTICES list still has it
    if not bpy.app.timers.is_registered(_clear_status):
        bpy.app.timers.register(_clear_status, first_interval=STATUS_SECONDS)


def _clear_status():
    wm = getattr(bpy.context, "window_manager", None)
    for win in (wm.windows if wm is not None else []):
        try:
            win.workspace.status_text_set(None)
        except (AttributeError, RuntimeError, TypeError):
            pass
    return None


def _apply_subject(subj, job) -> None:
    if job.kind == "prepare" and subj.prepare_job == job.name:
        if job.state in ("queued", "running") and subj.stage not in ("training",):
            subj.stage = "preparing"
        elif job.state == "succeeded":
            if subj.stage in ("new", "preparing", "failed"):
                subj.stage = "prepared"
            subj.message, subj.hint = "", ""
        elif job.state in ("failed", "cancelled"):
            subj.stage = "failed" if job.state == "failed" else "new"
            subj.message = job.error or f"prepare {job.state}"
            subj.hint = job.hint or ("open the job's log" if job.state == "failed" else "")
    elif job.kind == "torso" and subj.torso_job == job.name:
        if job.state == "succeeded":
            subj.message, subj.hint = "", ""
        elif job.state in ("failed", "cancelled"):
            subj.message = job.error or f"torso training {job.state}"
            subj.hint = job.hint or ("open the job's log" if job.state == "failed" else "")
    elif job.kind == "train" and subj.train_job == job.name:
        if job.state in ("queued", "running"):
            subj.stage = "training"
        elif job.state == "succeeded":
            subj.stage, subj.message, subj.hint = "trained", "", ""
        elif job.state in ("failed", "cancelled"):
            subj.stage = "prepared"
            subj.message = job.error or f"training {job.state}"
            subj.hint = job.hint or ("resume it with Train Subject > Resume" if job.state == "cancelled"
                                     else "open the job's log; Train Subject > Resume continues from the last checkpoint")


def place_result(scene, shot, artifacts: dict, job_id: str = ""):
    """Add (or replace) the image-sequence strip of a finished render above the shot's source strip."""
    frames_dir = shotlib.find_frames_dir(artifacts or {})
    if frames_dir is None:
        ws = prefs.workspace(bpy.context)
        guess = shotlib.subject_dir(ws, shot.subject) / "renders" / job_id / "frames" if ws and job_id else None
        frames_dir = str(guess) if guess is not None and guess.is_dir() else None
    if frames_dir is None:
        raise shotlib.ShotError(f"render job {job_id} names no frames folder", "open the job's log")
    files = shotlib.frame_files(frames_dir)
    if not files:
        raise shotlib.ShotError(f"the rendered frames are missing from {frames_dir}",
                                "was the workspace moved or cleaned? render the shot again")
    note = ""
    if len(files) != shot.frame_count:
        note = f"the render has {len(files)} frames, the shot {shot.frame_count}"
        files = files[:shot.frame_count] if len(files) > shot.frame_count else files
    st = props.hs(scene)
    subj = st.subjects.get(shot.subject)
    source = None
    if subj is not None:
        source = compat.get_strip(scene, subj.movie_strip)
    if source is None:
        source = compat.get_strip(scene, shot.sound_strip)
    start, end = shot.frame_start, shot.frame_start + len(files)
    old = compat.get_strip(scene, shot.result_strip)
    channel = None
    if old is not None:
        channel = old.channel
        compat.remove_strip(scene, old)
    if channel is None:
        occupied = [(s.channel, s.frame_final_start, s.frame_final_end) for s in compat.all_strips(scene)]
        channel = shotlib.free_channel(occupied, start, end, source.channel if source is not None else 1)
    strip = compat.new_image_sequence(scene, f"HS_{shot.name}_render", frames_dir, files, channel, start)
    snd = compat.get_strip(scene, shot.sound_strip)
    if snd is not None:  # a trimmed dialogue strip trims its picture the same way
        strip.frame_offset_start = min(snd.frame_offset_start, max(len(files) - 1, 0))
        strip.frame_offset_end = min(snd.frame_offset_end, max(len(files) - 1 - strip.frame_offset_start, 0))
    shot.result_strip, shot.frames_dir = strip.name, frames_dir
    shot.message = note
    return strip


def place_preview(scene, shot, artifacts: dict, job):
    """Show a Preview Frame result: a one-frame image strip at its frame, on a channel above every strip
    there, so the sequencer preview shows it (the previous preview strip of the shot is replaced)."""
    frames_dir = shotlib.find_frames_dir(artifacts or {})
    row = job.frame - shot.frame_start
    path = os.path.join(frames_dir, f"{row:06d}.png") if frames_dir else ""
    if not path or not os.path.isfile(path):
        raise shotlib.ShotError(f"the preview of frame {job.frame} is missing ({path or 'no frames folder'})",
                                "open the job's log")
    old = compat.get_strip(scene, shot.preview_strip)
    if old is not None:
        compat.remove_strip(scene, old)
    top = max([s.channel for s in compat.all_strips(scene)
               if s.frame_final_start <= job.frame < s.frame_final_end] or [0])
    strip = compat.new_image_sequence(scene, f"HS_{shot.name}_preview", frames_dir, [os.path.basename(path)],
                                      min(top + 1, 128), job.frame)
    shot.preview_strip = strip.name
    return strip


def reattach(context=None) -> int:
    """Point every shot and subject of every scene at its newest job on the service (after undo, redo or
    load); returns how many were re-attached. Raises :class:`client.ServiceError` when the service is down."""
    listing = prefs.make_client(context, POLL_TIMEOUT).jobs()
    n = 0
    for scene in bpy.data.scenes:
        if not hasattr(scene, "headsync"):
            continue
        st = props.hs(scene)
        plan = shotlib.reattach_shots([(s.name, s.uid, s.render_job, s.preview_job, s.expression_job)
                                       for s in st.shots if s.uid], listing)
        for name, changes in plan.items():
            shot = st.shots[name]
            for field, rec in changes:
                jid = str(rec["id"])
                old = props.get_job(scene, jid)
                preview = field == "preview_job"
                frame = _preview_frame(rec, shot) if preview else 0
                job = props.add_job(scene, jid, str(rec.get("kind") or "render"), shot.subject, shot.name,
                                    preview=preview, frame=frame, state=old.state if old is not None else "queued")
                # its result is applied again (placing replaces the shot's strip); its end is not announced twice
                job.handled = False
                job.notified = old.notified if old is not None else rec.get("state") in shotlib.FINAL_STATES
                setattr(shot, field, jid)
                if field == "render_job":
                    shot.curves_path = str((rec.get("params") or {}).get("curves") or shot.curves_path)
                _apply(scene, job, rec)
                n += 1
        splan = shotlib.reattach_subjects([(s.name, *(getattr(s, f) for f, _k in shotlib.SUBJECT_JOBS))
                                           for s in st.subjects], listing)
        for name, changes in splan.items():
            subj = st.subjects[name]
            for field, rec in changes:
                jid = str(rec["id"])
                old = props.get_job(scene, jid)
                job = props.add_job(scene, jid, rec.get("kind", ""), name,
                                    state=old.state if old is not None else "queued")
                job.handled = False
                job.notified = old.notified if old is not None else rec.get("state") in shotlib.FINAL_STATES
                setattr(subj, field, jid)
                _apply(scene, job, rec)
                n += 1
    if n:
        ensure_timer()
        _tag_redraw()
    return n


def _preview_frame(rec: dict, shot) -> int:
    """The frame a Preview Frame job renders (its ``frames`` parameter, in the shot's numbering)."""
    try:
        first, _last = curves_io.fmt.parse_frame_range(str((rec.get("params") or {}).get("frames")),
                                                       shot.frame_start, shot.frame_count)
    except curves_io.CurvesError:
        return shot.frame_start
    return shot.frame_start + first


def update_batch(scene) -> None:
    st = props.hs(scene)
    if not st.batch:
        return
    jobs = [j for j in st.jobs if j.batch == st.batch]
    if not jobs:
        return
    done = [j for j in jobs if j.state in shotlib.FINAL_STATES and j.handled]
    failed = [j for j in done if j.state != "succeeded" or
              (st.shots.get(j.shot) is not None and st.shots[j.shot].state == "failed")]
    not_queued = [s for s in st.shots if s.state == "failed" and not any(j.shot == s.name for j in jobs)]
    if len(done) < len(jobs):
        st.batch_report = f"Render All: {len(done)}/{len(jobs)} finished"
        return
    parts = [f"Render All: {len(done) - len(failed)} rendered"]
    if failed or not_queued:
        parts.append(f"{len(failed) + len(not_queued)} failed (" + ", ".join(
            [j.shot for j in failed] + [s.name for s in not_queued]) + ")")
    st.batch_report = ", ".join(parts)


def batch_fraction(scene) -> float:
    st = props.hs(scene)
    jobs = [j for j in st.jobs if j.batch == st.batch and st.batch]
    if not jobs:
        return 0.0
    return sum(1.0 if j.state in shotlib.FINAL_STATES else j.fraction for j in jobs) / len(jobs)


def _tag_redraw() -> None:
    wm = getattr(bpy.context, "window_manager", None)
    if wm is None:
        return
    for win in wm.windows:
        for area in win.screen.areas:
            if area.type in ('SEQUENCE_EDITOR', 'GRAPH_EDITOR', 'PREFERENCES'):
                area.tag_redraw()


# ---- the timer ---------------------------------------------------------------------------------
def _timer():
    try:
        n = poll_once()
    except Exception as e:  # a bug must not kill the timer silently nor spam tracebacks
        print(f"HeadSync: polling failed: {e!r}")
        return DOWN_INTERVAL
    if n == 0:
        return None
    if not prefs.STATUS["connected"]:
        return DOWN_INTERVAL
    previewing = any(j.preview and j.state in shotlib.ACTIVE_STATES
                     for s in bpy.data.scenes if hasattr(s, "headsync") for j in props.hs(s).jobs)
    return PREVIEW_INTERVAL if previewing else ACTIVE_INTERVAL


def ensure_timer() -> None:
    if not bpy.app.timers.is_registered(_timer):
        bpy.app.timers.register(_timer, first_interval=PREVIEW_INTERVAL, persistent=True)


# ---- starting the service ---------------------------------------------------------------------
def start_service(context=None) -> str:
    """Start ``headsync serve`` unless a service already answers; returns a message. Raises ServiceError."""
    if prefs.check(context, timeout=1.0):
        return f"the HeadSync service already runs (device {prefs.STATUS['device']})"
    p = prefs.get(context)
    ws = prefs.workspace(context)
    if p is None or not p.backend_python:
        raise client.ServiceError("no backend Python is set",
                                  "set it in the preferences: the .venv/bin/python of a HeadSync checkout")
    proc = _state.get("proc")
    if proc is not None and proc.poll() is None:
        return "the HeadSync service is starting"
    # A stale server.json (a service that died) would be read as the new one: remove it first.
    sj = os.path.join(ws, client.SERVER_JSON) if ws else ""
    if sj and os.path.exists(sj):
        try:
            if not client.pid_alive(client.read_server_json(ws).pid):
                os.unlink(sj)
        except (client.ServiceError, OSError):
            pass
    _state["proc"] = client.start_service(bpy.path.abspath(p.backend_python), ws)
    _state["waiting_since"] = time.monotonic()
    prefs.STATUS.update(connected=False, message="starting the service…", hint="")
    if not bpy.app.timers.is_registered(_wait_for_service):
        bpy.app.timers.register(_wait_for_service, first_interval=0.5)
    return f"starting the HeadSync service on {ws}"


def _wait_for_service():
    proc = _state.get("proc")
    if proc is not None and proc.poll() is not None:
        ws = prefs.workspace(bpy.context)
        prefs.STATUS.update(connected=False, message=f"the service exited (code {proc.returncode})",
                            hint=f"see {os.path.join(ws, 'blender_service.log')}")
        _state["proc"] = None
        return None
    if prefs.check(bpy.context, timeout=0.5):
        ensure_timer()
        _tag_redraw()
        return None
    if time.monotonic() - _state["waiting_since"] > 120:
        prefs.STATUS.update(connected=False, message="the service did not come up within 2 minutes",
                            hint="see blender_service.log in the workspace")
        return None
    return 0.5


def _reattach_timer():
    try:
        reattach(bpy.context)
    except client.ServiceError as e:  # the service is down: the polling timer reports it
        prefs.STATUS.update(connected=False, message=e.message, hint=e.hint)
    except Exception as e:  # a bug must not break undo
        print(f"HeadSync: re-attaching jobs failed: {e!r}")
    if any_active():
        ensure_timer()
    return None


def schedule_reattach() -> None:
    """Re-attach from a timer, not in the handler: undo stays instant even when the service is slow."""
    if not bpy.app.timers.is_registered(_reattach_timer):
        bpy.app.timers.register(_reattach_timer, first_interval=REATTACH_DELAY)


@persistent
def _undo_redo_post(*_args):
    if any(len(props.hs(s).shots) or len(props.hs(s).subjects) for s in bpy.data.scenes if hasattr(s, "headsync")):
        schedule_reattach()


@persistent
def _load_post(*_args):
    if any_active():
        ensure_timer()
    schedule_reattach()
    p = prefs.get(bpy.context)
    if p is not None and p.auto_start and p.backend_python:
        if not bpy.app.timers.is_registered(_auto_start):
            bpy.app.timers.register(_auto_start, first_interval=0.5)
    elif p is not None and (p.workspace or p.service_url):
        prefs.check(bpy.context, timeout=0.5)  # fills the status line; a service that is down refuses at once


def _auto_start():
    try:
        start_service(bpy.context)
    except client.ServiceError as e:
        prefs.STATUS.update(connected=False, message=e.message, hint=e.hint)
    return None


HANDLERS = (("load_post", _load_post), ("undo_post", _undo_redo_post), ("redo_post", _undo_redo_post))


def register():
    for name, fn in HANDLERS:
        if fn not in getattr(bpy.app.handlers, name):
            getattr(bpy.app.handlers, name).append(fn)
    bpy.app.timers.register(_load_post, first_interval=1.0)  # the file open at enable time


def unregister():
    for name, fn in HANDLERS:
        if fn in getattr(bpy.app.handlers, name):
            getattr(bpy.app.handlers, name).remove(fn)
    for fn in (_timer, _wait_for_service, _auto_start, _load_post, _reattach_timer, _clear_status):
        if bpy.app.timers.is_registered(fn):
            bpy.app.timers.unregister(fn)
