"""Scene properties: subjects, shots and jobs live in the .blend, so they survive save and reload. Scene data
is also what undo restores, so after undo, redo and reopening the file ``polling`` re-attaches each shot and
subject to its newest job on the service (shots by their ``uid``)."""

from __future__ import annotations

import bpy
from bpy.props import (BoolProperty, CollectionProperty, EnumProperty, FloatProperty, IntProperty,
                       PointerProperty, StringProperty)

PRESETS = [
    ("preview", "Preview", "CPU-sized: minutes, for a first look"),
    ("standard", "Standard", "One GPU"),
    ("paper", "Paper", "The papers' settings (long)"),
]


class HEADSYNC_PG_job(bpy.types.PropertyGroup):
    # ``name`` (inherited) holds the job id.
    kind: StringProperty(name="Kind")
    subject: StringProperty(name="Subject")
    shot: StringProperty(name="Shot", description="The shot a render job belongs to")
    state: StringProperty(name="State", default="queued")
    fraction: FloatProperty(name="Progress", min=0.0, max=1.0, subtype='FACTOR')
    stage: StringProperty(name="Stage")
    message: StringProperty(name="Message")
    eta: StringProperty(name="ETA")
    error: StringProperty(name="Error")
    hint: StringProperty(name="Hint")
    batch: StringProperty(name="Batch", description="Render All batch this job belongs to")
    preview: BoolProperty(name="Preview", description="A Preview Frame job (one frame of the shot)")
    frame: IntProperty(name="Frame", description="The frame a Preview Frame job renders")
    handled: BoolProperty(name="Handled", description="Its result was applied to the scene")
    notified: BoolProperty(name="Notified", description="Its end was announced (status bar and info report)")


class HEADSYNC_PG_subject(bpy.types.PropertyGroup):
    # ``name`` is the subject's name in the workspace.
    video: StringProperty(name="Video", subtype='FILE_PATH')
    audio: StringProperty(name="Audio", subtype='FILE_PATH')
    movie_strip: StringProperty(name="Movie Strip")
    sound_strip: StringProperty(name="Sound Strip")
    stage: StringProperty(name="Stage", default="new",
                          description="new, preparing, prepared, training, trained or failed")
    preset: StringProperty(name="Preset", default="preview")
    run: StringProperty(name="Run", default="default")
    prepare_job: StringProperty(name="Prepare Job")
    train_job: StringProperty(name="Train Job")
    message: StringProperty(name="Message")
    hint: StringProperty(name="Hint")


class HEADSYNC_PG_shot(bpy.types.PropertyGroup):
    # ``name`` is the shot's name; its controls are the Empty ``HS_<name>``.
    uid: StringProperty(name="Id", description="Names the folder of the curves its jobs read (re-attach)")
    subject: StringProperty(name="Subject")
    sound_strip: StringProperty(name="Sound Strip", description="The dubbed dialogue that drives the shot")
    audio: StringProperty(name="Audio", subtype='FILE_PATH')
    frame_start: IntProperty(name="Start")
    frame_count: IntProperty(name="Frames", min=0)
    fps: FloatProperty(name="FPS", default=25.0)
    controls: PointerProperty(name="Controls", type=bpy.types.Object)
    use_head_pose: BoolProperty(name="Head Pose", default=True,
                                description="Key the head pose on the Empty and send it with the curves")
    state: StringProperty(name="State", default="keyed",
                          description="keyed, queued, rendering, rendered, failed or cancelled")
    render_job: StringProperty(name="Render Job")
    preview_job: StringProperty(name="Preview Job")
    preview_strip: StringProperty(name="Preview Strip")
    curves_path: StringProperty(name="Curves", subtype='FILE_PATH')
    frames_dir: StringProperty(name="Frames", subtype='DIR_PATH')
    result_strip: StringProperty(name="Result Strip")
    message: StringProperty(name="Message")
    hint: StringProperty(name="Hint")


class HEADSYNC_PG_scene(bpy.types.PropertyGroup):
    subjects: CollectionProperty(type=HEADSYNC_PG_subject)
    shots: CollectionProperty(type=HEADSYNC_PG_shot)
    jobs: CollectionProperty(type=HEADSYNC_PG_job)
    subject_index: IntProperty(name="Subject", default=0)
    shot_index: IntProperty(name="Shot", default=0)
    job_index: IntProperty(default=0)
    train_preset: EnumProperty(name="Preset", items=PRESETS, default="preview")
    render_run: StringProperty(name="Run", default="default", description="Model run used by renders")
    batch: StringProperty(name="Batch", description="The last Render All batch")
    batch_report: StringProperty(name="Batch Report")


CLASSES = (HEADSYNC_PG_job, HEADSYNC_PG_subject, HEADSYNC_PG_shot, HEADSYNC_PG_scene)


def register():
    for c in CLASSES:
        bpy.utils.register_class(c)
    bpy.types.Scene.headsync = PointerProperty(type=HEADSYNC_PG_scene)


def unregister():
    del bpy.types.Scene.headsync
    for c in reversed(CLASSES):
        bpy.utils.unregister_class(c)


# ---- helpers ------------------------------------------------------------------------------------
def hs(scene) -> HEADSYNC_PG_scene:
    return scene.headsync


def add_job(scene, job_id: str, kind: str, subject: str, shot: str = "", batch: str = "", preview: bool = False,
            frame: int = 0, state: str = "queued"):
    j = hs(scene).jobs.get(job_id) or hs(scene).jobs.add()
    j.name = job_id
    j.kind, j.subject, j.shot, j.batch, j.preview, j.frame = kind, subject, shot, batch, preview, frame
    j.state = state
    return j


def get_job(scene, job_id: str):
    return hs(scene).jobs.get(job_id) if job_id else None
