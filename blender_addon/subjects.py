"""What the add-on keeps and shows of a subject beyond its stage: the renderer of its model run, the warnings
of ``prepare``, the expression coefficients that barely act, the torso path. No bpy (standard library only).

The service's subject record (``GET /api/v1/subjects/NAME``, also each item of ``GET /subjects``) is data
from another process: :func:`subject_fields` keeps only what it expects, as text of bounded length. The
renderer and torso choices offered are the ones the service's health answer lists (``renderers``,
``torso_modes``), never a copy of the backend's lists.
"""

from __future__ import annotations

import math
from typing import Any

from .curves_io import CORE_NAMES

#: The choice "whatever the preset says" (no ``renderer``/``mode`` parameter is sent).
PRESET = "PRESET"
#: The shot's torso choice "whatever the subject's torso training chose" (no ``torso`` parameter is sent).
SUBJECT = "SUBJECT"
MAX_WARNINGS = 20
MAX_CHARS = 1000


def _text(value: Any, limit: int = MAX_CHARS) -> str:
    if not isinstance(value, str):
        return ""
    clean = " ".join("".join(c if c.isprintable() else " " for c in value).split())
    return clean if len(clean) <= limit else clean[:limit - 1] + "…"


def _names(value: Any, allowed: tuple[str, ...] | None = None) -> list[str]:
    items = value if isinstance(value, list) else []
    out = [_text(v, 64) for v in items]
    return [v for v in out if v and (allowed is None or v in allowed)]


def subject_fields(record: Any, run: str = "default") -> dict[str, Any]:
    """The fields the scene keeps from a service subject record, for the model run ``run`` (the one renders
    use; else the newest-named trained run): {"warnings": [str], "renderer": str, "heldout_psnr": float
    (NaN: unknown), "weak_expressions": [core names], "torso_mode": str, "torso_trained": [modes]}."""
    rec = record if isinstance(record, dict) else {}
    models = [m for m in rec.get("models") or [] if isinstance(m, dict)] if isinstance(rec.get("models"), list) else []
    trained = [m for m in models if m.get("trained")]
    chosen = next((m for m in models if m.get("name") == run), None) or (trained[-1] if trained else {})
    psnr = chosen.get("heldout_psnr")
    torso = rec.get("torso") if isinstance(rec.get("torso"), dict) else {}
    return {"warnings": [w for w in (_text(x) for x in (rec.get("warnings") or [])
                                     if isinstance(rec.get("warnings"), list)) if w][:MAX_WARNINGS],
            "renderer": _text(chosen.get("renderer"), 64),
            "heldout_psnr": float(psnr) if isinstance(psnr, (int, float)) and math.isfinite(psnr) else math.nan,
            "weak_expressions": _names(chosen.get("weak_expressions"), CORE_NAMES),
            "torso_mode": _text(torso.get("mode"), 64),
            "torso_trained": _names(torso.get("trained"))}


def choice_items(names: Any, default_label: str, default_description: str, default_id: str = PRESET
                 ) -> list[tuple[str, str, str]]:
    """Enum items for a choice the service lists (renderers, torso modes): the default first, then each name."""
    return [(default_id, default_label, default_description)] + \
        [(n, n, f"'{n}', as the service lists it") for n in _names(names)]


def model_line(renderer: str, run: str, psnr: float) -> str:
    """'Model run default: gaussian, held-out 25.4 dB' (what is known of it)."""
    parts = [renderer or "renderer not known yet"]
    if isinstance(psnr, float) and math.isfinite(psnr):
        parts.append(f"held-out {psnr:.1f} dB")
    return f"Model run {run or 'default'}: " + ", ".join(parts)


def torso_line(mode: str, trained: list[str]) -> str:
    """'Torso: restorer (a render may also use: source)'."""
    others = [m for m in trained if m != mode]
    return f"Torso: {mode or 'source'}" + (f" (a render may also use: {', '.join(others)})" if others else "")


def weak_line(weak: list[str]) -> str:
    """The warning beside the expression curves when training found coefficients that barely act."""
    if not weak:
        return ""
    return (f"Edits of {', '.join(weak)} barely show on this subject's render (measured after training): "
            "too few training frames show them, or the model learned to ignore them")
