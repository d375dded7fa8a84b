"""The HeadSync sidebar (N panel) in the Video Sequencer, and a shot panel in the Graph Editor.

Drawing never touches the network: it shows the state the timer keeps in the scene and ``prefs.STATUS``.
States are drawn in words, long messages wrapped to the region's width, and whatever comes from the user
or the service (names, paths, messages) untranslated (``translate=False``).
"""

from __future__ import annotations

import os

import bpy

from . import compat, polling, prefs, props, ui_text
from . import shots as shotlib
from . import subjects as subjectlib

STAGE_ICONS = {"new": 'FILE', "preparing": 'SORTTIME', "prepared": 'CHECKBOX_HLT', "training": 'SORTTIME',
               "trained": 'CHECKMARK', "failed": 'ERROR'}
SHOT_ICONS = {"keyed": 'KEYINGSET', "queued": 'SORTTIME', "rendering": 'RENDER_ANIMATION',
              "rendered": 'CHECKMARK', "failed": 'ERROR', "cancelled": 'CANCEL'}


def _scene(context):
    return compat.sequencer_scene(context)


def _wrapped(layout, context, text: str, icon: str = 'NONE'):
    """A long message as several labels that fit the region (untranslated: it is data, not interface)."""
    region = getattr(context, "region", None)
    width = region.width if region is not None and region.width > 1 else 300
    scale = context.preferences.system.ui_scale if context.preferences else 1.0
    col = layout.column(align=True)
    for i, line in enumerate(ui_text.wrap(text, width, scale)):
        col.label(text=line, icon=icon if i == 0 else 'BLANK1', translate=False)


def _progress(layout, job, label: str = ""):
    text = label or f"{ui_text.words(ui_text.KIND_WORDS, job.kind)} {job.subject}"
    detail = job.stage or ui_text.words(ui_text.JOB_WORDS, job.state)
    if job.eta:
        detail += f" · {job.eta} left"
    row = layout.row(align=True)
    row.progress(factor=job.fraction, type='BAR', text=f"{text}: {detail} {int(job.fraction * 100)}%")
    row.operator("headsync.cancel_job", text="", icon='CANCEL').job_id = job.name
    row.operator("headsync.open_log", text="", icon='TEXT').job_id = job.name


def _message(layout, context, msg: str, hint: str, icon: str = 'ERROR'):
    if msg:
        _wrapped(layout, context, msg, icon)
        if hint:
            _wrapped(layout, context, hint, 'INFO')


def _subject_notes(layout, context, subj, warnings: bool = True):
    """What the data cannot give (prepare's warnings) and the coefficients training found weak, wrapped."""
    if warnings:
        for w in subj.warnings:
            _wrapped(layout, context, w.text, 'ERROR')
    weak = subjectlib.weak_line([w.text for w in subj.weak_expressions])
    if weak:
        _wrapped(layout, context, weak, 'INFO')


def draw_subject_info(layout, context, subj):
    """The subject's model run (renderer, held-out PSNR), torso path and warnings."""
    box = layout.box()
    if subj.stage == "trained" or subj.renderer:
        _wrapped(box, context, subjectlib.model_line(subj.renderer, subj.run, subj.heldout_psnr), 'SHADING_RENDERED')
    row = box.row(align=True)
    row.label(text=subjectlib.torso_line(subj.torso_mode, [t.text for t in subj.torso_trained]),
              icon='MOD_ARMATURE', translate=False)
    row.operator("headsync.train_torso", text="", icon='PLAY').subject = subj.name
    _subject_notes(box, context, subj)


class HEADSYNC_UL_subjects(bpy.types.UIList):
    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index=0, flt_flag=0):
        row = layout.row()
        row.label(text=item.name, icon='USER', translate=False)
        row.label(text=ui_text.words(ui_text.SUBJECT_WORDS, item.stage), icon=STAGE_ICONS.get(item.stage, 'DOT'))


