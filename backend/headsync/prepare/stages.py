"""The stage protocol shared by every preparation step.

A stage module exposes ``NAME`` (manifest key), ``VERSION`` (bumped when its output changes), a config
dataclass ``Config`` (its preset table is ``[NAME]``), ``REQUIRES`` (stages it reads), and
``run(subject, cfg, reporter) -> dict`` which writes its outputs atomically and returns info to record.
:func:`run_stage` skips a stage already done with the same parameters and version.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable

from ..core.config import as_dict
from ..core.progress import Reporter
from ..subject.folder import Subject


@dataclass(frozen=True)
class Stage:
    """A stage declared as an object, for modules that hold more than one stage (``tracking``)."""

    NAME: str
    VERSION: int
    REQUIRES: tuple[str, ...]
    Config: type
    run: Callable[..., dict]


def run_stage(module: ModuleType | Stage, subject: Subject, cfg: Any, reporter: Reporter, force: bool = False) -> bool:
    """Run one stage unless it is already done with ``cfg``. Returns True when it ran.

    Stages downstream of a re-run stage are invalidated through their recorded ``inputs`` (the
    versions and parameter hashes of what they read), so a changed crop redoes the landmarks.
    """
    params = {**as_dict(cfg), "inputs": _input_stamps(subject, module.REQUIRES)}
    if not force and subject.stage_done(module.NAME, params, module.VERSION):
        reporter.message(f"{module.NAME}: up to date, reused")
        return False
    subject.require(*module.REQUIRES)
    t0 = time.perf_counter()
    info = module.run(subject, cfg, reporter) or {}
    subject.mark_done(module.NAME, params, module.VERSION, time.perf_counter() - t0, info)
    return True


def _input_stamps(subject: Subject, names: tuple[str, ...]) -> dict[str, Any]:
    stages = subject.load().get("stages", {})
    return {n: [stages.get(n, {}).get("version"), _digest(stages.get(n, {}).get("params"))] for n in names}


def _digest(obj: Any) -> str:
    import hashlib
    import json

    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]
