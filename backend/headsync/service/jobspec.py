"""Turning an HTTP job request into the parameters of :func:`headsync.tasks.run`.

A request is ``{"kind": KIND, "subject": NAME, "params": {...}}``. ``params`` are the command line's
parameters (same names, same types, checked by :func:`headsync.tasks.validate`) except ``subject``,
which is the top-level NAME of a folder ``WORKSPACE/subjects/NAME``. Paths:

* media the job reads (``video``, ``audio``, ``curves``, a preset ``.toml``): an absolute path of a file
  the user chose, or a path relative to the workspace that stays inside it; it must exist and be readable;
* outputs (``out``): inside the workspace, always (relative paths are taken from the workspace);
* names (``run``, the subject): a fixed character set, no slashes, no ``..``.

Every failure is an :class:`ApiError` with an HTTP status, a message and a hint; nothing is written.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import tasks
from ..core.config import preset_names
from ..core.errors import UserError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
NAME_PATTERN = NAME_RE.pattern
#: Parameters that name something rather than point at a file.
NAME_PARAMS = ("run",)
#: Output parameters: must resolve inside the workspace.
OUTPUT_PARAMS = ("out",)
#: Kinds that create their subject (the others need it to exist, or a prepare of it queued).
CREATES_SUBJECT = {"prepare"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, hint: str = ""):
        super().__init__(message)
        self.status, self.message, self.hint = status, message, hint


@dataclass
class JobSpec:
    kind: str
    subject: str
    params: dict[str, Any]            # validated task parameters (absolute paths)
    owned: list[str] = field(default_factory=list)  # outputs removed unless the job succeeds


def subjects_dir(workspace: Path) -> Path:
    return Path(workspace) / "subjects"


def check_name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value) or ".." in value:
        raise ApiError(422, f"{what} must be a name of 1-64 letters, digits, '_', '-' or '.', "
                            f"starting with a letter or digit; got {_short(value)}",
                       "names are folders inside the workspace: no slashes, no '..'")
    return value


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 80 else s[:77] + "..."


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def resolve_input(workspace: Path, name: str, value: str) -> str:
    """A file the job reads: absolute (the user's media) or relative to the workspace (inside it)."""
    try:
        p = Path(value).expanduser() if value.startswith("~") else Path(value)
        if not p.is_absolute():
            ws = Path(workspace).resolve()
            p = (ws / p).resolve()
            if not _inside(p, ws):
                raise ApiError(422, f"parameter {name!r}: relative path {_short(value)} escapes the workspace",
                               "give an absolute path of the file you chose, or a path inside the workspace")
        else:
            p = p.resolve()
        if not p.is_file():
            raise ApiError(422, f"parameter {name!r}: no such file {_short(str(p))}",
                           "give the absolute path of an existing file")
        if not os.access(p, os.R_OK):
            raise ApiError(422, f"parameter {name!r}: {_short(str(p))} is not readable", "check its permissions")
    except (ValueError, OSError, RuntimeError) as e:  # NUL bytes, names too long, bad encodings, loops
        raise ApiError(422, f"parameter {name!r}: not a usable path ({type(e).__name__})",
                       "give the absolute path of an existing file")
    return str(p)


def resolve_output(workspace: Path, name: str, value: str) -> str:
    """A folder the job writes: always inside the workspace (symbolic links resolved)."""
    ws = Path(workspace).resolve()
    try:
        p = Path(value)
        p = (p if p.is_absolute() else ws / p).resolve()
        if not _inside(p, ws) or p == ws:
            raise ApiError(422, f"parameter {name!r}: {_short(value)} is outside the workspace",
                           f"outputs are written inside the workspace {ws}; give a relative path")
        for reserved in ("jobs.db", "logs", "server.json"):
            if _inside(p, ws / reserved):
                raise ApiError(422, f"parameter {name!r}: {_short(value)} is reserved by the service",
                               "choose another folder inside the workspace")
        if p.exists() and not p.is_dir():
            raise ApiError(422, f"parameter {name!r}: {_short(str(p))} exists and is not a folder",
                           "choose a new folder name")
    except (ValueError, OSError, RuntimeError) as e:
        raise ApiError(422, f"parameter {name!r}: not a usable path ({type(e).__name__})",
                       "give a folder name inside the workspace")
    return str(p)


def resolve_preset(value: str) -> str:
    if value in preset_names():
        return value
    if value.endswith(".toml") and Path(value).is_absolute():
        try:
            if Path(value).is_file() and os.access(value, os.R_OK):
                return str(Path(value).resolve())
        except (ValueError, OSError):
            pass
    raise ApiError(422, f"unknown preset {_short(value)}",
                   f"use one of {', '.join(preset_names())} or the absolute path of a .toml file")


def build(workspace: Path, body: Any, job_id: str, active_subjects: set[str] | None = None) -> JobSpec:
    """Check a request body and translate it; raises :class:`ApiError`."""
    workspace = Path(workspace)
    if not isinstance(body, dict):
        raise ApiError(422, "the request body must be a JSON object",
                       'send {"kind": ..., "subject": NAME, "params": {...}}')
    extra = set(body) - {"kind", "subject", "params"}
    if extra:
        raise ApiError(422, f"unknown field(s) {sorted(extra)}", 'the fields are "kind", "subject", "params"')
    for f in ("kind", "subject"):
        if f not in body:
            raise ApiError(422, f"missing field {f!r}", 'send {"kind": ..., "subject": NAME, "params": {...}}')
    kind = body["kind"]
    if not isinstance(kind, str) or kind not in tasks.TASKS:
        raise ApiError(422, f"unknown job kind {_short(kind)}", f"use one of {', '.join(tasks.TASKS)}")
    subject = check_name(body["subject"], "subject")
    params = body.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ApiError(422, "params must be a JSON object", 'send "params": {...}')
    if "subject" in params:
        raise ApiError(422, "the subject goes at the top level of the request, not in params",
                       'send {"kind": ..., "subject": NAME, "params": {...}}')
    spec = {p.name: p for p in tasks.TASKS[kind].params}
    unknown = set(params) - set(spec)
    if unknown:
        raise ApiError(422, f"unknown parameter(s) for {kind}: {sorted(unknown)}",
                       f"{kind} takes: {', '.join(n for n in spec if n != 'subject')}")

    sdir = subjects_dir(workspace) / subject
    out: dict[str, Any] = {}
    for name, v in params.items():
        p = spec[name]
        if isinstance(v, str) and v != "":
            if name in NAME_PARAMS:
                v = check_name(v, f"parameter {name!r}")
            elif name == "preset":
                v = resolve_preset(v)
            elif p.path and name in OUTPUT_PARAMS:
                v = resolve_output(workspace, name, v)
            elif p.path:
                v = resolve_input(workspace, name, v)
        out[name] = v
    out["subject"] = str(sdir)
    # An output folder the request names is the job's own: removed unless the job succeeds (the scheduler
    # keeps only those that did not exist when the job started). The default render folder is written
    # through a staging folder, so an interrupted render leaves only a temporary name, swept by PID.
    owned: list[str] = [out["out"]] if isinstance(out.get("out"), str) else []
    try:
        validated = tasks.validate(kind, out)
    except UserError as e:
        raise ApiError(422, e.message, e.hint)

    if kind not in CREATES_SUBJECT and not (sdir / "subject.json").is_file() \
            and subject not in (active_subjects or set()):
        known = sorted(p.name for p in subjects_dir(workspace).glob("*") if (p / "subject.json").is_file())
        raise ApiError(404, f"unknown subject {subject!r}",
                       ("known subjects: " + ", ".join(known[:20])) if known else
                       "prepare it first: POST /api/v1/jobs {\"kind\": \"prepare\", \"subject\": NAME, "
                       "\"params\": {\"video\": PATH}}")
    return JobSpec(kind=kind, subject=subject, params=validated, owned=owned)


def json_schema_for_requests() -> dict[str, Any]:
    """The OpenAPI schema of a job request, one alternative per kind, built from the task table."""
    alts = []
    tmap = {bool: "boolean", int: "integer", float: "number", str: "string"}
    for kind, task in tasks.TASKS.items():
        props: dict[str, Any] = {}
        required = []
        for p in task.params:
            if p.name == "subject":
                continue
            s: dict[str, Any] = {"type": tmap[p.type], "description": p.help or p.name}
            if p.type is str:
                s["minLength"] = 1
            if p.choices:
                s["enum"] = list(p.choices)
            if p.type in (int, float):
                s["exclusiveMinimum"] = 0
            if p.default is not None:
                s["default"] = p.default
            props[p.name] = s
            if p.required:
                required.append(p.name)
        params_schema: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
        if required:
            params_schema["required"] = required
        alts.append({
            "type": "object",
            "title": f"{kind} job",
            "description": task.help,
            "properties": {
                "kind": {"type": "string", "enum": [kind]},
                "subject": {"type": "string", "pattern": NAME_PATTERN, "maxLength": 64},
                "params": params_schema,
            },
            "required": ["kind", "subject"] + (["params"] if required else []),
            "additionalProperties": False,
        })
    return {"oneOf": alts}
