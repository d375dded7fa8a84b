"""What the interface says: states in words, long messages wrapped to the sidebar, job notifications.

Standard library only (no bpy): panels and the polling timer call these, the tests call them directly.
"""

from __future__ import annotations

import textwrap

#: A subject's stage, as the sidebar says it.
SUBJECT_WORDS = {
    "new": "Not prepared",
    "preparing": "Preparing",
    "prepared": "Prepared, not trained",
    "training": "Training",
    "trained": "Trained",
    "failed": "Preparing failed",
}
#: A shot's state, as the sidebar says it.
SHOT_WORDS = {
    "keyed": "Keyed, not rendered",
    "queued": "Waiting to render",
    "rendering": "Rendering",
    "rendered": "Rendered",
    "failed": "Render failed",
    "cancelled": "Render cancelled",
}
#: A job's state on the service.
JOB_WORDS = {
    "submitting": "Submitting",
    "queued": "Waiting",
    "running": "Running",
    "succeeded": "Finished",
    "failed": "Failed",
    "cancelled": "Cancelled",
}
KIND_WORDS = {"prepare": "Preparing", "train": "Training", "render": "Rendering", "eval": "Evaluating",
              "express": "Expressions", "torso": "Torso"}
#: A shot's expression source (``props.EXPRESSION_SOURCES``), as the sidebar says it.
EXPRESSION_WORDS = {"captured": "Captured", "generated": "Generated from the dialogue",
                    "imported": "Live Link Face take"}

#: Average width of one character of the interface font, in pixels at a UI scale of 1.
CHAR_PX = 7.0
#: Room taken by an icon and the panel's margins, in pixels at a UI scale of 1.
MARGIN_PX = 40.0


def words(table: dict[str, str], state: str) -> str:
    """The words for ``state`` (the state itself, capitalised, when the table does not know it)."""
    return table.get(state) or (state[:1].upper() + state[1:] if state else "")


def wrap(text: str, width_px: float, ui_scale: float = 1.0, min_chars: int = 16) -> list[str]:
    """``text`` cut into lines that fit a region ``width_px`` wide (Blender cuts a long label off)."""
    chars = int((width_px - MARGIN_PX * ui_scale) / (CHAR_PX * max(ui_scale, 0.1)))
    return textwrap.wrap(text, max(min_chars, chars), break_long_words=True, break_on_hyphens=False) or [""]


def notice(kind: str, subject: str, shot: str, state: str, error: str = "", hint: str = "",
           preview: bool = False) -> tuple[str, str]:
    """(report level, text) announcing that a job ended: 'INFO' when it succeeded, 'WARNING' when it was
    cancelled, 'ERROR' when it failed (with the service's message and hint)."""
    what = {"prepare": f"Preparing {subject}", "train": f"Training {subject}", "eval": f"Evaluating {subject}",
            "torso": f"Torso training of {subject}", "express": f"Expressions of shot {shot or subject}",
            "render": (f"Preview of shot {shot}" if preview else f"Render of shot {shot}") if shot
            else f"Render of {subject}"}.get(kind, f"{kind} {subject}")
    if state == "succeeded":
        return "INFO", f"HeadSync: {what} finished"
    if state == "cancelled":
        return "WARNING", f"HeadSync: {what} was cancelled"
    text = f"HeadSync: {what} failed" + (f": {error}" if error else "")
    return "ERROR", text + (f" ({hint})" if hint else "")
