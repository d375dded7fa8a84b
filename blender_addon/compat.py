"""What differs between Blender 4.2 LTS and 4.4+/5.x, in one place.

* Video Sequencer: ``SequenceEditor.strips`` / ``strips_all`` (4.4+; the only names in 5.0) vs
  ``sequences`` / ``sequences_all`` (4.2, 4.3).
* Animation: slotted Actions (4.4+; the only kind in 5.0), whose F-curves live in a channelbag of the
  first keyframe strip of the first layer for the slot the object uses, vs ``action.fcurves`` (4.2, 4.3).
* The scene the sequencer shows: 5.0's per-workspace ``context.sequencer_scene`` (it may differ from the
  window's scene) vs ``context.scene`` (4.2-4.5, and 5.0 workspaces without a sequencer scene).
* What stays the same from 4.2 to 5.0 and needs no branch: ``poll_message_set``, ``invoke_confirm(op, event,
  title=, message=, confirm_text=)``, ``StringProperty(search=)``, ``WorkSpace.status_text_set``, the
  ``undo_post``/``redo_post``/``load_post`` handlers.
"""

from __future__ import annotations

import bpy

VERSION = tuple(bpy.app.version)


def has_slotted_actions() -> bool:
    return VERSION >= (4, 4, 0) and hasattr(bpy.types, "ActionSlot")


# ---- sequencer --------------------------------------------------------------------------------
def sequencer_scene(context=None):
    """The scene whose strips the Video Sequencer shows (and where the add-on's subjects and shots live)."""
    context = context or bpy.context
    scene = getattr(context, "sequencer_scene", None)  # 5.0+: set per workspace
    return scene if scene is not None else context.scene


def sequence_editor(scene, create: bool = True):
    if scene.sequence_editor is None and create:
        scene.sequence_editor_create()
    return scene.sequence_editor


def top_strips(scene):
    """The top-level strip collection (where new strips are added)."""
    sed = sequence_editor(scene)
    return sed.strips if hasattr(sed, "strips") else sed.sequences


def all_strips(scene):
    sed = scene.sequence_editor
    if sed is None:
        return []
    return sed.strips_all if hasattr(sed, "strips_all") else sed.sequences_all


def get_strip(scene, name: str):
    if not name:
        return None
    return all_strips(scene).get(name) if scene.sequence_editor else None


def new_movie(scene, name: str, filepath: str, channel: int, frame_start: int):
    return top_strips(scene).new_movie(name=name, filepath=filepath, channel=channel,
                                       frame_start=int(frame_start), fit_method='FIT')


def new_sound(scene, name: str, filepath: str, channel: int, frame_start: int):
    return top_strips(scene).new_sound(name=name, filepath=filepath, channel=channel, frame_start=int(frame_start))


def new_image_sequence(scene, name: str, directory: str, files: list[str], channel: int, frame_start: int):
    """An image-sequence strip of ``files`` (sorted names inside ``directory``)."""
    import os

    strip = top_strips(scene).new_image(name=name, filepath=os.path.join(directory, files[0]), channel=channel,
                                        frame_start=int(frame_start), fit_method='FIT')
    elems = strip.elements
    for f in files[1:]:
        elems.append(f)
    return strip


def remove_strip(scene, strip) -> None:
    sed = scene.sequence_editor
    if sed is None or strip is None:
        return
    # A strip inside a meta strip is removed from that meta's collection; top level otherwise.
    try:
        top_strips(scene).remove(strip)
    except Exception:
        for meta in all_strips(scene):
            coll = getattr(meta, "strips", None) or getattr(meta, "sequences", None)
            if coll is not None and strip.name in coll:
                coll.remove(strip)
                return


def selected_strips(scene):
    return [s for s in all_strips(scene) if s.select]


def active_strip(scene):
    sed = scene.sequence_editor
    return sed.active_strip if sed is not None else None


def strip_media_path(strip) -> str:
    """The absolute path of a movie/sound/image strip's file ('' when it has none)."""
    path = ""
    if strip.type == 'SOUND':
        path = strip.sound.filepath if strip.sound else ""
    elif strip.type == 'MOVIE':
        path = strip.filepath
    elif strip.type == 'IMAGE' and len(strip.elements):
        import os

        path = os.path.join(strip.directory, strip.elements[0].filename)
    return bpy.path.abspath(path) if path else ""


# ---- animation --------------------------------------------------------------------------------
def _slot_for(obj, action):
    adt = obj.animation_data
    slot = getattr(adt, "action_slot", None)
    if slot is None:
        slot = next((s for s in action.slots if s.target_id_type in ('OBJECT', 'UNSPECIFIED')), None)
        if slot is None:
            slot = action.slots.new(id_type='OBJECT', name=obj.name)
        adt.action_slot = slot
    return slot


def _channelbag(obj, create: bool):
    adt = obj.animation_data
    if adt is None or adt.action is None:
        return None
    action = adt.action
    slot = _slot_for(obj, action) if create else getattr(adt, "action_slot", None)
    if slot is None:
        return None
    for layer in action.layers:
        for strip in layer.strips:
            bag = strip.channelbag(slot)
            if bag is not None:
                return bag
    if not create:
        return None
    layer = action.layers[0] if len(action.layers) else action.layers.new("Layer")
    strip = layer.strips[0] if len(layer.strips) else layer.strips.new(type='KEYFRAME')
    return strip.channelbag(slot, ensure=True)


def ensure_action(obj, name: str | None = None):
    if obj.animation_data is None:
        obj.animation_data_create()
    adt = obj.animation_data
    if adt.action is None:
        adt.action = bpy.data.actions.new(name or f"{obj.name}Action")
    if has_slotted_actions():
        _slot_for(obj, adt.action)
    return adt.action


def fcurves(obj, create: bool = False):
    """The F-curve collection animating ``obj`` (None when it has no animation and ``create`` is False)."""
    if create:
        ensure_action(obj)
    adt = obj.animation_data
    if adt is None or adt.action is None:
        return None
    if has_slotted_actions():
        bag = _channelbag(obj, create)
        return bag.fcurves if bag is not None else None
    return adt.action.fcurves


def find_fcurve(obj, data_path: str, index: int = 0):
    coll = fcurves(obj)
    if coll is None:
        return None
    return coll.find(data_path, index=index)


def ensure_fcurve(obj, data_path: str, index: int = 0, group: str = ""):
    coll = fcurves(obj, create=True)
    fc = coll.find(data_path, index=index)
    if fc is not None:
        return fc
    if has_slotted_actions():
        if group:
            try:  # 5.0: the group is created on the fly
                return coll.new(data_path, index=index, group_name=group)
            except TypeError:
                pass
        fc = coll.new(data_path, index=index)
        bag = _channelbag(obj, False)
        if group and bag is not None and hasattr(bag, "groups"):
            grp = bag.groups.get(group) or bag.groups.new(group)
            try:
                fc.group = grp
            except (AttributeError, TypeError):
                pass
        return fc
    return coll.new(data_path, index=index, action_group=group) if group else coll.new(data_path, index=index)


def fresh_fcurve(obj, data_path: str, index: int = 0, group: str = ""):
    """An empty F-curve for ``data_path`` (an existing one is removed first: works on every version)."""
    coll = fcurves(obj, create=True)
    old = coll.find(data_path, index=index)
    if old is not None:
        coll.remove(old)
    return ensure_fcurve(obj, data_path, index, group)
