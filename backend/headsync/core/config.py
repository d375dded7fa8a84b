"""Presets: named TOML files (package data in ``headsync/presets/``) that configure every component.

Each component owns a dataclass of its settings, and each setting's default is defined there once
(``PrepareConfig`` in ``prepare.pipeline``, ``TrainConfig`` in ``training.trainer``, a renderer's
``Config`` in its module, ...). A preset has one table per component - ``[prepare]``, ``[split]``,
``[train]``, ``[renderer.nerf]`` (with sub-tables such as ``[renderer.nerf.hash]``), ``[render]``,
``[ave]``... - and :func:`section` builds the component's dataclass from its table, so an unknown or
mistyped key is an error rather than silently ignored.
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


#: The default preset name: ``preview`` on a CPU, ``standard`` on CUDA (:func:`auto_preset`).
AUTO = "auto"


def auto_preset() -> str:
    """What ``auto`` means on this machine: ``standard`` with a CUDA device, else ``preview`` (``standard``
    on a CPU spends more than 25 minutes in prepare alone, issue 11)."""
    from .devices import pick_device

    return "standard" if pick_device("auto").type == "cuda" else "preview"


def load_preset(name_or_path: str = AUTO) -> Preset:
    """Load a preset by name (``auto``, ``preview``, ``standard``, ``paper``) or by path to a TOML file.
    ``auto`` loads :func:`auto_preset`'s choice, under that name."""
    if name_or_path == AUTO:
        name_or_path = auto_preset()
    path = Path(name_or_path)
    if not (path.suffix == ".toml" and path.exists()):
        path = presets_dir() / f"{name_or_path}.toml"
    if not path.exists():
        raise UserError(
            f"unknown preset {name_or_path!r}",
            f"use one of {', '.join([AUTO, *preset_names()])} or the path to a .toml file",
        )
    try:
        tables = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"preset {path} is not valid TOML: {e}", "fix the file or pick another preset")
    return Preset(name=path.stem, tables=tables)


def table(preset: Preset | None, name: str) -> dict[str, Any]:
    """The raw table ``name`` of ``preset``; dots name nested tables (``renderer.nerf``)."""
    t: Any = preset.tables if preset else {}
    for part in name.split("."):
        t = t.get(part, {}) if isinstance(t, dict) else {}
    return dict(t) if isinstance(t, dict) else {}


def section(preset: Preset | None, name: str, cls: type[T], **overrides: Any) -> T:
    """Build the dataclass ``cls`` from ``preset``'s table ``[name]``; ``overrides`` (not None) win.

    See :func:`from_table` for the rules.
    """
    values = table(preset, name)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return from_table(cls, values, name)


def from_table(cls: type[T], values: dict[str, Any], where: str = "") -> T:
    """Build the dataclass ``cls`` from a TOML/JSON table. A field that is itself a dataclass is filled
    from the sub-table of the same name (``[renderer.nerf.hash]``). Unknown keys raise
    :class:`UserError`; values are coerced to the field's default type (``fps = 25`` fills a float field,
    a list fills a tuple)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(fields)
    if unknown:
        raise UserError(
            f"unknown setting(s) {sorted(unknown)} in [{where or cls.__name__}]",
            f"known settings: {', '.join(sorted(fields))}",
        )
    out = {}
    for k, v in values.items():
        f = fields[k]
        default = f.default
        if default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        if dataclasses.is_dataclass(default):
            if not isinstance(v, dict):
                raise UserError(f"[{where}] {k} must be a table of settings, got {v!r}",
                                f"write it as [{where}.{k}] with its own keys")
            out[k] = from_table(type(default), v, f"{where}.{k}" if where else k)
        elif isinstance(default, bool) or default is dataclasses.MISSING:
            out[k] = v
        elif isinstance(default, float) and isinstance(v, int):
            out[k] = float(v)
        elif isinstance(default, tuple) and isinstance(v, list):
            out[k] = tuple(v)
        else:
            out[k] = v
    return cls(**out)


def as_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass as a plain JSON-able dict, nested dataclasses as nested dicts (recorded with each stage
    and checkpoint, so a change invalidates it; :func:`from_table` reads it back)."""
    return _plain(dataclasses.asdict(cfg))


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (tuple, list)):
        return [_plain(x) for x in v]
    return v
