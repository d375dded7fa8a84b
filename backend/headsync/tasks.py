"""The job kinds (prepare, train, render, express, eval): one parameter spec and one entry point each.

The command line and the local service both go through :func:`validate` and :func:`run`, so a job
submitted over HTTP does exactly what the same command does in a terminal.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Collection

from .core.errors import UserError
from .core.progress import Reporter
from .renderers.registry import RENDERERS


@dataclass(frozen=True)
class Param:
    """One parameter of a job kind. ``type`` is one of str, int, float, bool; ``path`` marks file paths."""

    name: str
    type: type
    required: bool = False
    default: Any = None
    help: str = ""
    path: bool = False
    choices: Collection[str] | None = None  # a tuple, or a lazy container (the registered renderers)


@dataclass(frozen=True)
class Task:
    kind: str
    params: tuple[Param, ...]
    entry: str  # "module:function"; the function takes (params: dict, reporter) and returns artifacts
    help: str = ""

    def function(self) -> Callable[[dict[str, Any], Reporter], dict[str, Any]]:
        mod, fn = self.entry.split(":")
        return getattr(importlib.import_module(f"headsync.{mod}"), fn)


TASKS: dict[str, Task] = {
    t.kind: t
    for t in [
        Task("prepare", (
            Param("video", str, True, path=True, help="the subject video (any format ffmpeg reads)"),
            Param("subject", str, True, path=True, help="subject folder to create or update"),
            Param("audio", str, path=True, help="audio for the video when it has none, or to replace it"),
            Param("preset", str, default="standard", help="preset name or .toml path"),
            Param("fps", float, help="target frame rate (default from the preset)"),
            Param("resolution", int, help="side of the square training crop in pixels"),
        ), "prepare.pipeline:prepare_task", "video + audio -> prepared subject folder"),
        Task("train", (
            Param("subject", str, True, path=True, help="a prepared subject folder"),
            Param("preset", str, default="standard"),
            Param("renderer", str, choices=RENDERERS,
                  help="a registered renderer (default: the preset's [renderer] default, else nerf)"),
            Param("run", str, default="default", help="name of the model run under models/"),
            Param("resume", bool, default=False, help="continue from the run's last checkpoint"),
        ), "training.trainer:train_task", "prepared subject -> trained model"),
        Task("render", (
            Param("subject", str, True, path=True),
            Param("audio", str, True, path=True, help="the new dialogue (any audio format)"),
            Param("run", str, default="default"),
            Param("curves", str, path=True, help="curves.json overriding expression (and pose)"),
            Param("out", str, path=True, help="output folder (default: SUBJECT/renders/ID)"),
            Param("portrait", bool, default=True, help="composite into the full-resolution plate"),
            Param("expressions", str, default="captured", choices=("captured", "generated"),
                  help="expression source: the captured performance, or generated from the audio"),
            Param("expressions_file", str, path=True,
                  help="expressions from a curves.json or a Live Link Face CSV, mapped through the subject's VQ-VAE"),
        ), "render.dub:render_task", "trained model + audio (+ curves) -> frames, mp4, curves.json"),
        Task("express", (
            Param("subject", str, True, path=True, help="a prepared subject folder"),
            Param("audio", str, path=True, help="dialogue to generate expressions for (any audio format)"),
            Param("livelink", str, path=True, help="a Live Link Face CSV to import instead of generating"),
            Param("out", str, path=True, help="curves.json to write (default: SUBJECT/expressions/curves/ID.json)"),
            Param("seed", int, default=1, help="draw of the stochastic blinks"),
            Param("livelink_fps", float, help="the take's capture rate when its timecodes do not tell it"),
            Param("retrain", bool, default=False, help="train the subject's expression models again"),
        ), "expressions.express:express_task",
            "audio or a Live Link Face take -> the subject's expression curves (without either: train the models)"),
        Task("eval", (
            Param("subject", str, True, path=True),
            Param("run", str, default="default"),
            Param("sync", str, help="judge the lip sync of this video ('latest': the newest render) instead"),
            Param("audio", str, path=True, help="with sync: judge against this sound instead of the video's own"),
        ), "evaluation.evaluate:eval_task", "held-out metrics of a trained model, or the lip sync of a video"),
    ]
}


def validate(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """Check ``params`` against the kind's spec and fill defaults. Raises :class:`UserError`."""
    if kind not in TASKS:
        raise UserError(f"unknown job kind {kind!r}", f"use one of {', '.join(TASKS)}")
    if not isinstance(params, dict):
        raise UserError("params must be a JSON object", "send {\"params\": {...}}")
    spec = {p.name: p for p in TASKS[kind].params}
    unknown = set(params) - set(spec)
    if unknown:
        raise UserError(f"unknown parameter(s) for {kind}: {sorted(unknown)}",
                        f"{kind} takes: {', '.join(spec)}")
    out: dict[str, Any] = {}
    for name, p in spec.items():
        v = params.get(name)
        if v is None:
            if p.required:
                raise UserError(f"{kind} needs the parameter {name!r}", p.help or "")
            out[name] = p.default
            continue
        if p.type is bool:
            ok = isinstance(v, bool)
        elif p.type is float:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
            v = float(v) if ok else v
        elif p.type is int:
            ok = isinstance(v, int) and not isinstance(v, bool)
        else:
            ok = isinstance(v, str) and v != ""
        if not ok:
            raise UserError(f"parameter {name!r} of {kind} must be a {p.type.__name__}, got {v!r}", p.help or "")
        if p.choices and v not in p.choices:
            raise UserError(f"parameter {name!r} must be one of {list(p.choices)}, got {v!r}", "")
        if p.type in (int, float) and v <= 0:
            raise UserError(f"parameter {name!r} must be positive, got {v!r}", "")
        out[name] = v
    return out


def run(kind: str, params: dict[str, Any], reporter: Reporter) -> dict[str, Any]:
    """Validate and run a job; returns its artifacts (paths and metrics, JSON-able)."""
    params = validate(kind, params)
    return TASKS[kind].function()(params, reporter)
