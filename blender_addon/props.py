"""Scene properties: subjects, shots and jobs live in the .blend, so they survive save and reload. Scene data
is also what undo restores, so after undo, redo and reopening the file ``polling`` re-attaches each shot and
subject to its newest job on the service (shots by their ``uid``)."""

from __future__ import annotations

import bpy
from bpy.props import (BoolProperty, CollectionProperty, EnumProperty, FloatProperty, IntProperty,
                       PointerProperty, StringProperty)

from . import prefs
from . import subjects as subjectlib

PRESETS = [
    ("preview", "Preview", "CPU-sized: minutes, for a first look"),
    ("standard", "Standard", "One GPU"),
    ("paper", "Paper", "The papers' settings (long)"),
]


#: The shot's expression source: where its expression keys came from (the keys are what a render uses).
EXPRESSION_SOURCES = [
    ("captured", "Captured", "The subject's captured performance, looped over the shot (New Shot)"),
    ("generated", "Generated", "Generated from the shot's dialogue by the subject's expression models"),
    ("imported", "Live Link Face", "Imported from an iPhone Live Link Face take (CSV)"),
]

# Enum items of choices the service lists, kept alive per list (Blender does not copy the strings).
_ITEMS: dict[tuple, list] = {}


def _cached(key: tuple, make) -> list:
    if key not in _ITEMS:
        _ITEMS[key] = make()
    return _ITEMS[key]


def renderer_items(self, context):
    """The renderers the service's health answer lists, after "the preset's"."""
    names = tuple(prefs.STATUS.get("renderers") or ())
    return _cached(("renderer",) + names, lambda: subjectlib.choice_items(
        list(names), "Preset's", "The renderer the preset names ([renderer] default)"))


def torso_train_items(self, context):
    """The torso modes the service lists, after "the preset's" (a torso training's mode)."""
    names = tuple(prefs.STATUS.get("torso_modes") or ())
    return _cached(("torso",) + names, lambda: subjectlib.choice_items(
        list(names), "Preset's", "The mode the preset names ([torso] mode)"))


def torso_render_items(self, context):
    """A shot's torso: the subject's (its last torso training's mode) or another trained one."""
    st = getattr(self.id_data, "headsync", None)  # the scene that holds the shot
    subj = st.subjects.get(self.subject) if st is not None else None
    names = tuple(t.text for t in subj.torso_trained) if subj is not None else ()
    return _cached(("shot",) + names, lambda: subjectlib.choice_items(
        list(names), "Subject's", "The torso path of the subject's torso training", subjectlib.SUBJECT))


class HEADSYNC_PG_text(bpy.types.PropertyGroup):
    # not ``name``: Blender cuts a property group's name to 63 bytes, and warnings are sentences
    text: StringProperty(name="Text")


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
    torso_job: StringProperty(name="Torso Job")
    message: StringProperty(name="Message")
    hint: StringProperty(name="Hint")
    # what the service's subject record says (subjects.subject_fields), refreshed when a job of it ends
    renderer: StringProperty(name="Renderer", description="The renderer of its model run (or the one chosen "
                                                          "for the training under way)")
    heldout_psnr: FloatProperty(name="Held-out PSNR", default=float("nan"), description="dB; NaN: not known")
    warnings: CollectionProperty(type=HEADSYNC_PG_text, description="What the footage cannot give (prepare)")
    weak_expressions: CollectionProperty(type=HEADSYNC_PG_text,
                                         description="Expression coefficients whose edits barely show")
    torso_mode: StringProperty(name="Torso", default="source", description="The torso path its renders use")
    torso_trained: CollectionProperty(type=HEADSYNC_PG_text, description="The torso modes a render may pick")


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
    expression_source: EnumProperty(name="Expressions", items=EXPRESSION_SOURCES, default="captured",
                                    description="Where the shot's expression keys came from")
    expression_file: StringProperty(name="Live Link Take", subtype='FILE_PATH')
    expression_job: StringProperty(name="Expressions Job", description="Generating or importing expressions")
    torso: EnumProperty(name="Torso", items=torso_render_items,
                        description="The torso path of this shot's renders (one the subject's torso training made)")
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
    train_renderer: EnumProperty(name="Renderer", items=renderer_items,
                                 description="The renderer to train (those the service lists)")
    render_run: StringProperty(name="Run", default="default", description="Model run used by renders")
    batch: StringProperty(name="Batch", description="The last Render All batch")
    batch_report: StringProperty(name="Batch Report")


CLASSES = (HEADSYNC_PG_text, HEADSYNC_PG_job, HEADSYNC_PG_subject, HEADSYNC_PG_shot, HEADSYNC_PG_scene)


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


def _set_texts(coll, texts) -> None:
    coll.clear()
    for t in texts:
        coll.add().text = t


def apply_subject_record(subj, record) -> None:
    """Keep what the service's subject record says of ``subj`` (its renders' run: ``subj.run``)."""
    f = subjectlib.subject_fields(record, subj.run or "default")
    _set_texts(subj.warnings, f["warnings"])
    _set_texts(subj.weak_expressions, f["weak_expressions"])
    _set_texts(subj.torso_trained, f["torso_trained"])
    if f["renderer"]:
        subj.renderer = f["renderer"]
    subj.heldout_psnr = f["heldout_psnr"]
    subj.torso_mode = f["torso_mode"] or "source"
