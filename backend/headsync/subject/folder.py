"""The subject folder: manifest (``subject.json``) and stage bookkeeping (files are written through
:mod:`headsync.core.atomic`).

Layout and field names are the contract in DESIGN.md. A stage is *done* only when its outputs were
renamed into place and the manifest says so with the parameters and code version it ran with; a change
of either makes it stale, so it runs again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.atomic import write_json_atomic
from ..core.errors import UserError
# The seven core expression coefficients are defined with curves.json, whose format module the Blender
# add-on shares.
from ..curves_format import CORE_NAMES as CORE_EXPRESSIONS

SCHEMA = "headsync.subject/1"
#: The manifest's file name: a folder holding it is a subject folder.
MANIFEST = "subject.json"



@dataclass
class Subject:
    """A subject folder on disk. ``root`` is created by ``prepare``."""

    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    # ---- paths -----------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    @property
    def frames_dir(self) -> Path:
        return self.root / "frames"

    @property
    def masks_dir(self) -> Path:
        return self.root / "masks"

    def path(self, name: str) -> Path:
        return self.root / name

    def frame_path(self, i: int) -> Path:
        return self.frames_dir / f"{i:06d}.jpg"

    def mask_path(self, i: int) -> Path:
        return self.masks_dir / f"{i:06d}.png"

    # ---- manifest --------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.manifest_path.exists()

    def load(self) -> dict[str, Any]:
        """The manifest as a dict (an empty skeleton when the folder is new)."""
        if not self.manifest_path.exists():
            return {"schema": SCHEMA, "source": {}, "stages": {}, "warnings": []}
        try:
            return json.loads(self.manifest_path.read_text())
        except json.JSONDecodeError as e:
            raise UserError(
                f"{self.manifest_path} is corrupt ({e})",
                "delete the subject folder and run `headsync prepare` again",
            )

    def save(self, manifest: dict[str, Any]) -> None:
        write_json_atomic(self.manifest_path, manifest)

    def update(self, **fields: Any) -> dict[str, Any]:
        m = self.load()
        m.update(fields)
        self.save(m)
        return m

    def warn(self, text: str) -> None:
        """Record a warning in the manifest (shown by the CLI and the add-on)."""
        m = self.load()
        if text not in m.setdefault("warnings", []):
            m["warnings"].append(text)
            self.save(m)

    # ---- stages ----------------------------------------------------------------------------
    def stage_done(self, name: str, params: dict[str, Any], version: int) -> bool:
        """True when ``name`` finished with exactly these parameters and code version."""
        st = self.load().get("stages", {}).get(name)
        return bool(st and st.get("done") and st.get("params") == params and st.get("version") == version)

    def mark_done(self, name: str, params: dict[str, Any], version: int, seconds: float,
                  info: dict[str, Any] | None = None) -> None:
        """Record a finished stage; ``info`` is what the stage reported (kept under ``info``)."""
        m = self.load()
        m.setdefault("stages", {})[name] = {
            "done": True, "params": params, "version": version, "seconds": round(seconds, 3), "info": info or {},
        }
        self.save(m)

    def require(self, *names: str) -> None:
        """Raise a :class:`UserError` naming the first of ``names`` that is not done."""
        stages = self.load().get("stages", {})
        for n in names:
            if not stages.get(n, {}).get("done"):
                raise UserError(
                    f"subject {self.root} has no finished '{n}' stage",
                    f"run `headsync prepare VIDEO --subject {self.root}` first",
                )

    def source(self) -> dict[str, Any]:
        return self.load().get("source", {})

    def frame_count(self) -> int:
        n = self.source().get("frame_count")
        if not n:
            raise UserError(f"subject {self.root} is not prepared", "run `headsync prepare` first")
        return int(n)