class HEADSYNC_UL_shots(bpy.types.UIList):
    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index=0, flt_flag=0):
        row = layout.row()
        row.label(text=item.name, icon='SEQUENCE', translate=False)
        row.label(text=f"{item.frame_start}–{item.frame_start + item.frame_count - 1}", translate=False)
        row.label(text=ui_text.words(ui_text.SHOT_WORDS, item.state), icon=SHOT_ICONS.get(item.state, 'DOT'))


class _Base:
    bl_region_type = 'UI'
    bl_category = "HeadSync"

    @classmethod
    def poll(cls, context):
        scene = _scene(context)
        return scene is not None and hasattr(scene, "headsync")


class HEADSYNC_PT_main(_Base, bpy.types.Panel):
    bl_space_type = 'SEQUENCE_EDITOR'
    bl_label = "HeadSync"

    def draw(self, context):
        layout = self.layout
        prefs.draw_status(layout)
        row = layout.row(align=True)
        row.operator("headsync.check_connection", text="Check", icon='FILE_REFRESH')
        row.operator("headsync.start_service", text="Start Service", icon='PLAY')
        row.operator("headsync.refresh", text="", icon='TIME')
        if not prefs.workspace(context):
            layout.label(text="Set the workspace in the add-on preferences", icon='ERROR')
        if polling.NOTICES:
            level, text = polling.NOTICES[-1]
            _wrapped(layout, context, text, {'ERROR': 'ERROR', 'WARNING': 'CANCEL'}.get(level, 'INFO'))


class HEADSYNC_PT_subjects(_Base, bpy.types.Panel):
    bl_space_type = 'SEQUENCE_EDITOR'
    bl_label = "Subjects"
    bl_parent_id = "HEADSYNC_PT_main"

    def draw(self, context):
        layout = self.layout
        st = props.hs(_scene(context))
        layout.template_list("HEADSYNC_UL_subjects", "", st, "subjects", st, "subject_index", rows=3)
        layout.operator("headsync.import_subject", icon='FILE_MOVIE')
        if not (0 <= st.subject_index < len(st.subjects)):
            return
        subj = st.subjects[st.subject_index]
        row = layout.row(align=True)
        row.prop(st, "train_preset", text="")
        row.prop(st, "train_renderer", text="")
        row = layout.row(align=True)
        for text, icon, resume in (("Train", 'PLAY', False), ("Resume", 'LOOP_FORWARDS', True)):
            op = row.operator("headsync.train_subject", text=text, icon=icon)
            # a stored choice the service no longer lists reads as "": the preset's renderer then
            op.subject, op.preset, op.resume = subj.name, st.train_preset, resume
            op.renderer = st.train_renderer or subjectlib.PRESET
        row = layout.row(align=True)
        op = row.operator("headsync.prepare_subject", text="Prepare Again", icon='FILE_REFRESH')
        op.subject = subj.name
        op = row.operator("headsync.new_shot", text="New Shot", icon='ADD')
        op.subject = subj.name
        for jid in (subj.prepare_job, subj.train_job, subj.torso_job):
            job = props.get_job(_scene(context), jid)
            if job is not None and job.state in shotlib.ACTIVE_STATES:
                _progress(layout, job)
        _message(layout, context, subj.message, subj.hint)
        draw_subject_info(layout, context, subj)


class HEADSYNC_PT_shots(_Base, bpy.types.Panel):
    bl_space_type = 'SEQUENCE_EDITOR'
    bl_label = "Shots"
    bl_parent_id = "HEADSYNC_PT_main"

    def draw(self, context):
        draw_shots(self.layout, context)


