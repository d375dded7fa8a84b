"""Writing preset tables back as TOML in the tests (stdlib only: the Blender tests' bpy venvs import it too).

``tomllib`` only reads; the tests load a shipped preset, shrink it and write it back.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path


def toml_value(v) -> str:
    """A TOML value (nested tables such as ``[renderer] nerf`` as inline tables)."""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return json.dumps(v) if isinstance(v, str) else repr(v)


def dump_tables(tables: dict) -> str:
    """``{table: {key: value}}`` as TOML text, one ``[table]`` header each."""
    lines = []
    for name, table in tables.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
        lines.append("")
    return "\n".join(lines)


def tiny_nerf_preset(source, path, train: dict, ave: dict, nerf: dict | None = None):
    """Write ``source`` (a shipped preset's path) shrunk to ``path`` and return ``path``: ``train`` keys
    replace ``[train]``'s, ``ave`` keys ``[ave]``'s (only those it has), ``nerf`` sub-tables are merged into
    ``[renderer.nerf.*]``'s, and the NeRF is pinned as the default renderer, since these are ray
    iterations whatever the shipped preset's ``[renderer] default`` says."""
    tables = tomllib.loads(Path(source).read_text())
    tables["train"] = {**tables.get("train", {}), **train}
    renderer = tables.setdefault("renderer", {})
    renderer["default"] = "nerf"
    nerf_tables = renderer.setdefault("nerf", {})
    for name, table in (nerf or {}).items():
        nerf_tables[name] = {**nerf_tables.get(name, {}), **table}
    if "ave" in tables:
        tables["ave"].update({k: v for k, v in ave.items() if k in tables["ave"]})
    path = Path(path)
    path.write_text(dump_tables(tables))
    return path
