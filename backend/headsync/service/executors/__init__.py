"""Where the service's jobs run: an executor starts a job's worker and watches it (see docs/cluster.md).

The scheduler (:mod:`..scheduler`) owns the queue and the job store; an executor only turns a ``running``
job into a :class:`Run` it can poll, ask to stop and kill. Every executor runs the same
:func:`headsync.service.worker.run_job`, which records progress, logs and the outcome in the job store in
the workspace, so the API (and the add-on) cannot tell them apart.

- ``local`` (:mod:`.local`, the default): one subprocess per job on this machine, except the jobs whose
  kind runs warm (Preview Frame), which its long-lived warm worker runs one after the other (:mod:`.warm`).
- ``ray`` (:mod:`.ray`): one Ray task per job on a Ray cluster whose nodes see the workspace.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from ...core.errors import UserError

EXECUTORS = ("local", "ray")


class Run(Protocol):
    """One started job's worker, as the scheduler sees it."""

    pid: int | None        # its process id once known (temp-file names carry it), else None

    def poll(self) -> int | None:
        """None while it runs, else its exit code (negative: killed by that signal)."""

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for it to end; True when it has."""

    def stop(self) -> None:
        """Ask it to stop soon (it records cancelled/failed itself)."""

    def kill(self) -> None:
        """End it now, and whatever it started."""

    def died(self, rc: int) -> str:
        """Why it ended without recording an outcome (exit code ``rc``), for the job's error."""

    def close(self) -> None:
        """Release what watching it held (its log file)."""


class Executor(Protocol):
    name: str

    def launch(self, job: dict, workspace: Path, log_path: Path) -> Run:
        """Start the worker of ``job`` (already ``running`` in the store); raises OSError if it cannot."""

    def capacity(self) -> int | None:
        """Jobs it can run at once when the user does not say (``--max-jobs``); None: the service's default."""

    def close(self) -> None:
        """Disconnect (the scheduler has stopped every run)."""

    # optional: ``prewarm(workspace, kind)`` gets ready for a job of ``kind`` expected soon (the local
    # executor starts its warm worker; see Scheduler.prewarm)


def make_executor(name: str = "local", address: str | None = None, env: dict[str, str] | None = None) -> Executor:
    """The executor called ``name`` (``local`` or ``ray``; ``address``: the Ray cluster's, e.g. ``HOST:6379``).

    Raises :class:`UserError` for an unknown name, or for ``ray`` when Ray is not installed or the cluster
    cannot be reached.
    """
    if name == "local":
        if address:
            raise UserError("--ray-address is for --executor ray", "drop --ray-address, or add --executor ray")
        from .local import LocalExecutor

        return LocalExecutor(env)
    if name == "ray":
        from .ray import RayExecutor

        return RayExecutor(address, env)
    raise UserError(f"unknown executor {name!r}", f"use one of {', '.join(EXECUTORS)}")
