"""The job kinds (prepare, train, torso, render, express, eval): one parameter schema and one entry point each.

Each kind is ONE declaration: a pydantic model of its parameters (types, ranges, descriptions, which
strings are paths and how the command line spells them) registered with :func:`job_kind`. The command
line builds its flags from these models, the local service builds its OpenAPI document and checks its
requests with them, and both go through :func:`validate` and :func:`run`, so a job submitted over HTTP
is checked and run exactly like the same command in a terminal. Adding a parameter is one field; adding
a kind is one class.

Kinds from outside the package (the tests' sleep job, say) register through the entry-point group
``headsync.tasks`` (:func:`load_plugins`): code installed in the Python environment, never a file named
by a request.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from .core.config import AUTO
from .core.errors import UserError
from .core.names import NAME_MAX, NAME_PATTERN, is_name
from .core.progress import Reporter
from .post.torso.config import MODES as TORSO_MODES
from .renderers.registry import DEFAULT_RENDERER, RENDERERS

#: Longest path string accepted (Linux PATH_MAX).
PATH_MAX = 4096
#: Ranges of the preparation settings (the papers use 25 fps and 512 pixels).
FPS_RANGE = (1.0, 120.0)
RESOLUTION_RANGE = (64, 2048)


# ---- what a string parameter is (read by the service to resolve and confine it) --------------------
@dataclass(frozen=True)
class Role:
    """What a string parameter names: ``input`` (a file the job reads), ``output`` (a folder it writes),
    ``output_file`` (a file it writes), ``subject`` (the subject folder), ``name`` (a plain name),
    ``preset`` (a preset name or .toml file),
    ``input_or_latest`` (a file, or the word ``latest``)."""

    kind: str


@dataclass(frozen=True)
class Cli:
    """How the command line spells a parameter when it is not ``--name VALUE``."""

    positional: bool = False
    flag: str | None = None      # e.g. "--no-portrait" for a boolean that defaults to true
    nargs: str | None = None     # with const: "--sync" alone means const
    const: Any = None
    metavar: str | None = None
    or_file: str | None = None   # a value outside the choices is a file, sent as this parameter instead
    hidden: bool = False         # no flag of its own (set through another's or_file)
    choices: Any = None          # allowed values known only at run time (the registered renderers), lazily


def _check_name(v: str) -> str:
    if not is_name(v):
        raise ValueError("must be a name of letters, digits, '_', '-' and single dots, starting with a letter "
                         "or digit (no slashes, no '..', no spaces or newlines)")
    return v


_path = Field(min_length=1, max_length=PATH_MAX)
InputFile = Annotated[str, Role("input"), _path]
OutputFolder = Annotated[str, Role("output"), _path]
OutputFile = Annotated[str, Role("output_file"), _path]
SubjectFolder = Annotated[str, Role("subject"), _path]
PresetRef = Annotated[str, Role("preset"), _path]
Name = Annotated[str, Role("name"), Field(min_length=1, max_length=NAME_MAX, json_schema_extra={"pattern": NAME_PATTERN}),
                 AfterValidator(_check_name)]  # the pattern is checked by _check_name (a full match, a clear message)


class JobParams(BaseModel):
    """Base of every kind's parameters: unknown keys, wrong types (no coercion of "yes" or 2.5) and
    non-finite numbers are refused."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)


