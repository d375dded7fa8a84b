"""Progress reporting for long commands: a terminal bar, JSON lines, or a callback (the service).

Stages call ``reporter.start(stage, total)``, ``reporter.advance(n)``, ``reporter.message(text)``.
The JSON-lines form is the contract in DESIGN.md::

    {"event":"progress","stage":"landmarks","done":120,"total":750}
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, TextIO


@dataclass
class Reporter:
    """Collects progress events and forwards them to a sink.

    ``sink`` receives dicts (``event``, ``stage``, ``done``, ``total``, ``message``, ``eta_s``).
    ``should_stop`` is polled by :meth:`check`; when it returns True the stage raises ``Cancelled``.
    """

    sink: Callable[[dict], None] | None = None
    should_stop: Callable[[], bool] | None = None
    min_interval_s: float = 0.2
    stage: str = ""
    done: int = 0
    total: int = 0
    step: int = 0  # index of the current step of a multi-step job (prepare's stages), 0-based
    steps: int = 0  # number of steps; 0 when the job is a single step
    phases: int = 1  # stages (``start`` calls) the current step runs one after another
    phase: int = -1  # index of the current one, -1 before the step's first ``start``
    _high: float = 0.0  # the largest overall fraction reported: progress never falls back
    _t0: float = field(default_factory=time.monotonic)
    _last_emit: float = 0.0

    def start(self, stage: str, total: int) -> None:
        """Begin a stage of ``total`` units (frames, iterations)."""
        self.stage, self.done, self.total = stage, 0, int(total)
        self.phase = min(self.phase + 1, self.phases - 1)
        self._t0 = time.monotonic()
        self._emit(force=True)

    def begin_step(self, index: int, count: int, phases: int = 1) -> None:
        """Enter step ``index`` of ``count`` (a stage of prepare), so events carry an overall fraction.
        ``phases``: how many stages (``start`` calls) the step runs in turn, each an equal share of it (the
        audio-visual encoder trains a discriminator, then the encoder: without this the bar fell from 99%
        back to 90% between them)."""
        self.step, self.steps = int(index), int(count)
        self.phases, self.phase = max(int(phases), 1), -1
        if self.step == 0:  # the first step of a (new) job: the demo runs several jobs on one reporter
            self._high = 0.0

    def overall(self) -> float | None:
        """Fraction of the whole job done, 0..1: finished steps plus the current one's share."""
        if self.steps <= 0:
            return None
        part = min(self.done / self.total, 1.0) if self.total > 0 else 0.0
        within = (max(self.phase, 0) + part) / self.phases
        self._high = max(self._high, min((self.step + within) / self.steps, 1.0))
        return self._high

    def advance(self, n: int = 1, **extra) -> None:
        """Mark ``n`` more units done; ``extra`` (loss, psnr, ...) rides along in the event."""
        self.done += n
        self._emit(force=self.done >= self.total, **extra)
        self.check()

    def set(self, done: int, **extra) -> None:
        """Set the absolute count (resumed training starts past zero)."""
        self.done = int(done)
        self._emit(force=self.done >= self.total, **extra)
        self.check()

    def message(self, text: str, level: str = "info") -> None:
        """A free-text line (warnings go here too, with ``level='warning'``)."""
        if self.sink:
            self.sink({"event": "message", "level": level, "stage": self.stage, "message": text})

    def check(self) -> None:
        """Raise :class:`Cancelled` if the job was asked to stop."""
        if self.should_stop is not None and self.should_stop():
            from .errors import Cancelled

            raise Cancelled(f"cancelled during {self.stage or 'start-up'}")

    def eta_s(self) -> float | None:
        if self.done <= 0 or self.total <= 0:
            return None
        rate = self.done / max(time.monotonic() - self._t0, 1e-6)
        return max(self.total - self.done, 0) / rate

    def _emit(self, force: bool = False, **extra) -> None:
        now = time.monotonic()
        if not self.sink or (not force and now - self._last_emit < self.min_interval_s):
            return
        self._last_emit = now
        ev = {"event": "progress", "stage": self.stage, "done": self.done, "total": self.total}
        overall = self.overall()
        if overall is not None:
            ev.update(step=self.step + 1, steps=self.steps, overall=round(overall, 4))
        eta = self.eta_s()
        if eta is not None:
            ev["eta_s"] = round(eta, 1)
        ev.update(extra)
        self.sink(ev)


def json_lines_sink(stream: TextIO | None = None) -> Callable[[dict], None]:
    """A sink that prints one JSON object per line (``--json-progress``); default: the current stdout."""

    def sink(ev: dict) -> None:
        out = stream or sys.stdout
        out.write(json.dumps(ev) + "\n")
        out.flush()

    return sink


def terminal_sink(stream: TextIO = sys.stderr) -> Callable[[dict], None]:
    """A sink that draws a one-line progress bar on a terminal (plain lines when not a tty)."""
    tty = stream.isatty()
    state = {"stage": None}

    def sink(ev: dict) -> None:
        if ev["event"] == "message":
            if tty and state["stage"]:
                stream.write("\n")
            stream.write(f"[{ev.get('level', 'info')}] {ev['message']}\n")
            state["stage"] = None
            stream.flush()
            return
        if ev["event"] != "progress":
            return
        done, total = ev["done"], max(ev["total"], 1)
        frac = min(done / total, 1.0)
        extras = " ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in ev.items()
            if k not in ("event", "stage", "done", "total", "eta_s", "step", "steps", "overall")
        )
        eta = f" eta {ev['eta_s']:.0f}s" if "eta_s" in ev else ""
        if "steps" in ev:
            extras = f"[step {ev['step']}/{ev['steps']}] {extras}"
        if tty:
            bar = "#" * int(frac * 30)
            stream.write(f"\r{ev['stage']:>14} [{bar:<30}] {done}/{total}{eta} {extras}\033[K")
            if done >= total:
                stream.write("\n")
        elif done >= total or state["stage"] != ev["stage"]:
            stream.write(f"{ev['stage']}: {done}/{total}{eta} {extras}\n")
        state["stage"] = ev["stage"]
        stream.flush()

    return sink


def silent() -> Reporter:
    """A reporter that discards everything (tests, library use)."""
    return Reporter(sink=None)
