"""HeadSync for Blender: import a subject, train it, key its expression curves on a shot, render the dub.

Two layers, as in Blender's glTF add-on:

* pure logic, importable without bpy (tested with plain pytest): ``client`` (the local service's HTTP
  API), ``curves_io`` (curves.json), ``shots`` (names, curve resampling, placement, job records),
  ``subjects`` (the service's subject record: warnings, renderer, torso), ``keys``, ``ui_text``;
* Blender-facing: ``props`` (scene data that survives save/reload), ``prefs``, ``operators``, ``panels``,
  ``polling`` (``bpy.app.timers`` and the ``load_post`` re-attach), ``compat`` (4.2 vs 4.4+/5.x).

Nothing here imports bpy at module level, so ``import blender_addon.client`` works outside Blender.
"""

_MODULES = ("props", "prefs", "operators", "panels", "polling")


def _modules():
    import importlib

    return [importlib.import_module(f".{m}", __package__) for m in _MODULES]


def register():
    for m in _modules():
        m.register()


def unregister():
    for m in reversed(_modules()):
        m.unregister()