@dataclass(frozen=True)
class Task:
    """A job kind: its parameter schema (``model``), entry point (a function ``(params, reporter) ->
    artifacts``, or ``"module:function"`` under ``headsync``, imported only when the job runs) and what the
    service needs to know of it."""

    kind: str
    model: type[JobParams]
    entry: str | Callable[[dict[str, Any], Reporter], dict[str, Any]]  # "module:function" under headsync
    help: str = ""
    creates_subject: bool = False   # the others need their subject prepared (or its prepare queued)
    checkpoint: Callable[[dict[str, Any]], Path] | None = None  # what a resumed job continues from
    check: Callable[[dict[str, Any]], None] | None = None       # rules across parameters and the disk
    gpu: bool = True                # runs on a GPU where there is one (a cluster executor asks for one)
    reads_subject: bool = False     # only reads its subject: may run beside other such jobs of it
    # A job this says yes to is short and dominated by setup (Blender's Preview Frame): the local service
    # runs it in its long-lived warm worker (service/warm.py), which calls ``preload`` ("module:function"
    # under headsync) once when it starts, so imports and lazily loaded models are paid once, not per job.
    warm: Callable[[dict[str, Any]], bool] | None = None
    preload: str | None = None

    def function(self) -> Callable[[dict[str, Any], Reporter], dict[str, Any]]:
        return self.entry if callable(self.entry) else _import(self.entry)

    def runs_warm(self, params: dict[str, Any]) -> bool:
        """True when a job of these (validated) ``params`` goes to the service's warm worker."""
        return self.warm is not None and bool(self.warm(params))

    @property
    def names(self) -> list[str]:
        return list(self.model.model_fields)

    def role(self, name: str) -> str | None:
        m = _marker(self.model, name, Role)
        return m.kind if m else None

    def cli(self, name: str) -> Cli:
        return _marker(self.model, name, Cli) or Cli()

    @property
    def resumable(self) -> bool:
        return "resume" in self.model.model_fields


def _import(entry: str) -> Callable:
    """The function ``"module:function"`` names, the module under ``headsync``."""
    mod, fn = entry.split(":")
    return getattr(importlib.import_module(f"headsync.{mod}"), fn)


def _marker(model: type[BaseModel], name: str, cls: type) -> Any:
    """The ``cls`` marker of field ``name``, also inside ``Optional[Annotated[...]]``."""
    field = model.model_fields[name]
    todo: list[Any] = [*field.metadata, field.annotation]
    while todo:
        m = todo.pop(0)
        if isinstance(m, cls):
            return m
        todo += list(getattr(m, "__metadata__", ())) + list(get_args(m))
    return None


TASKS: dict[str, Task] = {}


def job_kind(kind: str, entry: str | Callable, help: str, **options: Any) -> Callable[[type[JobParams]], type[JobParams]]:
    """Class decorator: register ``cls`` as the parameters of job kind ``kind`` (see :class:`Task`)."""

    def register(cls: type[JobParams]) -> type[JobParams]:
        TASKS[kind] = Task(kind, cls, entry, help, **options)
        return cls

    return register


# ---- the kinds -------------------------------------------------------------------------------------
@job_kind("prepare", "prepare.pipeline:prepare_task", "video + audio -> prepared subject folder", creates_subject=True,
          gpu=False)
class PrepareParams(JobParams):
    video: Annotated[InputFile, Cli(positional=True)] = Field(description="the subject video (any format ffmpeg reads)")
    subject: SubjectFolder = Field(description="subject folder to create or update")
    audio: InputFile | None = Field(None, description="audio for the video when it has none, or to replace it")
    preset: PresetRef = Field(AUTO, description="preset name or .toml path (auto: preview on a CPU, standard with CUDA)")
    fps: float | None = Field(None, ge=FPS_RANGE[0], le=FPS_RANGE[1],
                              description="target frame rate (default from the preset)")
    resolution: int | None = Field(None, ge=RESOLUTION_RANGE[0], le=RESOLUTION_RANGE[1],
                                   description="side of the square training crop in pixels")


def _check_renderer(v: str) -> str:
    if v not in RENDERERS:  # imports the renderers only now, not when the schema is built
        raise ValueError(f"must be a registered renderer: {', '.join(RENDERERS)}")
    return v


def _train_checkpoint(p: dict[str, Any]) -> Path:
    return Path(p["subject"]) / "models" / str(p.get("run") or "default") / "checkpoint.pt"


