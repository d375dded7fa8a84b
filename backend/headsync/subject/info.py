"""What the service shows of a subject (``GET /api/v1/subjects`` and ``/subjects/NAME``): its finished stages,
its model runs (renderer, held-out PSNR, the expression coefficients that barely act), the warnings of
``prepare`` and the torso path. Read from the folder without loading torch.

The files are the workspace's, but what they hold is treated as untrusted data: every field is checked for
its type and bounded, names must be names, and no path of the folder is passed on (the API's subject
records name no files).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..core.names import is_name
from ..post.torso.config import FIELD_FILE, MODES, RECORD_FILE, RESTORER_FILE, trained_modes
from .folder import CORE_EXPRESSIONS, MANIFEST

#: A run's record of its training (written by the trainer, completed by ``eval``).
METRICS_FILE = "metrics.json"
MAX_WARNINGS = 20
MAX_WARNING_CHARS = 1000


def _json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; {} when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _text(value: Any, limit: int) -> str | None:
    """A printable one-paragraph string of at most ``limit`` characters, or None."""
    if not isinstance(value, str):
        return None
    clean = " ".join("".join(c if c.isprintable() else " " for c in value).split())
    if not clean:
        return None
    return clean if len(clean) <= limit else clean[:limit - 1] + "…"


def warnings_of(manifest: dict[str, Any]) -> list[str]:
    """The manifest's ``warnings``: strings only, at most :data:`MAX_WARNINGS` of :data:`MAX_WARNING_CHARS`."""
    raw = manifest.get("warnings")
    out = [t for t in (_text(w, MAX_WARNING_CHARS) for w in (raw if isinstance(raw, list) else [])) if t]
    return out[:MAX_WARNINGS]


def run_info(run: Path) -> dict[str, Any]:
    """One model run: {"name", "trained" (a metrics.json exists), "renderer", "heldout_psnr" (dB),
    "weak_expressions" (core coefficient names, or None when the run did not check them)}."""
    m = _json(run / METRICS_FILE)
    psnr = m.get("heldout_psnr")
    weak, renderer = m.get("weak_expressions"), m.get("renderer")
    return {"name": run.name, "trained": bool(m),
            "renderer": renderer if is_name(renderer) else None,
            "heldout_psnr": float(psnr) if isinstance(psnr, (int, float)) and math.isfinite(psnr) else None,
            "weak_expressions": [w for w in weak if w in CORE_EXPRESSIONS] if isinstance(weak, list) else None}


def torso_info(root: Path) -> dict[str, Any]:
    """{"mode": the mode renders use (the last torso job's, else ``source``), "trained": the modes a render
    may pick with the parts on disk}."""
    mode = _json(root / RECORD_FILE).get("mode")
    return {"mode": mode if mode in MODES else MODES[0],
            "trained": trained_modes((root / RESTORER_FILE).is_file(), (root / FIELD_FILE).is_file())}


def subject_info(root: Path) -> dict[str, Any]:
    """The record of the subject folder ``root`` (its name is the folder's): name, stages (finished),
    prepared, runs (names), models (:func:`run_info` each), warnings, torso (:func:`torso_info`)."""
    m = _json(root / MANIFEST)
    stages = m.get("stages") if isinstance(m.get("stages"), dict) else {}
    source = m.get("source") if isinstance(m.get("source"), dict) else {}
    runs = sorted((r for r in (root / "models").glob("*") if r.is_dir() and not r.name.startswith(".")),
                  key=lambda r: r.name)
    return {"name": root.name,
            "stages": sorted(k for k, v in stages.items() if isinstance(v, dict) and v.get("done")),
            "prepared": bool(source.get("frame_count")),
            "runs": [r.name for r in runs],
            "models": [run_info(r) for r in runs],
            "warnings": warnings_of(m),
            "torso": torso_info(root)}
