"""The ``local`` executor: each job in its own subprocess ``python -m headsync.service.worker JOB WS``
(a job whose kind runs warm, Preview Frame, in the warm worker of :mod:`.warm` when it is free).

The worker runs in a new session (its own process group), so a stop or kill reaches anything it started
(ffmpeg, ...); it dies with the service (its parent-death signal).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from .warm import WarmRun

PACKAGE_PARENT = str(Path(__file__).resolve().parents[3])  # the folder holding the headsync package


def signal_name(n: int) -> str:
    try:
        return signal.Signals(n).name
    except ValueError:
        return f"signal {n}"


def kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal the worker's process group (the worker and anything it started, e.g. ffmpeg)."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError, OSError):
        pass


def died_reason(rc: int) -> str:
    """Why a worker that recorded no outcome ended, from its exit code (negative: the signal)."""
    return f"worker died: killed by signal {-rc} ({signal_name(-rc)})" if rc < 0 else f"worker died: exit code {rc}"


def worker_env(base: dict[str, str] | None) -> dict[str, str]:
    """The environment of a worker: ``base`` (default: the service's) with this package first on the path."""
    env = dict(base if base is not None else os.environ)
    env["PYTHONPATH"] = PACKAGE_PARENT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["HEADSYNC_SERVICE_PID"] = str(os.getpid())
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class LocalRun:
    def __init__(self, proc: subprocess.Popen, logf: IO[bytes]):
        self.proc, self.logf = proc, logf
        self.pid: int | None = proc.pid

    def poll(self) -> int | None:
        return self.proc.poll()

    def wait(self, timeout: float) -> bool:
        try:
            self.proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def stop(self) -> None:
        try:
            self.proc.send_signal(signal.SIGTERM)
        except (ProcessLookupError, OSError):
            pass

    def kill(self) -> None:
        kill_group(self.proc.pid)

    def died(self, rc: int) -> str:
        return died_reason(rc)

    def close(self) -> None:
        try:
            self.logf.close()
        except OSError:
            pass
        kill_group(self.proc.pid)  # children it left behind (ffmpeg, ...)


class LocalExecutor:
    """Jobs in subprocesses of this machine: each in its own, except those whose kind runs warm (a Preview
    Frame), which go to the warm worker (:mod:`.warm`) when it is free (``$HEADSYNC_WARM_IDLE_S`` 0: never)."""

    name = "local"

    def __init__(self, env: dict[str, str] | None = None):
        from .warm import WarmWorker, idle_seconds

        self.env = env
        idle_s = idle_seconds(env)
        self.warm = WarmWorker(env, idle_s) if idle_s > 0 else None

    def launch(self, job: dict, workspace: Path, log_path: Path) -> "LocalRun | WarmRun":
        if self.warm is not None and runs_warm(job):
            run = self.warm.launch(job, workspace)
            if run is not None:
                return run
        logf = open(log_path, "ab")
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "headsync.service.worker", job["id"], str(workspace)],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, env=worker_env(self.env),
                cwd=str(workspace), start_new_session=True, close_fds=True,
            )
        except OSError:
            logf.close()
            raise
        return LocalRun(proc, logf)

    def capacity(self) -> int | None:
        return None

    def prewarm(self, workspace: Path, kind: str) -> None:
        """Get the warm worker ready for a job of ``kind`` expected soon (none when it is turned off)."""
        if self.warm is not None:
            self.warm.prewarm(workspace, kind)

    def close(self) -> None:
        if self.warm is not None:
            self.warm.close()


def runs_warm(job: dict) -> bool:
    """The job's kind says it runs in the warm worker (tasks.Task.warm)."""
    from ... import tasks

    task = tasks.TASKS.get(job.get("kind"))
    return task is not None and task.runs_warm(job.get("params") or {})
