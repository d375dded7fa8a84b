"""Reading a torso part's weights file (written by :mod:`headsync.training.torso`): one record per part,
``{"side", "state", "info", ...shape}``; a missing or damaged file is a :class:`UserError` saying what to run."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from ...core.errors import UserError


def load(path: Path, part: str, build: Callable[[dict], nn.Module], device: torch.device | str = "cpu") -> nn.Module:
    """The module ``build(record)`` with the record's weights, ``.side`` set, in eval mode on ``device``."""
    if not path.is_file():
        raise UserError(f"no torso {part} at {path}",
                        f"run `headsync torso --subject DIR` with a preset whose [torso] mode uses the {part}")
    try:
        d = torch.load(path, map_location=device, weights_only=True)
        net = build(d)
        net.load_state_dict(d["state"])
        net.side = int(d["side"])
    except (KeyError, RuntimeError, OSError, TypeError, EOFError, pickle.UnpicklingError) as e:
        raise UserError(f"the torso {part} {path} is unreadable ({e})", "run `headsync torso` again")
    return net.to(device).eval()