@job_kind("train", "training.trainer:train_task", "prepared subject -> trained model", checkpoint=_train_checkpoint)
class TrainParams(JobParams):
    subject: SubjectFolder = Field(description="a prepared subject folder")
    preset: PresetRef = Field(AUTO, description="preset name or .toml path (auto: preview on a CPU, standard with CUDA)")
    renderer: Annotated[str, Cli(choices=RENDERERS), AfterValidator(_check_renderer)] | None = Field(
        None, description=f"the renderer to train (a registered one; default: the preset's [renderer] default, "
                          f"else {DEFAULT_RENDERER})",
        json_schema_extra=lambda s: s.update(enum=[*RENDERERS, None]))  # listed when the schema is asked for
    run: Name = Field("default", description="name of the model run under models/")
    resume: bool = Field(False, description="continue from the run's last checkpoint")


def _check_render(p: dict[str, Any]) -> None:
    if p.get("out"):
        from .render.folder import check_render_folder

        check_render_folder(Path(p["out"]), Path(p["subject"]), shot_of(p))


def shot_of(params: dict[str, Any]) -> str:
    """The shot a render is of: its ``shot`` name, else its audio file (resolved)."""
    return params.get("shot") or str(Path(params["audio"]).expanduser().resolve())


@job_kind("torso", "training.torso:torso_task", "prepared subject -> torso restorer and/or torso field")
class TorsoParams(JobParams):
    subject: SubjectFolder = Field(description="a prepared subject folder")
    preset: PresetRef = Field("standard", description="preset name or .toml path")
    mode: Literal[TORSO_MODES] | None = Field(None, description="torso path to train (default: the preset's [torso] mode)")


def is_frame_range(params: dict[str, Any]) -> bool:
    """A render of a frame range (Blender's Preview Frame), not of the whole shot."""
    return params.get("frames") is not None


@job_kind("render", "render.dub:render_task", "trained model + audio (+ curves) -> frames, mp4, curves.json",
          check=_check_render, reads_subject=True, warm=is_frame_range, preload="render.dub:preload")
class RenderParams(JobParams):
    subject: SubjectFolder = Field(description="a trained subject folder")
    audio: InputFile = Field(description="the new dialogue (any audio format)")
    run: Name = Field("default", description="the model run to render with")
    curves: InputFile | None = Field(None, description="curves.json overriding expression (and pose)")
    out: OutputFolder | None = Field(None, description="output folder (default: SUBJECT/renders/ID): a new or "
                                     "empty folder, or a previous render of the same shot (replaced)")
    shot: Name | None = Field(None, description="the shot's name, recorded in the render folder (default: the "
                                                "audio file); a folder is replaced only by a render of its shot")
    portrait: Annotated[bool, Cli(flag="--no-portrait")] = Field(
        True, description="composite into the full-resolution plate (--no-portrait: the raw head crops)")
    expressions: Annotated[Literal["captured", "generated"], Cli(or_file="expressions_file")] = Field(
        "captured", description="expression source: the captured performance, or generated from the audio "
                                "(the command line also takes a FILE here: expressions_file)")
    expressions_file: Annotated[InputFile, Cli(hidden=True)] | None = Field(
        None, description="expressions from a curves.json or a Live Link Face CSV, mapped through the subject's VQ-VAE")
    torso: Literal[TORSO_MODES] | None = Field(
        None, description="torso path of this render, one the subject's torso job trained the parts of "
                          "(default: that job's mode, or source)")
    frames: Annotated[str, Field(pattern=r"^[0-9]{1,7}(-[0-9]{1,7})?$")] | None = Field(
        None, description="A-B: render only these frames (curves' numbering, 1-based without curves), e.g. "
                          "Blender's Preview Frame; no render.mp4 then")


@job_kind("express", "expressions.express:express_task",
          "audio or a Live Link Face take -> the subject's expression curves (without either: train the models)")
class ExpressParams(JobParams):
    subject: SubjectFolder = Field(description="a prepared subject folder")
    audio: InputFile | None = Field(None, description="dialogue to generate expressions for (any audio format)")
    livelink: Annotated[InputFile, Cli(metavar="CSV")] | None = Field(
        None, description="a Live Link Face CSV to import instead of generating")
    out: OutputFile | None = Field(None, description="curves.json to write (default: SUBJECT/expressions/curves/ID.json)")
    seed: int = Field(1, ge=1, le=2**31 - 1, description="draw of the stochastic blinks")
    livelink_fps: float | None = Field(None, gt=0, le=240,
                                       description="the take's capture rate when its timecodes do not tell it")
    retrain: bool = Field(False, description="train the subject's expression models again")


