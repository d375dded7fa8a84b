"""Add-on preferences: how to reach the backend (its Python, or a running service's URL), the workspace,
and whether to start the service automatically. The status line shows what the last health check saw."""

from __future__ import annotations

import os

import bpy
from bpy.props import BoolProperty, StringProperty

from . import client

PACKAGE = __package__

#: What the last health check saw (session state, not saved): connected, device, gpu, message, hint, and the
#: choices the service offers (``renderers``, ``torso_modes``: kept from the last answer that had them).
STATUS: dict = {"connected": False, "device": "", "gpu": "", "version": "", "message": "not checked yet",
                "hint": "", "renderers": [], "torso_modes": []}


class HEADSYNC_AP_preferences(bpy.types.AddonPreferences):
    bl_idname = PACKAGE

    backend_python: StringProperty(
        name="Backend Python", subtype='FILE_PATH',
        description="The .venv/bin/python of a HeadSync checkout; used to start the service")
    service_url: StringProperty(
        name="Service URL",
        description="URL of a running service (http://127.0.0.1:PORT). Empty: read WORKSPACE/server.json")
    token: StringProperty(
        name="Token", subtype='PASSWORD',
        description="Bearer token of a service whose WORKSPACE/server.json this computer cannot read. Not "
                    "kept when server.json has it")
    workspace: StringProperty(
        name="Workspace", subtype='DIR_PATH', default=os.path.join(os.path.expanduser("~"), "HeadSync"),
        description="The service's workspace folder: subjects, models, renders and server.json")
    auto_start: BoolProperty(
        name="Start Service Automatically", default=False,
        description="Start `headsync serve` with the backend Python when Blender needs it and none runs")

    def draw(self, context):
        layout = self.layout
        col = layout.column()
        col.prop(self, "backend_python")
        col.prop(self, "workspace")
        col.prop(self, "auto_start")
        box = col.box()
        box.label(text="Or connect to a running service:")
        box.prop(self, "service_url")
        _token, from_file = client.token_for(self.service_url, "", workspace(context))
        if from_file:
            box.label(text="Token: read from the workspace's server.json", icon='LOCKED')
        else:
            box.prop(self, "token")
        draw_status(col)
        row = col.row()
        row.operator("headsync.check_connection", icon='FILE_REFRESH')
        row.operator("headsync.start_service", icon='PLAY')


def draw_status(layout):
    if STATUS["connected"]:
        gpu = STATUS["gpu"] or "no GPU"
        layout.label(text=f"Connected  ·  device {STATUS['device'] or '?'}  ·  {gpu}", icon='CHECKMARK',
                     translate=False)
    else:  # the service's words, untranslated
        layout.label(text=f"Not connected: {STATUS['message']}", icon='ERROR', translate=False)
        if STATUS.get("hint"):
            layout.label(text=STATUS["hint"], icon='INFO', translate=False)


def get(context=None):
    context = context or bpy.context
    addon = context.preferences.addons.get(PACKAGE)
    return addon.preferences if addon else None


def workspace(context=None) -> str:
    p = get(context)
    ws = bpy.path.abspath(p.workspace) if p and p.workspace else ""
    return os.path.normpath(ws) if ws else ""


def make_client(context=None, timeout: float = client.DEFAULT_TIMEOUT) -> client.Client:
    """A client for the configured service; raises :class:`client.ServiceError` with a clear message."""
    p = get(context)
    if p is None:
        raise client.ServiceError("the HeadSync add-on is not enabled")
    ws = workspace(context)
    if p.service_url.strip():
        if not client.is_loopback_url(p.service_url) and not getattr(bpy.app, "online_access", True):
            raise client.ServiceUnavailable(
                f"the service URL {p.service_url} is not on this computer and online access is disabled",
                "use the local service (127.0.0.1), or allow online access in Preferences > System > Network")
        token, from_file = client.token_for(p.service_url, p.token, ws)
        if from_file and p.token:
            p.token = ""  # server.json holds it: no copy in the saved preferences
        return client.Client(p.service_url, token, timeout)
    if p.token:
        p.token = ""  # without a URL the service is found (token included) through server.json
    return client.Client.from_workspace(ws, timeout)


def check(context=None, timeout: float = 1.5) -> bool:
    """Health check; updates :data:`STATUS`. Never raises."""
    try:
        h = make_client(context, timeout).health()
    except client.ServiceError as e:
        STATUS.update(connected=False, device="", gpu="", message=e.message, hint=e.hint)
        return False
    STATUS.update(connected=True, device=str(h.get("device") or ""), gpu=str(h.get("gpu") or ""),
                  version=str(h.get("version") or ""), message="", hint="")
    for key in ("renderers", "torso_modes"):
        if isinstance(h.get(key), list):
            STATUS[key] = [str(n) for n in h[key] if isinstance(n, str)]
    return True


CLASSES = (HEADSYNC_AP_preferences,)


register, unregister = bpy.utils.register_classes_factory(CLASSES)
