"""Writing preset tables back as TOML in the tests (stdlib only: the Blender tests' bpy venvs import it too).

``tomllib`` only reads; the tests load a shipped preset, shrink it and write it back.
"""

from __future__ import annotations

import json


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