@job_kind("eval", "evaluation.evaluate:eval_task", "held-out metrics of a trained model, or the lip sync of a video")
class EvalParams(JobParams):
    subject: SubjectFolder = Field(description="a trained subject folder")
    run: Name = Field("default", description="the model run to evaluate")
    sync: Annotated[str, Role("input_or_latest"), _path, Cli(nargs="?", const="latest")] | None = Field(
        None, description="judge the lip sync of this video ('latest': the newest render) instead")
    audio: InputFile | None = Field(None, description="with sync: judge against this sound instead of the video's own")


# ---- checking and running -------------------------------------------------------------------------
def _describe(kind: str, task: Task, e: ValidationError) -> UserError:
    """The first problem of a pydantic error as a sentence with a hint."""
    errs = e.errors(include_url=False)
    unknown = sorted(str(x["loc"][0]) for x in errs if x["type"] == "extra_forbidden" and x["loc"])
    if unknown:
        return UserError(f"unknown parameter(s) for {kind}: {unknown}", f"{kind} takes: {', '.join(task.names)}")
    x = errs[0]
    name = str(x["loc"][0]) if x["loc"] else ""
    field = task.model.model_fields.get(name)
    hint = (field.description or "") if field else ""
    if x["type"] == "missing":
        return UserError(f"{kind} needs the parameter {name!r}", hint)
    got = x.get("input")
    if isinstance(got, float) and not math.isfinite(got):
        return UserError(f"parameter {name!r} of {kind} must be a finite number, got {got!r}", hint)
    shown = repr(got)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    msg = x["msg"].removeprefix("Value error, ").replace("Input should be", "must be")
    msg = msg[0].lower() + msg[1:]
    return UserError(f"parameter {name!r} of {kind} {msg}, got {shown}", hint)


def validate(kind: str, params: dict[str, Any], disk: bool = True) -> dict[str, Any]:
    """Check ``params`` against the kind's schema and (``disk``) its rules on the disk; fill defaults.

    Returns a plain dict (JSON-able). Raises :class:`UserError` saying what is wrong and what to do."""
    task = TASKS.get(kind) if isinstance(kind, str) else None
    if task is None:
        raise UserError(f"unknown job kind {kind!r}", f"use one of {', '.join(TASKS)}")
    if not isinstance(params, dict):
        raise UserError("params must be a JSON object", "send {\"params\": {...}}")
    try:
        out = task.model.model_validate({k: v for k, v in params.items() if v is not None}).model_dump()
    except ValidationError as e:
        raise _describe(kind, task, e) from None
    if disk and task.check:
        task.check(out)
    return out


def preload_warm(kinds: list[str]) -> list[str]:
    """Import what those of ``kinds`` that run warm need (their entry modules, their ``preload``); returns
    those kinds."""
    done = []
    for kind in kinds:
        task = TASKS.get(kind)
        if task is None or task.warm is None:
            continue
        task.function()
        if task.preload:
            _import(task.preload)()
        done.append(kind)
    return done


def run(kind: str, params: dict[str, Any], reporter: Reporter) -> dict[str, Any]:
    """Validate and run a job; returns its artifacts (paths and metrics, JSON-able)."""
    params = validate(kind, params)
    return TASKS[kind].function()(params, reporter)


def resolve(path: str | None) -> Path | None:
    return None if path is None else Path(path).expanduser().resolve()


_plugins_loaded = False


def load_plugins() -> None:
    """Import the modules registered under the entry-point group ``headsync.tasks`` (they declare more
    kinds with :func:`job_kind`). Once per process; a plugin that fails to import is an error."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group="headsync.tasks"):
        ep.load()
