"""Presets: named TOML files (package data in ``headsync/presets/``) that configure every stage.

Each stage owns a dataclass of its settings (``PrepareConfig`` here, ``StabilizerConfig`` in
``stabilizer``, ...). A preset file has one table per stage; :func:`section` builds a stage's
dataclass from its table, so an unknown or mistyped key is an error rather than silently ignored.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .errors import UserError
from .package_data import presets_dir

T = TypeVar("T")



@dataclass(frozen=True)
class Preset:
    """A loaded preset: its name and its raw tables (stage name -> settings)."""

    name: str
    tables: dict[str, dict[str, Any]]


def preset_names() -> list[str]:
    """Names of the presets shipped with the package."""
    return sorted(p.stem for p in presets_dir().glob("*.toml"))


def load_preset(name_or_path: str = "standard") -> Preset:
    """Load a preset by name (``preview``, ``standard``, ``paper``) or by path to a TOML file."""
    path = Path(name_or_path)
    if not (path.suffix == ".toml" and path.exists()):
        path = presets_dir() / f"{name_or_path}.toml"
    if not path.exists():
        raise UserError(
            f"unknown preset {name_or_path!r}",
            f"use one of {', '.join(preset_names())} or the path to a .toml file",
        )
    try:
        tables = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"preset {path} is not valid TOML: {e}", "fix the file or pick another preset")
    return Preset(name=path.stem, tables=tables)


def section(preset: Preset | None, table: str, cls: type[T], **overrides: Any) -> T:
    """Build the dataclass ``cls`` from ``preset``'s ``[table]``; ``overrides`` (not None) win.

    Unknown keys raise :class:`UserError`; values are coerced to the field's default type
    (so ``fps = 25`` fills a float field).
    """
    values: dict[str, Any] = dict(preset.tables.get(table, {})) if preset else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(fields)
    if unknown:
        raise UserError(
            f"unknown setting(s) {sorted(unknown)} in [{table}]",
            f"known settings: {', '.join(sorted(fields))}",
        )
    out = {}
    for k, v in values.items():
        default = fields[k].default
        if isinstance(default, bool) or default is dataclasses.MISSING:
            out[k] = v
        elif isinstance(default, float) and isinstance(v, int):
            out[k] = float(v)
        elif isinstance(default, tuple) and isinstance(v, list):
            out[k] = tuple(v)
        else:
            out[k] = v
    return cls(**out)


def as_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass as a plain JSON-able dict (recorded with each stage so a change invalidates it)."""
    d = dataclasses.asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