def draw_shots(layout, context):
    scene = _scene(context)
    st = props.hs(scene)
    layout.template_list("HEADSYNC_UL_shots", "", st, "shots", st, "shot_index", rows=3)
    row = layout.row(align=True)
    row.operator("headsync.render_all", icon='RENDER_ANIMATION')
    if 0 <= st.shot_index < len(st.shots):
        shot = st.shots[st.shot_index]
        box = layout.box()
        box.label(text=f"{shot.subject} · {shot.sound_strip} · frames {shot.frame_start}–"
                       f"{shot.frame_start + shot.frame_count - 1}", translate=False)
        box.label(text=ui_text.words(ui_text.SHOT_WORDS, shot.state), icon=SHOT_ICONS.get(shot.state, 'DOT'))
        row = box.row(align=True)
        row.operator("headsync.select_shot", text="Edit Curves", icon='GRAPH').shot = shot.name
        row.operator("headsync.preview_frame", icon='IMAGE_DATA').shot = shot.name
        row.operator("headsync.render_shot", icon='RENDER_STILL').shot = shot.name
        row.operator("headsync.delete_shot", text="", icon='TRASH').shot = shot.name
        row = box.row(align=True)
        row.label(text="Expressions: " + ui_text.words(ui_text.EXPRESSION_WORDS, shot.expression_source),
                  icon='SHAPEKEY_DATA')
        row = box.row(align=True)
        row.operator("headsync.captured_expressions", text="Captured", icon='LOOP_BACK').shot = shot.name
        row.operator("headsync.generate_expressions", text="Generate", icon='SOUND').shot = shot.name
        row.operator("headsync.import_livelink", text="Live Link CSV", icon='IMPORT').shot = shot.name
        if shot.expression_source == "imported" and shot.expression_file:
            box.label(text=os.path.basename(shot.expression_file), icon='FILE', translate=False)
        row = box.row(align=True)
        row.prop(shot, "use_head_pose")
        row.prop(shot, "torso", text="Torso")
        subj = st.subjects.get(shot.subject)
        if subj is not None:  # beside the curves: what edits of them cannot do on this subject
            _subject_notes(box, context, subj)
        for jid, label in ((shot.render_job, f"Rendering {shot.name}"), (shot.preview_job, "Preview"),
                           (shot.expression_job, "Expressions")):
            job = props.get_job(scene, jid)
            if job is not None and job.state in shotlib.ACTIVE_STATES:
                _progress(box, job, label)
        job = props.get_job(scene, shot.render_job)
        if job is not None and job.state == "failed":
            box.operator("headsync.open_log", text="Open Log", icon='TEXT').job_id = job.name
        _message(box, context, shot.message, shot.hint, 'ERROR' if shot.state == "failed" else 'INFO')
    if st.batch:
        jobs = [j for j in st.jobs if j.batch == st.batch]
        if any(j.state in shotlib.ACTIVE_STATES for j in jobs):
            layout.progress(factor=polling.batch_fraction(scene), type='BAR',
                            text=st.batch_report or "Render All")
        elif st.batch_report:
            _wrapped(layout, context, st.batch_report, 'INFO')


class HEADSYNC_PT_jobs(_Base, bpy.types.Panel):
    bl_space_type = 'SEQUENCE_EDITOR'
    bl_label = "Running Jobs"
    bl_parent_id = "HEADSYNC_PT_main"
    bl_options = {'DEFAULT_CLOSED'}

    def draw(self, context):
        layout = self.layout
        active = [j for j in props.hs(_scene(context)).jobs if j.state in shotlib.ACTIVE_STATES]
        if not active:
            layout.label(text="No running jobs")
        for job in active:
            _progress(layout, job, f"{ui_text.words(ui_text.KIND_WORDS, job.kind)} {job.shot or job.subject}")


class HEADSYNC_PT_graph_shot(_Base, bpy.types.Panel):
    bl_space_type = 'GRAPH_EDITOR'
    bl_label = "HeadSync Shots"

    def draw(self, context):
        draw_shots(self.layout, context)


CLASSES = (HEADSYNC_UL_subjects, HEADSYNC_UL_shots, HEADSYNC_PT_main, HEADSYNC_PT_subjects, HEADSYNC_PT_shots,
           HEADSYNC_PT_jobs, HEADSYNC_PT_graph_shot)


register, unregister = bpy.utils.register_classes_factory(CLASSES)
