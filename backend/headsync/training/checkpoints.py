"""Checkpoints of a run (``models/RUN/checkpoint.pt``): what renderer made it, with what settings, for which
subject, and its state, so render and eval rebuild the renderer from the file alone and a resumed run
continues exactly where it stopped.

Format (``version`` 2), a ``torch.save`` dict written atomically:
``renderer`` (registered kind), ``renderer_config`` (its ``Config`` as a nested dict), ``train`` (the
``[train]`` table), ``meta`` (:class:`~headsync.renderers.base.SubjectMeta` as a dict, which carries the
coefficient names), ``model`` (the renderer's ``state_dict``), ``optimizer``, ``scheduler``, ``rng``,
``iteration``, ``metrics``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..core.atomic import torch_save_atomic
from ..core.config import from_table
from ..core.errors import UserError
from ..renderers.base import Renderer, SubjectMeta
from ..renderers.registry import renderer_class
from ..subject.folder import Subject

VERSION = 2


def run_dir(subject: Subject, run: str) -> Path:
    """The folder of run ``run`` (a plain name) of ``subject``."""
    if not run or "/" in run or "\\" in run or run.startswith("."):
        raise UserError(f"bad run name {run!r}", "use a plain name such as 'default' or 'preview'")
    return subject.path(f"models/{run}")


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (the format above, ``version`` added) atomically."""
    torch_save_atomic(path, {"version": VERSION, **state})


def load_checkpoint(path: Path, device: torch.device | str = "cpu", kind: str | None = None) -> dict[str, Any]:
    """Read a checkpoint; a missing, damaged or foreign file is a :class:`UserError` with what to do.
    With ``kind``, a checkpoint of another renderer is refused too."""
    if not path.exists():
        runs = sorted(p.parent.name for p in path.parent.parent.glob("*/checkpoint.pt"))
        hint = (f"runs of this subject: {', '.join(runs)} (pass one with --run)" if runs else
                "train the run first: `headsync train --subject DIR`")
        raise UserError(f"no checkpoint at {path}", hint)
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as e:  # torch raises several kinds for truncated/garbage files
        raise UserError(f"checkpoint {path} is corrupt or unreadable ({type(e).__name__})",
                        "delete it and train again (without --resume)")
    if not isinstance(state, dict) or state.get("version") != VERSION or "model" not in state:
        raise UserError(f"checkpoint {path} is not a HeadSync renderer checkpoint (version {VERSION})",
                        "train the run again (without --resume)")
    if kind is not None and state.get("renderer") != kind:
        raise UserError(f"checkpoint {path} was made by the {state.get('renderer')!r} renderer, not {kind!r}",
                        f"resume it with --renderer {state.get('renderer')}, or train {kind!r} under another "
                        f"--run name")
    return state


def renderer_from_state(state: dict[str, Any], device: torch.device | str, path: Path | str = "checkpoint"
                        ) -> Renderer:
    """Rebuild the renderer a checkpoint ``state`` describes and load its weights."""
    cls = renderer_class(state["renderer"])
    cfg = from_table(cls.Config, state["renderer_config"], f"renderer.{state['renderer']}")
    meta = SubjectMeta.from_dict(state["meta"])
    renderer = cls.build(cfg, meta, torch.device(device))
    try:
        renderer.load_renderer_state(state["model"])
    except RuntimeError as e:
        raise UserError(f"{path} does not match the {state['renderer']!r} renderer ({str(e)[:200]})",
                        "train the run again")
    return renderer


def load_renderer(path: Path, device: torch.device | str = "cpu") -> tuple[Renderer, dict[str, Any]]:
    """A trained renderer for rendering, in eval mode, and its checkpoint's ``train`` table."""
    state = load_checkpoint(path, device)
    return renderer_from_state(state, device, path).eval(), state["train"]
