"""Turning an HTTP job request into the parameters of :func:`headsync.tasks.run`.

A request is ``{"kind": KIND, "subject": NAME, "params": {...}}``. ``params`` are the command line's
parameters (same names, same schema: :mod:`headsync.tasks`) except ``subject``, which is the top-level
NAME of a folder ``WORKSPACE/subjects/NAME``. What each string parameter is comes from its schema
(:class:`headsync.tasks.Role`):

* ``input`` (media the job reads: ``video``, ``audio``, ``curves``, eval's ``sync``): an absolute path of
  a file the user chose, or a path relative to the workspace that stays inside it; it must exist and be
  readable (``sync`` also takes ``latest``);
* ``output`` (``out``; ``output_file`` for a file such as express's curves.json): inside the workspace, always (relative paths are taken from the workspace), never
  in its own bookkeeping (``jobs.db``, ``logs``, ``server.json``) nor in a subject folder other than in its
  own subject's ``renders/``; a render's folder also follows :mod:`headsync.render.folder`;
* ``name`` (``run``, ``shot``, the subject): checked by the schema (a full match, no slashes, no ``..``);
* ``preset``: a preset's name or the absolute path of a ``.toml`` file.

Every path the job writes (its subject folder, ``out``) is resolved, symbolic links followed, and must
stay inside the workspace: a subject folder that is a link to elsewhere is refused (:func:`check_writes`,
which the worker runs again before the job starts). Every failure is an :class:`ApiError` with an HTTP
status, a message and a hint; nothing is written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import tasks
from ..core.config import AUTO, preset_names
from ..core.errors import UserError
from ..core.names import NAME_MAX, NAME_PATTERN, is_name

#: The service's own files in the workspace: no job writes there.
RESERVED = ("jobs.db", "jobs.db-wal", "jobs.db-shm", "logs", "server.json", "service.lock")
SUBJECTS = "subjects"


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
    return Path(workspace) / SUBJECTS


def creates_subject(kind: str) -> bool:
    t = tasks.TASKS.get(kind)
    return bool(t and t.creates_subject)


def creating_kinds() -> list[str]:
    return [k for k, t in tasks.TASKS.items() if t.creates_subject]


def check_name(value: Any, what: str) -> str:
    if not is_name(value):
        raise ApiError(422, f"{what} must be a name of 1-{NAME_MAX} letters, digits, '_', '-' or single "
                            f"dots, starting with a letter or digit; got {_short(value)}",
                       "names are folders inside the workspace: no slashes, no '..', no spaces or newlines")
    return value


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 80 else s[:77] + "..."


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _unusable(name: str, e: BaseException, hint: str) -> ApiError:
    return ApiError(422, f"parameter {name!r}: not a usable path ({type(e).__name__})", hint)


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
        raise _unusable(name, e, "give the absolute path of an existing file")
    return str(p)


def confine(workspace: Path, name: str, path: Path, subject_dir: Path | None = None) -> Path:
    """``path`` resolved (symbolic links followed); :class:`ApiError` unless it is a place inside the
    workspace a job may write: not the workspace itself, not the service's files, not in ``subjects/``
    except in ``subject_dir`` (for the subject parameter: that folder itself)."""
    ws = Path(workspace).resolve()
    try:
        p = path.resolve()
    except (ValueError, OSError, RuntimeError) as e:
        raise _unusable(name, e, "give a folder name inside the workspace")
    if p == ws:
        raise ApiError(422, f"parameter {name!r}: {_short(str(path))} is the workspace itself",
                       "give a new folder inside the workspace, e.g. exports/NAME")
    if not _inside(p, ws):
        raise ApiError(422, f"parameter {name!r}: {_short(str(path))} is outside the workspace"
                            + (f" (it leads to {_short(str(p))})" if p != path else ""),
                       f"jobs write only inside the workspace {ws}; give a relative path"
                       + ("" if p == path else ", and no symbolic link out of the workspace"))
    for reserved in RESERVED:
        if _inside(p, ws / reserved):
            raise ApiError(422, f"parameter {name!r}: {_short(str(path))} is reserved by the service",
                           "choose another folder inside the workspace")
    subjects = ws / SUBJECTS
    if _inside(p, subjects) and not (subject_dir is not None and _inside(p, subject_dir)):
        raise ApiError(422, f"parameter {name!r}: {_short(str(path))} is inside the subjects folder",
                       "outputs go into their subject's renders/ folder or a new folder of the workspace")
    return p


def resolve_output(workspace: Path, name: str, value: str, subject_dir: Path) -> str:
    """A folder the job writes: always inside the workspace (symbolic links resolved)."""
    ws = Path(workspace).resolve()
    try:
        p = Path(value)
        p = p if p.is_absolute() else ws / p
        p.exists()  # raises on NUL bytes and the like
    except (ValueError, OSError, RuntimeError) as e:
        raise _unusable(name, e, "give a folder name inside the workspace")
    p = confine(ws, name, p, subject_dir=subject_dir)
    if p.exists() and not p.is_dir():
        raise ApiError(422, f"parameter {name!r}: {_short(str(p))} exists and is not a folder",
                       "choose a new folder name")
    return str(p)


def resolve_output_file(workspace: Path, name: str, value: str, subject_dir: Path) -> str:
    """A file the job writes (express's curves.json): inside the workspace like a folder (:func:`confine`),
    never an existing folder, and an existing file only when it is a ``.json`` (an earlier curves file)."""
    ws = Path(workspace).resolve()
    try:
        p = Path(value)
        p = p if p.is_absolute() else ws / p
        p.exists()
    except (ValueError, OSError, RuntimeError) as e:
        raise _unusable(name, e, "give a file name inside the workspace")
    p = confine(ws, name, p, subject_dir=subject_dir)
    if p.is_dir() or (p.exists() and p.suffix != ".json"):
        raise ApiError(422, f"parameter {name!r}: {_short(str(p))} exists and is not a .json file it may replace",
                       "choose a new file name ending in .json")
    return str(p)


def check_subject_dir(workspace: Path, subject: str) -> Path:
    """The folder of subject ``subject``, resolved; :class:`ApiError` when it (or ``subjects/``, or a link in
    it) leads out of the workspace."""
    ws = Path(workspace).resolve()
    sdir = subjects_dir(ws) / subject
    for p in (subjects_dir(ws), sdir):
        if p.is_symlink() and not _inside(p.resolve(), ws):
            raise ApiError(422, f"subject {subject!r}: {p} is a symbolic link out of the workspace "
                                f"(to {_short(str(p.resolve()))})",
                           "jobs write only inside the workspace; move the subject's folder into it")
    real = sdir.resolve()
    if not _inside(real, ws) or real == ws or any(_inside(real, ws / r) for r in RESERVED):
        raise ApiError(422, f"subject {subject!r}: its folder leads out of the workspace ({_short(str(real))})",
                       "move the subject's folder into the workspace")
    for link in _links_out(real, ws, depth=2):  # where stages write: frames/, models/RUN/, renders/ID/, ...
        raise ApiError(422, f"subject {subject!r}: {link} is a symbolic link out of the workspace "
                            f"(to {_short(str(link.resolve()))})",
                       "jobs write only inside the workspace; replace the link by a folder")
    return real


def _links_out(folder: Path, ws: Path, depth: int):
    """Symbolic links within ``depth`` levels of ``folder`` that lead out of ``ws`` (not followed)."""
    try:
        entries = list(os.scandir(folder)) if depth > 0 else []
    except OSError:
        return
    for e in entries:
        if e.is_symlink():
            if not _inside(Path(e.path).resolve(), ws):
                yield Path(e.path)
        elif e.is_dir(follow_symlinks=False):
            yield from _links_out(Path(e.path), ws, depth - 1)


def resolve_preset(value: str) -> str:
    if value == AUTO or value in preset_names():
        return value
    try:
        if value.endswith(".toml") and Path(value).is_absolute() and Path(value).is_file() \
                and os.access(value, os.R_OK):
            return str(Path(value).resolve())
    except (ValueError, OSError):
        pass
    raise ApiError(422, f"unknown preset {_short(value)}",
                   f"use one of {', '.join([AUTO, *preset_names()])} or the absolute path of a .toml file")


def resolve_params(workspace: Path, kind: str, params: dict[str, Any], sdir: Path) -> dict[str, Any]:
    """The request's string parameters resolved by what they are (their schema's role)."""
    task = tasks.TASKS[kind]
    out: dict[str, Any] = {}
    for name, v in params.items():
        role = task.role(name) if name in task.model.model_fields else None
        if isinstance(v, str) and v != "" and len(v) <= tasks.PATH_MAX:
            if role == "preset":
                v = resolve_preset(v)
            elif role == "output":
                v = resolve_output(workspace, name, v, sdir)
            elif role == "output_file":
                v = resolve_output_file(workspace, name, v, sdir)
            elif role == "input" or (role == "input_or_latest" and v != "latest"):
                v = resolve_input(workspace, name, v)
        out[name] = v
    return out


def check_writes(workspace: Path, kind: str, params: dict[str, Any]) -> None:
    """Raise :class:`ApiError` unless every path a job of ``kind`` writes stays inside the workspace
    (run again by the worker just before the job: links may have changed since submission)."""
    sdir = Path(params["subject"])
    real = check_subject_dir(workspace, sdir.name)
    task = tasks.TASKS[kind]
    for name in task.names:
        if task.role(name) in ("output", "output_file") and isinstance(params.get(name), str):
            confine(workspace, name, Path(params[name]), subject_dir=real)


def unknown_subject(workspace: Path, subject: str) -> ApiError:
    """The 404 for a subject the workspace has not prepared, naming those it has."""
    known = sorted(p.name for p in subjects_dir(workspace).glob("*") if (p / "subject.json").is_file())
    return ApiError(404, f"unknown subject {subject!r}",
                    ("known subjects: " + ", ".join(known[:20])) if known else
                    "prepare it first: POST /api/v1/jobs {\"kind\": \"prepare\", \"subject\": NAME, "
                    "\"params\": {\"video\": PATH}}")


def build(workspace: Path, body: Any, job_id: str, active_subjects: set[str] | None = None) -> JobSpec:
    """Check a request body and translate it; raises :class:`ApiError`."""
    workspace = Path(workspace).resolve()
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
    task = tasks.TASKS[kind]
    unknown = set(params) - set(task.names)
    if unknown:
        raise ApiError(422, f"unknown parameter(s) for {kind}: {sorted(unknown)}",
                       f"{kind} takes: {', '.join(n for n in task.names if n != 'subject')}")
    sdir = check_subject_dir(workspace, subject)
    try:
        tasks.validate(kind, {**params, "subject": str(sdir)}, disk=False)  # types and ranges first
    except UserError as e:
        raise ApiError(422, e.message, e.hint)
    out = resolve_params(workspace, kind, params, sdir)
    out["subject"] = str(sdir)
    # An output folder the request names is the job's own: removed unless the job succeeds (the scheduler
    # keeps only those that did not exist when the job started). The default render folder is written
    # through a staging folder, so an interrupted render leaves only a temporary name, swept by PID.
    owned = [out[n] for n in task.names if task.role(n) in ("output", "output_file") and isinstance(out.get(n), str)]
    try:
        validated = tasks.validate(kind, out)
    except UserError as e:
        raise ApiError(422, e.message, e.hint)

    if not task.creates_subject and not (sdir / "subject.json").is_file() \
            and subject not in (active_subjects or set()):
        raise unknown_subject(workspace, subject)
    return JobSpec(kind=kind, subject=subject, params=validated, owned=owned)


def json_schema_for_requests(ref_template: str = "#/components/schemas/{model}") -> tuple[dict[str, Any], dict[str, Any]]:
    """The OpenAPI schema of a job request (one alternative per kind, its ``params`` the kind's pydantic
    schema less ``subject``) and the component schemas it refers to."""
    from pydantic.json_schema import models_json_schema

    models = [(t.model, "validation") for t in tasks.TASKS.values()]
    _, top = models_json_schema(models, ref_template=ref_template)
    components: dict[str, Any] = dict(top.get("$defs", {}))
    alts = []
    for kind, task in tasks.TASKS.items():
        name = task.model.__name__
        schema = dict(components[name])
        props = {k: v for k, v in schema["properties"].items() if k != "subject"}
        required = [r for r in schema.get("required", []) if r != "subject"]
        params_schema: dict[str, Any] = {**schema, "properties": props, "additionalProperties": False}
        params_schema.pop("required", None)
        if required:
            params_schema["required"] = required
        components[name] = params_schema
        alts.append({
            "type": "object",
            "title": f"{kind} job",
            "description": task.help,
            "properties": {
                "kind": {"type": "string", "enum": [kind]},
                "subject": {"type": "string", "pattern": NAME_PATTERN, "minLength": 1, "maxLength": NAME_MAX},
                "params": {"$ref": ref_template.format(model=name)},
            },
            "required": ["kind", "subject"] + (["params"] if required else []),
            "additionalProperties": False,
        })
    return {"oneOf": alts}, components
