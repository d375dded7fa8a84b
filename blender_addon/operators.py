"""Operators (``headsync.*``) and the scene actions behind them.

Every operator turns an expected failure (backend down, job refused, file moved, subject missing) into
one ``self.report`` line with a hint, never a traceback. Network calls are short (``client`` timeouts);
job progress arrives through ``polling`` (``bpy.app.timers``).
"""

from __future__ import annotations

import os
import time

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, StringProperty

from . import compat, curves_io, keys, polling, prefs, props
from . import subjects as subjectlib
from .client import ServiceError
from .curves_io import CORE_NAMES, CurvesError
from .shots import ShotError
from . import shots as shotlib

GROUP = "HeadSync Expression"
#: The enum value of linear interpolation, for ``keyframe_points.foreach_set("interpolation", ...)``.
_LINEAR = bpy.types.Keyframe.bl_rna.properties["interpolation"].enum_items["LINEAR"].value
POSE_GROUP = "HeadSync Head Pose"


class HeadSyncError(Exception):
    """An expected failure with a message for the user (and a hint)."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message, self.hint = message, hint


def _text(e) -> str:
    msg = getattr(e, "message", None) or str(e)
    hint = getattr(e, "hint", "")
    return f"{msg} — {hint}" if hint else msg


EXPECTED = (HeadSyncError, ServiceError, ShotError, CurvesError)


def _client(timeout: float = 3.0):
    return prefs.make_client(bpy.context, timeout)


def _require_workspace() -> str:
    ws = prefs.workspace(bpy.context)
    if not ws:
        raise HeadSyncError("no HeadSync workspace is set", "set it in Edit > Preferences > Add-ons > HeadSync")
    return ws


def _blend_stem() -> str:
    path = bpy.data.filepath
    return shotlib.safe_name(os.path.splitext(os.path.basename(path))[0], "untitled") if path else "untitled"


# ---- subjects ---------------------------------------------------------------------------------
def submit_prepare(scene, subj, preset: str = "") -> str:
    video = bpy.path.abspath(subj.video)
    if not os.path.isfile(video):
        raise HeadSyncError(f"the video of subject {subj.name!r} is missing: {video}",
                            "was it moved? re-import the subject from its new place")
    params = {"video": os.path.abspath(video)}
    if subj.audio:
        audio = bpy.path.abspath(subj.audio)
        if not os.path.isfile(audio):
            raise HeadSyncError(f"the audio of subject {subj.name!r} is missing: {audio}", "was it moved?")
        params["audio"] = os.path.abspath(audio)
    if preset or subj.preset:
        params["preset"] = preset or subj.preset
    job_id = _client().submit("prepare", subj.name, params)
    props.add_job(scene, job_id, "prepare", subj.name)
    subj.prepare_job, subj.stage, subj.message, subj.hint = job_id, "preparing", "", ""
    polling.ensure_timer()
    return job_id


def _require_prepared(subj) -> None:
    if subj.stage in ("new", "failed") and not subj.prepare_job:
        raise HeadSyncError(f"subject {subj.name!r} is not prepared", "prepare it first (Import Subject)")


def submit_train(scene, subj, preset: str, resume: bool, run: str = "default", renderer: str = "") -> str:
    """Submit ``train``; ``renderer`` one the service lists (empty or ``subjects.PRESET``: the preset's)."""
    _require_prepared(subj)
    params = {"preset": preset, "run": run or "default", "resume": bool(resume)}
    if renderer and renderer != subjectlib.PRESET:
        params["renderer"] = renderer
    job_id = _client().submit("train", subj.name, params)
    props.add_job(scene, job_id, "train", subj.name)
    subj.train_job, subj.run, subj.message, subj.hint = job_id, run or "default", "", ""
    subj.renderer = params.get("renderer", "")  # the run's own, from the service, once it is trained
    if subj.stage != "preparing":
        subj.stage = "training"
    polling.ensure_timer()
    return job_id


def submit_torso(scene, subj, preset: str, mode: str = "") -> str:
    """Submit ``torso`` (the torso path's parts); ``mode`` one the service lists (empty or PRESET: the preset's)."""
    _require_prepared(subj)
    params = {"preset": preset}
    if mode and mode != subjectlib.PRESET:
        params["mode"] = mode
    job_id = _client().submit("torso", subj.name, params)
    props.add_job(scene, job_id, "torso", subj.name)
    subj.torso_job, subj.message, subj.hint = job_id, "", ""
    polling.ensure_timer()
    return job_id


# ---- shots ------------------------------------------------------------------------------------
def _set_custom_props(obj) -> None:
    for name in CORE_NAMES:
        if name not in obj.keys():
            obj[name] = 0.0
        try:
            obj.id_properties_ui(name).update(min=0.0, max=1.0, soft_min=0.0, soft_max=1.0,
                                              description=f"HeadSync expression coefficient {name} (0..1)")
        except (AttributeError, TypeError):
            pass


def key_columns(obj, frame_start: int, cols: dict, group: str = GROUP, tol: float | None = None) -> dict:
    """Key whole columns in bulk: one ``keyframe_points.add`` + ``foreach_set`` per F-curve.

    ``cols`` maps a data path (or (data_path, index)) to the per-frame values from ``frame_start``. With
    ``tol`` (same units as the values) only the keys :func:`keys.sparse_keys` picks are set, with linear
    interpolation, so the F-curve stays within ``tol`` of every value; ``None`` keys every frame. Returns
    {data path: number of keys}.
    """
    counts = {}
    for key, values in cols.items():
        path, index = key if isinstance(key, tuple) else (key, 0)
        fc = compat.fresh_fcurve(obj, path, index, group)
        kp = fc.keyframe_points
        idx = keys.dense_keys(values) if tol is None else keys.sparse_keys(values, tol)
        kp.add(len(idx))
        kp.foreach_set("co", shotlib.keyframe_co(frame_start, values, idx))
        if tol is not None:  # the error bound holds for straight lines between the keys
            kp.foreach_set("interpolation", [_LINEAR] * len(idx))
        fc.update()
        counts[f"{path}{index}"] = len(idx)
    return counts


def key_shot(obj, frame_start: int, rows, rotation=None, translation=None,
             tolerance: keys.Tolerance | None = keys.DEFAULT) -> dict:
    """Key the seven expression curves (and the head pose) of a shot's Empty; ``tolerance`` None: every
    frame. Returns {data path: number of keys}."""
    _set_custom_props(obj)
    tol = tolerance
    colvals = shotlib.columns(rows, 7)
    counts = key_columns(obj, frame_start, {shotlib.data_path(n): colvals[j] for j, n in enumerate(CORE_NAMES)},
                         GROUP, tol.expression if tol else None)
    if rotation is not None:
        rc = shotlib.columns(rotation, 3)
        obj.rotation_mode = 'XYZ'
        counts.update(key_columns(obj, frame_start, {("rotation_euler", i): rc[i] for i in range(3)}, POSE_GROUP,
                                  tol.rotation if tol else None))
        if translation is not None:
            tc = shotlib.columns(translation, 3)
            counts.update(key_columns(obj, frame_start, {("location", i): tc[i] for i in range(3)}, POSE_GROUP,
                                      tol.translation_units(translation) if tol else None))
    return counts


def sound_strip_for_shot(scene, strip_name: str = ""):
    strip = compat.get_strip(scene, strip_name) if strip_name else None
    if strip_name and strip is None:
        raise HeadSyncError(f"there is no strip {strip_name!r} in the sequencer", "select the dialogue's sound strip")
    if strip is None:
        act = compat.active_strip(scene)
        if act is not None and act.type == 'SOUND' and act.select:
            strip = act
        else:
            sel = [s for s in compat.selected_strips(scene) if s.type == 'SOUND']
            strip = sel[0] if sel else (act if act is not None and act.type == 'SOUND' else None)
    if strip is None:
        raise HeadSyncError("no sound strip is selected", "select the dubbed dialogue's sound strip in the sequencer")
    if strip.type != 'SOUND':
        raise HeadSyncError(f"strip {strip.name!r} is not a sound strip", "select the dubbed dialogue's sound strip")
    return strip


def captured_curves(subject: str, frames: int | None) -> dict:
    """The subject's captured performance over ``frames`` frames (default its own), validated: fetched
    from the service once per subject (``Client.captured``, its own frames), then played back and forth
    over the shot by the rule a render without curves follows (``curves_format.looped``)."""
    doc = curves_io.validate(_client(timeout=10.0).captured(subject))
    return shotlib.captured_rows(curves_io.looped(doc, frames) if frames else doc)


def create_shot(scene, subject: str, strip_name: str = "", name: str = "", dense: bool = False,
                tolerance: keys.Tolerance = keys.DEFAULT):
    """A new shot from a sound strip and a subject: the Empty ``HS_<shot>`` keyed from the captured curves
    (sparse keys within ``tolerance``, or every frame when ``dense``)."""
    st = props.hs(scene)
    if not subject:
        raise HeadSyncError("no subject chosen", "import a subject first, then pick it")
    if st.subjects.get(subject) is None:
        raise HeadSyncError(f"subject {subject!r} is not in this scene", "import it (Import Subject) first")
    strip = sound_strip_for_shot(scene, strip_name)
    audio = compat.strip_media_path(strip)
    if not audio or not os.path.isfile(audio):
        raise HeadSyncError(f"the sound of strip {strip.name!r} is missing: {audio or '(no file)'}",
                            "was it moved? relink it (File > External Data > Find Missing Files)")
    fps = captured_curves(subject, None)["fps"]  # renders run at the subject's source frame rate
    scene_fps = scene.render.fps / scene.render.fps_base
    start = int(round(strip.frame_start))
    seconds = shotlib.audio_seconds(audio)
    count = shotlib.render_frame_count(seconds, fps) if seconds else int(strip.frame_duration)
    if count < 1:
        raise HeadSyncError(f"strip {strip.name!r} is empty")
    cap = captured_curves(subject, count)
    rows, rot, trans = cap["values"], cap["rotation"], cap["translation"]
    warning = ""
    if abs(scene_fps - fps) > 1e-3:
        warning = (f"the scene runs at {scene_fps:g} fps but subject {subject!r} at {fps:g} fps: set the "
                   f"scene's frame rate to {fps:g} so the render lines up with the sound")

    base = shotlib.safe_name(name or os.path.splitext(strip.name)[0] or "shot", "shot")
    shot_name = shotlib.unique_name(base, [s.name for s in st.shots] +
                                    [o.name[3:] for o in bpy.data.objects if o.name.startswith("HS_")])
    obj = bpy.data.objects.new(shotlib.empty_name(shot_name), None)
    obj.empty_display_type = 'SPHERE'
    obj.empty_display_size = 0.2
    scene.collection.objects.link(obj)
    n_keys = key_shot(obj, start, rows, rot, trans, None if dense else tolerance)

    shot = st.shots.add()
    shot.name, shot.uid = shot_name, shotlib.new_uid()
    shot.subject, shot.sound_strip, shot.audio = subject, strip.name, audio
    shot.frame_start, shot.frame_count, shot.fps = start, count, fps
    shot.controls = obj
    shot.use_head_pose = rot is not None and trans is not None
    shot.state, shot.message, shot.hint = "keyed", warning, ""
    st.shot_index = len(st.shots) - 1
    if start + count - 1 > scene.frame_end:
        scene.frame_end = start + count - 1
    return shot, n_keys


def _stamp() -> str:
    """A file name stem that sorts by time (milliseconds: two clicks in one second get two files)."""
    return time.strftime("%Y%m%d-%H%M%S") + f"-{int(time.time() * 1000) % 1000:03d}"


def _shot_subject(scene, shot):
    subj = props.hs(scene).subjects.get(shot.subject)
    if subj is None:
        raise HeadSyncError(f"shot {shot.name!r}: subject {shot.subject!r} is not in this scene",
                            "import the subject again")
    return subj


def _shot_audio(shot) -> str:
    audio = bpy.path.abspath(shot.audio)
    if not os.path.isfile(audio):
        raise HeadSyncError(f"shot {shot.name!r}: its sound {audio} is missing", "was it moved? relink the sound strip")
    return os.path.abspath(audio)


def submit_expressions(scene, shot, livelink: str = "", livelink_fps: float = 0.0) -> str:
    """Submit the ``express`` job of a shot: expressions generated from its dialogue, or (``livelink``) a Live
    Link Face take mapped onto the subject, both through the subject's VQ-VAE and as long as the shot; the
    result is keyed on the shot when it lands (:func:`apply_expressions`)."""
    subj = _shot_subject(scene, shot)
    params = {"audio": _shot_audio(shot)}
    if livelink:
        csv = os.path.abspath(bpy.path.abspath(livelink))
        if not os.path.isfile(csv):
            raise HeadSyncError(f"no such Live Link Face take: {csv}", "pick the CSV the app exported")
        params["livelink"] = csv
        if livelink_fps > 0:
            params["livelink_fps"] = float(livelink_fps)
    if not shot.uid:
        shot.uid = shotlib.new_uid()
    params["out"] = str(shotlib.curves_path(_require_workspace(), _blend_stem(), shot.uid, _stamp(), "expressions"))
    job_id = _client().submit("express", subj.name, params)
    props.add_job(scene, job_id, "express", subj.name, shot.name)
    shot.expression_job, shot.expression_file = job_id, params.get("livelink", "")
    shot.message, shot.hint = "", ""
    polling.ensure_timer()
    return job_id


def key_expressions(shot, rows, source: str) -> int:
    """Replace the shot's seven expression curves by ``rows`` (one per shot frame; sparse keys within the
    default tolerance, editable like captured ones); the head pose keys stay. Returns the number of keys."""
    obj = shot.controls
    if obj is None:
        raise HeadSyncError(f"the controls of shot {shot.name!r} are gone",
                            f"the Empty {shotlib.empty_name(shot.name)} was deleted; create the shot again")
    n = key_shot(obj, shot.frame_start, rows)
    shot.expression_source = source
    return sum(n.values())


def apply_expressions(shot, artifacts: dict) -> int:
    """Key the curves a finished ``express`` job wrote (its ``curves`` artifact) on the shot."""
    path = artifacts.get("curves") if isinstance(artifacts, dict) else None
    if not isinstance(path, str) or not path:
        raise HeadSyncError("the expressions job names no curves file", "open the job's log")
    doc = curves_io.validate(curves_io.read(path), shot.frame_count)
    source = "imported" if artifacts.get("input") == "livelink" else "generated"
    n = key_expressions(shot, doc["expression"]["values"], source)
    shot.message, shot.hint = f"{n} expression keys {source}", ""
    return n


def sample_shot(shot) -> dict:
    """The shot's curves.json document, sampled from its F-curves at every frame (hand edits count)."""
    obj = shot.controls
    if obj is None:
        raise HeadSyncError(f"the controls of shot {shot.name!r} are gone",
                            f"the Empty {shotlib.empty_name(shot.name)} was deleted; create the shot again")
    frames = range(shot.frame_start, shot.frame_start + shot.frame_count)
    cols = []
    for name in CORE_NAMES:
        fc = compat.find_fcurve(obj, shotlib.data_path(name), 0)
        if fc is not None and len(fc.keyframe_points):
            ev = fc.evaluate
            cols.append([ev(f) for f in frames])
        else:
            v = float(obj.get(name, 0.0))
            cols.append([v] * shot.frame_count)
    rows = [list(r) for r in zip(*cols)]
    rows, _clamped = curves_io.clamp01(rows)
    rot = trans = None
    if shot.use_head_pose:
        rfc = [compat.find_fcurve(obj, "rotation_euler", i) for i in range(3)]
        if all(fc is not None for fc in rfc):
            rot = [list(r) for r in zip(*[[fc.evaluate(f) for f in frames] for fc in rfc])]
            lfc = [compat.find_fcurve(obj, "location", i) for i in range(3)]
            if all(fc is not None for fc in lfc):
                trans = [list(r) for r in zip(*[[fc.evaluate(f) for f in frames] for fc in lfc])]
            else:  # the pose needs both halves: the Empty's current location stands in
                trans = [list(obj.location)] * shot.frame_count
    return curves_io.make(rows, shot.fps, shot.frame_start, rot, trans, source="edited")


def submit_render(scene, shot, batch: str = "", frame: int | None = None) -> str:
    """Sample the shot into curves.json and submit its render (``frame``: only that frame, Preview Frame)."""
    st = props.hs(scene)
    subj = _shot_subject(scene, shot)
    audio = _shot_audio(shot)
    ws = _require_workspace()
    if frame is not None and not shot.frame_start <= frame < shot.frame_start + shot.frame_count:
        raise HeadSyncError(f"frame {frame} is outside shot {shot.name!r} (frames {shot.frame_start}-"
                            f"{shot.frame_start + shot.frame_count - 1})", "move the playhead into the shot")
    doc = sample_shot(shot)
    if not shot.uid:  # a shot from an older version of the add-on
        shot.uid = shotlib.new_uid()
    path = str(shotlib.curves_path(ws, _blend_stem(), shot.uid, _stamp() + ("-preview" if frame is not None else "")))
    try:
        curves_io.write(path, doc)
    except OSError as e:
        raise HeadSyncError(f"cannot write {path} ({e.strerror or e})", "check the workspace folder") from None
    params = {"audio": audio, "curves": path, "run": subj.run or st.render_run or "default"}
    if shot.torso and shot.torso != subjectlib.SUBJECT:
        params["torso"] = shot.torso
    if frame is not None:
        params["frames"] = f"{frame}-{frame}"
    job_id = _client().submit("render", subj.name, params)
    props.add_job(scene, job_id, "render", subj.name, shot.name, batch, preview=frame is not None,
                  frame=frame or 0)
    if frame is not None:
        shot.preview_job = job_id
    else:
        shot.render_job, shot.curves_path, shot.state, shot.message, shot.hint = job_id, path, "queued", "", ""
    polling.ensure_timer()
    return job_id


def is_busy(scene, shot) -> bool:
    """A render of the shot is queued or running."""
    job = props.get_job(scene, shot.render_job)
    return job is not None and job.state in shotlib.ACTIVE_STATES


def render_all(scene) -> tuple[list[str], list[tuple[str, str]], str, list[str]]:
    """Queue every shot that is not already rendering; go on past a shot that cannot be queued.
    Returns (queued, [(shot, why)], batch, skipped busy shots)."""
    st = props.hs(scene)
    batch = time.strftime("batch-%Y%m%d-%H%M%S")
    st.batch, st.batch_report = batch, ""
    queued, failed, busy = [], [], []
    for shot in st.shots:
        if is_busy(scene, shot):
            busy.append(shot.name)
            continue
        try:
            submit_render(scene, shot, batch)
            queued.append(shot.name)
        except EXPECTED as e:
            shot.state, shot.message, shot.hint = "failed", getattr(e, "message", str(e)), getattr(e, "hint", "")
            failed.append((shot.name, _text(e)))
    polling.update_batch(scene)
    return queued, failed, batch, busy


def delete_shot(scene, shot, remove_render: bool = False, cancel: bool = True) -> list[str]:
    """Remove a shot: its controls Empty and their Action, its preview strip, optionally its rendered strip;
    its running jobs are cancelled on the service when ``cancel``. Returns what could not be cancelled."""
    st = props.hs(scene)
    problems = []
    for jid in (shot.render_job, shot.preview_job, shot.expression_job):
        job = props.get_job(scene, jid)
        if cancel and job is not None and job.state in shotlib.ACTIVE_STATES:
            try:
                _client().cancel(jid)
            except EXPECTED as e:
                problems.append(f"job {jid}: {_text(e)}")
    for name in (shot.preview_strip, shot.result_strip if remove_render else ""):
        strip = compat.get_strip(scene, name)
        if strip is not None:
            compat.remove_strip(scene, strip)
    obj = shot.controls
    if obj is not None:
        action = obj.animation_data.action if obj.animation_data else None
        bpy.data.objects.remove(obj, do_unlink=True)
        if action is not None and action.users == 0:
            bpy.data.actions.remove(action)
    for j in st.jobs:  # its jobs are no longer the shot's (a late result is not placed)
        if j.shot == shot.name:
            j.shot = ""
    idx = next(i for i, s in enumerate(st.shots) if s.name == shot.name)
    st.shots.remove(idx)
    st.shot_index = min(st.shot_index, len(st.shots) - 1)
    return problems


# ---- operators --------------------------------------------------------------------------------
def _preset_choice(op) -> str:
    """The operator's preset: its custom .toml file when set (absolute), else the named preset."""
    if getattr(op, "preset_file", ""):
        path = os.path.abspath(bpy.path.abspath(op.preset_file))
        if not (path.endswith(".toml") and os.path.isfile(path)):
            raise HeadSyncError(f"no such preset file: {path}", "pick a .toml preset or clear the field")
        return path
    return op.preset


class _Op:
    bl_options = {'REGISTER'}

    def fail(self, e) -> set:
        self.report({'ERROR'}, _text(e))
        return {'CANCELLED'}


def _scene(context):
    return compat.sequencer_scene(context)


def _scene_subject(context, name: str):
    st = props.hs(_scene(context))
    if name:
        return st.subjects.get(name)
    if 0 <= st.subject_index < len(st.subjects):
        return st.subjects[st.subject_index]
    return None


def _scene_shot(context, name: str):
    st = props.hs(_scene(context))
    if name:
        return st.shots.get(name)
    if 0 <= st.shot_index < len(st.shots):
        return st.shots[st.shot_index]
    return None


def _has_settings(context) -> bool:
    return _scene(context) is not None and hasattr(_scene(context), "headsync")


def confirm(op, context, event, title: str, message: str, confirm_text: str) -> set:
    """Ask before doing something that loses work (a popup with OK and Cancel; the operator runs on OK)."""
    return context.window_manager.invoke_confirm(op, event, title=title, message=message,
                                                 confirm_text=confirm_text, icon='WARNING')


def _poll_fail(cls, message: str) -> bool:
    cls.poll_message_set(message)
    return False


def _sound_strip_names(self, context, edit_text):
    """The New Shot strip search: sound strips only (the dialogue that drives a shot)."""
    scene = _scene(context)
    low = (edit_text or "").lower()
    return sorted(s.name for s in compat.all_strips(scene) if s.type == 'SOUND' and low in s.name.lower())


class HEADSYNC_OT_check_connection(_Op, bpy.types.Operator):
    bl_idname = "headsync.check_connection"
    bl_label = "Check Connection"
    bl_description = "Ask the HeadSync service for its health (device, GPU)"

    def execute(self, context):
        # an explicit click may wait a little longer: a fresh service answers once it has probed its device
        if prefs.check(context, timeout=5.0):
            s = prefs.STATUS
            self.report({'INFO'}, f"HeadSync service: device {s['device']}, GPU {s['gpu'] or 'none'}")
            return {'FINISHED'}
        self.report({'WARNING'}, f"{prefs.STATUS['message']} — {prefs.STATUS['hint']}".rstrip(" —"))
        return {'CANCELLED'}


class HEADSYNC_OT_start_service(_Op, bpy.types.Operator):
    bl_idname = "headsync.start_service"
    bl_label = "Start Service"
    bl_description = "Start `headsync serve` with the backend Python on the workspace (in the background)"

    def execute(self, context):
        try:
            msg = polling.start_service(context)
        except EXPECTED as e:
            return self.fail(e)
        self.report({'INFO'}, msg)
        return {'FINISHED'}


class HEADSYNC_OT_refresh(_Op, bpy.types.Operator):
    bl_idname = "headsync.refresh"
    bl_label = "Refresh"
    bl_description = "Poll the service now for the state of every job of this file"

    def execute(self, context):
        try:
            if prefs.check(context):
                polling.refresh_subjects(context)
                polling.reattach()
        except EXPECTED as e:
            return self.fail(e)
        n = polling.poll_once()
        if not prefs.STATUS["connected"]:
            self.report({'WARNING'}, f"{prefs.STATUS['message']} — {prefs.STATUS['hint']}".rstrip(" —"))
            return {'CANCELLED'}
        self.report({'INFO'}, f"{n} active job(s)")
        return {'FINISHED'}


class HEADSYNC_OT_notify(bpy.types.Operator):
    """Put a job's end in the info log and the status bar (the polling timer runs it: timers cannot report)."""

    bl_idname = "headsync.notify"
    bl_label = "HeadSync Notification"
    bl_options = {'INTERNAL'}

    level: StringProperty(default='INFO', options={'SKIP_SAVE'})
    message: StringProperty(options={'SKIP_SAVE'})

    def execute(self, context):
        self.report({self.level if self.level in ('INFO', 'WARNING', 'ERROR') else 'INFO'}, self.message)
        return {'FINISHED'}


class HEADSYNC_OT_import_subject(_Op, bpy.types.Operator):
    bl_idname = "headsync.import_subject"
    bl_label = "Import Subject"
    bl_description = ("Add a subject's video (and audio) to the sequencer, register the subject and submit "
                      "its 'prepare' job")
    bl_options = {'REGISTER', 'UNDO'}

    filepath: StringProperty(name="Video", subtype='FILE_PATH')
    filter_movie: BoolProperty(default=True, options={'HIDDEN', 'SKIP_SAVE'})
    filter_folder: BoolProperty(default=True, options={'HIDDEN', 'SKIP_SAVE'})
    audio: StringProperty(name="Audio", subtype='FILE_PATH', description="Optional audio replacing the video's")
    name: StringProperty(name="Subject", description="Name in the workspace (default: from the file name)")
    preset: EnumProperty(name="Preset", items=props.PRESETS, default="preview")
    preset_file: StringProperty(name="Custom Preset", subtype='FILE_PATH',
                                description="A preset .toml file; overrides Preset when set")
    channel: IntProperty(name="Channel", default=1, min=1, max=125)
    frame_start: IntProperty(name="Start Frame", default=-1, description="-1: the current frame")
    submit: BoolProperty(name="Prepare Now", default=True, description="Submit the 'prepare' job")

    @classmethod
    def poll(cls, context):
        return _has_settings(context) or _poll_fail(cls, "no scene to import into")

    def invoke(self, context, event):
        context.window_manager.fileselect_add(self)
        return {'RUNNING_MODAL'}

    def execute(self, context):
        scene = _scene(context)
        st = props.hs(scene)
        try:
            preset = _preset_choice(self)
        except HeadSyncError as e:
            return self.fail(e)
        video = os.path.abspath(bpy.path.abspath(self.filepath)) if self.filepath else ""
        if not video or not os.path.isfile(video):
            return self.fail(HeadSyncError(f"no such video: {video or '(none chosen)'}", "pick a video file"))
        audio = os.path.abspath(bpy.path.abspath(self.audio)) if self.audio else ""
        if audio and not os.path.isfile(audio):
            return self.fail(HeadSyncError(f"no such audio file: {audio}", "pick an audio file or leave it empty"))
        base = shotlib.safe_name(self.name or os.path.splitext(os.path.basename(video))[0], "subject")
        if self.name and base != self.name:
            self.report({'INFO'}, f"subject name {self.name!r} became {base!r}")
        name = shotlib.free_subject_name(base, prefs.workspace(context), video, [s.name for s in st.subjects])
        if name != base:
            self.report({'INFO'}, f"subject {base!r} is taken (another video or already in this scene): "
                                  f"importing as {name!r}")
        start = scene.frame_current if self.frame_start < 0 else self.frame_start
        first_import = not list(compat.all_strips(scene))
        try:
            movie = compat.new_movie(scene, name, video, self.channel + 1, start)
        except RuntimeError as e:
            return self.fail(HeadSyncError(f"Blender cannot open {video} ({e})", "is it a video file?"))
        sound = None
        try:
            sound = compat.new_sound(scene, f"{name}.audio", audio or video, self.channel, start)
        except RuntimeError:
            sound = None  # a video without an audio track (or a Blender built without audio)
        if first_import and getattr(movie, "fps", 0):
            fps = float(movie.fps)
            scene.render.fps, scene.render.fps_base = round(fps), round(fps) / fps
            scene.frame_start, scene.frame_end = movie.frame_final_start, movie.frame_final_end - 1
            try:  # and its picture size, so the rendered plates line up pixel for pixel
                elem = movie.elements[0]
                if elem.orig_width and elem.orig_height:
                    scene.render.resolution_x, scene.render.resolution_y = elem.orig_width, elem.orig_height
                    scene.render.resolution_percentage = 100
            except (AttributeError, IndexError):
                pass
        subj = st.subjects.add()
        subj.name, subj.video, subj.audio, subj.preset = name, video, audio, preset
        subj.movie_strip = movie.name
        subj.sound_strip = sound.name if sound else ""
        subj.stage = "new"
        st.subject_index = len(st.subjects) - 1
        if not self.submit:
            self.report({'INFO'}, f"subject {name!r} added; prepare it when ready")
            return {'FINISHED'}
        try:
            job = submit_prepare(scene, subj, preset)
        except EXPECTED as e:
            subj.message, subj.hint = getattr(e, "message", str(e)), getattr(e, "hint", "")
            self.report({'WARNING'}, f"subject {name!r} added, but 'prepare' was not submitted: {_text(e)}")
            return {'FINISHED'}
        self.report({'INFO'}, f"subject {name!r}: prepare job {job} submitted")
        return {'FINISHED'}


class HEADSYNC_OT_prepare_subject(_Op, bpy.types.Operator):
    bl_idname = "headsync.prepare_subject"
    bl_label = "Prepare Subject"
    bl_description = "Submit (again) the 'prepare' job of a subject, with its own preset unless you pick another"
    bl_options = {'REGISTER', 'UNDO'}

    subject: StringProperty(name="Subject")
    preset: EnumProperty(name="Preset", items=props.PRESETS, default="preview",
                         description="Default: the preset the subject was imported with")
    preset_file: StringProperty(name="Custom Preset", subtype='FILE_PATH',
                                description="A preset .toml file; overrides Preset when set")

    @classmethod
    def poll(cls, context):
        if not _has_settings(context) or not len(props.hs(_scene(context)).subjects):
            return _poll_fail(cls, "import a subject first")
        return True

    def execute(self, context):
        subj = _scene_subject(context, self.subject)
        if subj is None:
            return self.fail(HeadSyncError("no subject chosen", "import a subject first"))
        try:
            # the subject's own preset (a name or a .toml path) unless the caller chose one
            preset = _preset_choice(self) if (self.preset_file or self.properties.is_property_set("preset")) \
                else (subj.preset or self.preset)
            job = submit_prepare(_scene(context), subj, preset)
        except EXPECTED as e:
            return self.fail(e)
        self.report({'INFO'}, f"prepare job {job} submitted for {subj.name!r} ({os.path.basename(preset)})")
        return {'FINISHED'}


def _prepared_subject_poll(cls, context, job_field: str, busy: str) -> bool:
    """The current subject is prepared and its job ``job_field`` is not running (``busy``: why, '{}' its name)."""
    subj = _scene_subject(context, "") if _has_settings(context) else None
    if subj is None:
        return _poll_fail(cls, "import a subject first")
    if subj.stage in ("new", "failed") and not subj.prepare_job:
        return _poll_fail(cls, f"subject {subj.name} is not prepared yet: prepare it first")
    job = props.get_job(_scene(context), getattr(subj, job_field))
    if job is not None and job.state in shotlib.ACTIVE_STATES:
        return _poll_fail(cls, busy.format(subj.name))
    return True


class _SubjectJobOp(_Op):
    """A dialog submitting a job of a subject with a preset (a name or a .toml); ``submit`` returns the report."""

    FIELDS: tuple = ()  # the dialog's fields after the subject

    def draw(self, context):
        col = self.layout.column()
        col.prop_search(self, "subject", props.hs(_scene(context)), "subjects")
        for name in self.FIELDS:
            col.prop(self, name)

    def execute(self, context):
        subj = _scene_subject(context, self.subject)
        if subj is None:
            return self.fail(HeadSyncError(f"no subject {self.subject!r} in this scene" if self.subject
                                           else "no subject chosen", "import a subject first"))
        try:
            self.report({'INFO'}, self.submit(context, subj, _preset_choice(self)))
        except EXPECTED as e:
            return self.fail(e)
        return {'FINISHED'}


class HEADSYNC_OT_train_subject(_SubjectJobOp, bpy.types.Operator):
    bl_idname = "headsync.train_subject"
    bl_label = "Train Subject"
    bl_description = "Submit the 'train' job of a prepared subject (resume continues from the last checkpoint)"
    bl_options = {'REGISTER', 'UNDO'}
    FIELDS = ("preset", "preset_file", "renderer", "run", "resume")

    subject: StringProperty(name="Subject")
    preset: EnumProperty(name="Preset", items=props.PRESETS, default="preview")
    preset_file: StringProperty(name="Custom Preset", subtype='FILE_PATH',
                                description="A preset .toml file; overrides Preset when set")
    renderer: EnumProperty(name="Renderer", items=props.renderer_items,
                           description="The renderer to train: those the service lists (NeRF, Gaussian, ...)")
    run: StringProperty(name="Run", default="default")
    resume: BoolProperty(name="Resume", default=False, description="Continue from the run's last checkpoint")

    @classmethod
    def poll(cls, context):
        return _prepared_subject_poll(cls, context, "train_job", "subject {} is training already")

    def invoke(self, context, event):
        st = props.hs(_scene(context))
        self.preset, self.renderer = st.train_preset, st.train_renderer or subjectlib.PRESET
        return context.window_manager.invoke_props_dialog(self)

    def submit(self, context, subj, preset: str) -> str:
        job = submit_train(_scene(context), subj, preset, self.resume, self.run, self.renderer)
        what = os.path.basename(preset) + (f", {self.renderer}" if self.renderer != subjectlib.PRESET else "")
        return f"train job {job} submitted for {subj.name!r} ({what})"


class HEADSYNC_OT_train_torso(_SubjectJobOp, bpy.types.Operator):
    bl_idname = "headsync.train_torso"
    bl_label = "Train Torso"
    bl_description = ("Submit the 'torso' job of a prepared subject: the parts of the torso path its renders use "
                      "(restorer, torso field or both; the modes the service lists)")
    bl_options = {'REGISTER', 'UNDO'}
    FIELDS = ("preset", "preset_file", "mode")

    subject: StringProperty(name="Subject")
    preset: EnumProperty(name="Preset", items=props.PRESETS, default="preview",
                         description="Default: the preset the subject was imported with")
    preset_file: StringProperty(name="Custom Preset", subtype='FILE_PATH',
                                description="A preset .toml file; overrides Preset when set")
    mode: EnumProperty(name="Torso Mode", items=props.torso_train_items,
                       description="source: the footage's torso; restorer: gaps inpainted; field: a torso that "
                                   "follows the head pose; field+restorer: both")

    @classmethod
    def poll(cls, context):
        return _prepared_subject_poll(cls, context, "torso_job", "the torso of subject {} is training already")

    def invoke(self, context, event):
        subj = _scene_subject(context, self.subject)
        if subj is not None and subj.preset in [p[0] for p in props.PRESETS]:
            self.preset = subj.preset
        return context.window_manager.invoke_props_dialog(self)

    def submit(self, context, subj, preset: str) -> str:
        job = submit_torso(_scene(context), subj, preset, self.mode)
        return (f"torso job {job} submitted for {subj.name!r} ({os.path.basename(preset)}, "
                f"{'preset mode' if self.mode == subjectlib.PRESET else self.mode})")


class HEADSYNC_OT_new_shot(_Op, bpy.types.Operator):
    bl_idname = "headsync.new_shot"
    bl_label = "New Shot"
    bl_description = ("A shot from a sound strip (the dubbed dialogue) and a subject: the Empty HS_<shot> keyed "
                      "with the seven expression curves (and head pose) of the captured performance")
    bl_options = {'REGISTER', 'UNDO'}

    subject: StringProperty(name="Subject")
    strip: StringProperty(name="Sound Strip", description="Default: the selected sound strip",
                          search=_sound_strip_names)
    name: StringProperty(name="Shot Name", description="Default: from the strip's name")
    dense: BoolProperty(name="Key Every Frame", default=False,
                        description="Key every frame instead of the fewest keys that stay within the tolerance")
    tolerance: FloatProperty(name="Tolerance", default=keys.DEFAULT.expression, min=0.0, max=0.2, precision=3,
                             description="Largest deviation of the keyed expression curves from the captured "
                                         "ones (0..1 units); the head pose keeps its own (a quarter pixel)")

    @classmethod
    def poll(cls, context):
        if not _has_settings(context):
            return _poll_fail(cls, "no scene")
        st = props.hs(_scene(context))
        if not any(s.stage in ("prepared", "training", "trained") for s in st.subjects):
            return _poll_fail(cls, "import a subject and let its 'prepare' job finish first")
        if not any(s.type == 'SOUND' for s in compat.all_strips(_scene(context))):
            return _poll_fail(cls, "add the dubbed dialogue as a sound strip to the sequencer first")
        return True

    def invoke(self, context, event):
        if not self.subject:
            subj = _scene_subject(context, "")
            self.subject = subj.name if subj else ""
        return context.window_manager.invoke_props_dialog(self)

    def draw(self, context):
        col = self.layout.column()
        col.prop_search(self, "subject", props.hs(_scene(context)), "subjects")
        col.prop(self, "strip")
        col.prop(self, "name")
        col.prop(self, "dense")
        row = col.row()
        row.enabled = not self.dense
        row.prop(self, "tolerance")

    def execute(self, context):
        subject = self.subject or (getattr(_scene_subject(context, ""), "name", ""))
        tol = keys.Tolerance(expression=self.tolerance, rotation=keys.DEFAULT.rotation,
                             translation=keys.DEFAULT.translation)
        t0 = time.perf_counter()
        try:
            shot, n_keys = create_shot(_scene(context), subject, self.strip, self.name, self.dense, tol)
        except EXPECTED as e:
            return self.fail(e)
        dt = time.perf_counter() - t0
        self.report({'INFO'}, f"shot {shot.name!r}: {shot.frame_count} frames, {sum(n_keys.values())} keys on "
                              f"{len(n_keys)} curves of {shot.controls.name} in {dt:.2f} s")
        if shot.message:
            self.report({'WARNING'}, shot.message)
        return {'FINISHED'}


def _render_poll(cls, context, shot) -> bool:
    if shot is None:
        return _poll_fail(cls, "create a shot first (New Shot)")
    subj = props.hs(_scene(context)).subjects.get(shot.subject)
    if subj is None:
        return _poll_fail(cls, f"the subject {shot.subject} of this shot is not in the scene")
    if subj.stage != "trained":
        return _poll_fail(cls, f"subject {subj.name} is not trained yet: train it first")
    return True


class HEADSYNC_OT_render_shot(_Op, bpy.types.Operator):
    bl_idname = "headsync.render_shot"
    bl_label = "Render Shot"
    bl_description = ("Sample the shot's F-curves at every frame into curves.json, submit the render; the "
                      "result lands as an image-sequence strip above the source strip")
    bl_options = {'REGISTER', 'UNDO'}

    shot: StringProperty(name="Shot")

    @classmethod
    def poll(cls, context):
        shot = _scene_shot(context, "") if _has_settings(context) else None
        if not _render_poll(cls, context, shot):
            return False
        if is_busy(_scene(context), shot):
            return _poll_fail(cls, f"shot {shot.name} is rendering already")
        return True

    def execute(self, context):
        shot = _scene_shot(context, self.shot)
        if shot is None:
            return self.fail(HeadSyncError(f"no shot {self.shot!r} in this scene" if self.shot else "no shot chosen",
                                           "create one with New Shot"))
        try:
            job = submit_render(_scene(context), shot)
        except EXPECTED as e:
            shot.message, shot.hint = getattr(e, "message", str(e)), getattr(e, "hint", "")
            return self.fail(e)
        self.report({'INFO'}, f"render job {job} submitted for shot {shot.name!r}")
        return {'FINISHED'}


class HEADSYNC_OT_preview_frame(_Op, bpy.types.Operator):
    bl_idname = "headsync.preview_frame"
    bl_label = "Preview Frame"
    bl_description = ("Render the current frame of the shot with its curves as they are now and show it in the "
                      "sequencer preview (a one-frame strip on top), without rendering the whole shot")
    bl_options = {'REGISTER', 'UNDO'}

    shot: StringProperty(name="Shot")
    frame: IntProperty(name="Frame", default=-10**9, description="Default: the current frame")

    @classmethod
    def poll(cls, context):
        shot = _scene_shot(context, "") if _has_settings(context) else None
        if not _render_poll(cls, context, shot):
            return False
        f = _scene(context).frame_current
        if not shot.frame_start <= f < shot.frame_start + shot.frame_count:
            return _poll_fail(cls, f"move the playhead into shot {shot.name} "
                                   f"(frames {shot.frame_start}-{shot.frame_start + shot.frame_count - 1})")
        return True

    def execute(self, context):
        shot = _scene_shot(context, self.shot)
        if shot is None:
            return self.fail(HeadSyncError("no shot chosen", "create one with New Shot"))
        scene = _scene(context)
        frame = scene.frame_current if self.frame == -10**9 else self.frame
        try:
            job = submit_render(scene, shot, frame=frame)
        except EXPECTED as e:
            return self.fail(e)
        self.report({'INFO'}, f"preview of frame {frame} of shot {shot.name!r}: job {job}")
        return {'FINISHED'}


def _expressions_poll(cls, context, shot) -> bool:
    if shot is None:
        return _poll_fail(cls, "create a shot first (New Shot)")
    subj = props.hs(_scene(context)).subjects.get(shot.subject)
    if subj is None:
        return _poll_fail(cls, f"the subject {shot.subject} of this shot is not in the scene")
    if subj.stage not in ("prepared", "training", "trained"):
        return _poll_fail(cls, f"subject {subj.name} is not prepared yet")
    job = props.get_job(_scene(context), shot.expression_job)
    if job is not None and job.state in shotlib.ACTIVE_STATES:
        return _poll_fail(cls, f"the expressions of shot {shot.name} are being made already")
    return True


class _ShotExpressionsOp(_Op):
    """An operator that replaces the expression keys of a shot (``run``: returns the report line)."""

    bl_options = {'REGISTER', 'UNDO'}

    shot: StringProperty(name="Shot")

    @classmethod
    def poll(cls, context):
        return _expressions_poll(cls, context, _scene_shot(context, "") if _has_settings(context) else None)

    def execute(self, context):
        shot = _scene_shot(context, self.shot)
        if shot is None:
            return self.fail(HeadSyncError("no shot chosen", "create one with New Shot"))
        try:
            self.report({'INFO'}, self.run(context, shot))
        except EXPECTED as e:
            return self.fail(e)
        return {'FINISHED'}


class HEADSYNC_OT_generate_expressions(_ShotExpressionsOp, bpy.types.Operator):
    bl_idname = "headsync.generate_expressions"
    bl_label = "Generate Expressions"
    bl_description = ("Generate the shot's expressions (blinks, brows) from its dialogue with the subject's "
                      "expression models, kept within what the subject showed (its VQ-VAE), and key them on the "
                      "shot in place of its expression keys (editable; the head pose stays)")

    def run(self, context, shot) -> str:
        return f"generating the expressions of shot {shot.name!r}: job {submit_expressions(_scene(context), shot)}"


class HEADSYNC_OT_import_livelink(_ShotExpressionsOp, bpy.types.Operator):
    bl_idname = "headsync.import_livelink"
    bl_label = "Import Live Link Face CSV"
    bl_description = ("Key an iPhone Live Link Face take (its CSV export) on the shot's expression curves, "
                      "mapped onto the subject and kept within what it showed (its VQ-VAE); a take shorter than "
                      "the shot holds its last frame")

    filepath: StringProperty(name="Take", subtype='FILE_PATH')
    filter_glob: StringProperty(default="*.csv", options={'HIDDEN', 'SKIP_SAVE'})
    capture_fps: FloatProperty(name="Capture Rate", default=0.0, min=0.0, max=240.0,
                               description="The take's frame rate when its timecodes do not tell it (0: inferred)")

    def invoke(self, context, event):
        context.window_manager.fileselect_add(self)
        return {'RUNNING_MODAL'}

    def run(self, context, shot) -> str:
        if not self.filepath:
            raise HeadSyncError("no Live Link Face take chosen", "pick the CSV the app exported")
        job = submit_expressions(_scene(context), shot, self.filepath, self.capture_fps)
        return f"importing {os.path.basename(self.filepath)} onto shot {shot.name!r}: job {job}"


class HEADSYNC_OT_captured_expressions(_ShotExpressionsOp, bpy.types.Operator):
    bl_idname = "headsync.captured_expressions"
    bl_label = "Captured Expressions"
    bl_description = ("Key the subject's captured expressions on the shot again (as New Shot does), in place of "
                      "its expression keys; the head pose stays")

    def run(self, context, shot) -> str:
        n = key_expressions(shot, captured_curves(shot.subject, shot.frame_count)["values"], "captured")
        shot.expression_file, shot.message, shot.hint = "", "", ""
        return f"shot {shot.name!r}: {n} keys of the captured expressions"


class HEADSYNC_OT_render_all(_Op, bpy.types.Operator):
    bl_idname = "headsync.render_all"
    bl_label = "Render All Shots"
    bl_description = ("Queue a render of every shot that is not rendering already; a shot that fails does not "
                      "stop the others")
    bl_options = {'REGISTER', 'UNDO'}

    @classmethod
    def poll(cls, context):
        if not _has_settings(context) or not len(props.hs(_scene(context)).shots):
            return _poll_fail(cls, "create a shot first (New Shot)")
        scene = _scene(context)
        if all(is_busy(scene, s) for s in props.hs(scene).shots):
            return _poll_fail(cls, "every shot is rendering already")
        return True

    def execute(self, context):
        scene = _scene(context)
        if not len(props.hs(scene).shots):
            return self.fail(HeadSyncError("this scene has no shots", "create one with New Shot"))
        queued, failed, _batch, busy = render_all(scene)
        note = f"; skipped {len(busy)} shot(s) rendering already ({', '.join(busy)})" if busy else ""
        if failed:
            self.report({'WARNING'}, f"queued {len(queued)} shot(s){note}; could not queue "
                                     + "; ".join(f"{n}: {why}" for n, why in failed))
        else:
            self.report({'INFO'}, f"queued {len(queued)} shot(s){note}")
        return {'FINISHED'} if queued else {'CANCELLED'}


class HEADSYNC_OT_delete_shot(_Op, bpy.types.Operator):
    bl_idname = "headsync.delete_shot"
    bl_label = "Delete Shot"
    bl_description = "Remove the shot and its controls Empty (its keys); cancels its running render"
    bl_options = {'REGISTER', 'UNDO'}

    shot: StringProperty(name="Shot")
    remove_render: BoolProperty(name="Remove Rendered Strip", default=False,
                                description="Also remove the strip of its last render from the sequencer")

    @classmethod
    def poll(cls, context):
        if (_scene_shot(context, "") if _has_settings(context) else None) is None:
            return _poll_fail(cls, "no shot chosen")
        return True

    def invoke(self, context, event):
        shot = _scene_shot(context, self.shot)
        name = shot.name if shot else self.shot
        return confirm(self, context, event, "Delete Shot", f"Delete shot {name} and its keys?", "Delete")

    def execute(self, context):
        shot = _scene_shot(context, self.shot)
        if shot is None:
            return self.fail(HeadSyncError(f"no shot {self.shot!r} in this scene" if self.shot else "no shot chosen"))
        name = shot.name
        problems = delete_shot(_scene(context), shot, self.remove_render)
        if problems:
            self.report({'WARNING'}, f"shot {name!r} deleted; " + "; ".join(problems))
        else:
            self.report({'INFO'}, f"shot {name!r} deleted")
        return {'FINISHED'}


class HEADSYNC_OT_cancel_job(_Op, bpy.types.Operator):
    bl_idname = "headsync.cancel_job"
    bl_label = "Cancel Job"
    bl_description = "Ask the service to cancel this job (a cancelled training can be resumed)"

    job_id: StringProperty(name="Job")

    def invoke(self, context, event):
        job = props.get_job(_scene(context), self.job_id)
        if job is not None and job.kind == "train":  # hours of work: ask first
            return confirm(self, context, event, "Cancel Training",
                           f"Stop training {job.subject}? Train Subject > Resume continues from its last checkpoint.",
                           "Stop Training")
        return self.execute(context)

    def execute(self, context):
        try:
            _client().cancel(self.job_id)
        except EXPECTED as e:
            return self.fail(e)
        polling.poll_once()
        self.report({'INFO'}, f"cancel requested for job {self.job_id}")
        return {'FINISHED'}


class HEADSYNC_OT_open_log(_Op, bpy.types.Operator):
    bl_idname = "headsync.open_log"
    bl_label = "Open Log"
    bl_description = "Fetch the job's log into a text block (shown in a Text Editor if one is open)"

    job_id: StringProperty(name="Job")

    def execute(self, context):
        try:
            text = _client().log(self.job_id, 0)
        except EXPECTED as e:
            return self.fail(e)
        name = f"headsync-{self.job_id}.log"
        tb = bpy.data.texts.get(name) or bpy.data.texts.new(name)
        tb.clear()
        tb.write(text or "(empty log)\n")
        shown = False
        for area in (context.screen.areas if context.screen else []):
            if area.type == 'TEXT_EDITOR':
                area.spaces.active.text = tb
                shown = True
                break
        self.report({'INFO'}, f"log of job {self.job_id} in the text block {name!r}"
                              + ("" if shown else " (open a Text Editor to read it)"))
        return {'FINISHED'}


class HEADSYNC_OT_select_shot(_Op, bpy.types.Operator):
    bl_idname = "headsync.select_shot"
    bl_label = "Select Shot Controls"
    bl_description = "Select the shot's controls Empty and jump to its first frame (edit its curves in the Graph Editor)"
    bl_options = {'REGISTER', 'UNDO'}

    shot: StringProperty(name="Shot")

    def execute(self, context):
        shot = _scene_shot(context, self.shot)
        if shot is None or shot.controls is None:
            return self.fail(HeadSyncError("the shot or its controls Empty is gone", "create the shot again"))
        vl = context.view_layer
        for o in vl.objects:
            o.select_set(False)
        if shot.controls.name in vl.objects:
            shot.controls.select_set(True)
            vl.objects.active = shot.controls
        _scene(context).frame_current = shot.frame_start
        return {'FINISHED'}


CLASSES = (
    HEADSYNC_OT_check_connection, HEADSYNC_OT_start_service, HEADSYNC_OT_refresh, HEADSYNC_OT_notify,
    HEADSYNC_OT_import_subject, HEADSYNC_OT_prepare_subject, HEADSYNC_OT_train_subject, HEADSYNC_OT_train_torso,
    HEADSYNC_OT_new_shot, HEADSYNC_OT_generate_expressions, HEADSYNC_OT_import_livelink,
    HEADSYNC_OT_captured_expressions, HEADSYNC_OT_render_shot, HEADSYNC_OT_preview_frame, HEADSYNC_OT_render_all,
    HEADSYNC_OT_delete_shot,
    HEADSYNC_OT_cancel_job, HEADSYNC_OT_open_log, HEADSYNC_OT_select_shot,
)


register, unregister = bpy.utils.register_classes_factory(CLASSES)
