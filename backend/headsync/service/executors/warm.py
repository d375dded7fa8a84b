"""The local executor's warm worker, service side: the long-lived process (:mod:`headsync.service.warm`)
that runs the jobs whose kind says they run warm (a render of a frame range: Blender's Preview Frame).

It is started on the first such job, handed one job at a time through its stdin, and answers on its
stdout; both are pipes of this process, nothing else can reach it. Each job it runs is a :class:`WarmRun`,
which the scheduler polls, stops and kills like a per-job worker, so states, progress, logs and cancel are
the same. Killing a run kills the warm worker (the next job starts a new one). It is closed after
``idle_s`` seconds without a job, and when the service stops; it dies with the service.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from .local import died_reason, kill_group, worker_env

#: Seconds the warm worker waits for the next job before it is closed (``$HEADSYNC_WARM_IDLE_S``; 0: none).
DEFAULT_IDLE_S = 600.0


class WarmRun:
    """One job in the warm worker (the scheduler's :class:`~headsync.service.executors.Run`)."""

    def __init__(self, job_id: str, proc: subprocess.Popen):
        self.job_id, self._proc = job_id, proc
        self.pid: int | None = proc.pid
        self.rc: int | None = None
        self._done = threading.Event()

    def finish(self, rc: int) -> None:
        if self.rc is None:
            self.rc = rc
            self._done.set()

    def poll(self) -> int | None:
        return self.rc

    def wait(self, timeout: float) -> bool:
        return self._done.wait(timeout)

    def stop(self) -> None:
        if self.rc is None:
            try:
                self._proc.send_signal(signal.SIGUSR1)  # this job only; the process stays warm
            except (ProcessLookupError, OSError):
                pass

    def kill(self) -> None:
        kill_group(self._proc.pid)  # the warm worker and anything the job started

    def died(self, rc: int) -> str:
        return died_reason(rc)

    def close(self) -> None:
        pass  # the process is the warm worker's, not this job's


class WarmWorker:
    """Starts the warm worker when needed, feeds it jobs, reads its answers, closes it when idle."""

    def __init__(self, env: dict[str, str] | None = None, idle_s: float = DEFAULT_IDLE_S):
        self.env, self.idle_s = env, float(idle_s)
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._workspace: Path | None = None
        self._run: WarmRun | None = None
        self._idle: threading.Timer | None = None

    def launch(self, job: dict, workspace: Path) -> WarmRun | None:
        """Hand ``job`` to the warm worker (started first if none runs); None when it is busy with another
        job (the caller runs this one in its own process). Raises OSError if it cannot be started."""
        with self._lock:
            if self._run is not None and self._run.rc is None:
                return None
            if self._idle is not None:
                self._idle.cancel()
                self._idle = None
            for attempt in (0, 1):
                if self._proc is None or self._proc.poll() is not None or self._workspace != Path(workspace):
                    self._close_locked()
                    self._spawn(Path(workspace), job["kind"])
                run = WarmRun(job["id"], self._proc)
                try:
                    self._proc.stdin.write(f"{job['id']}\n".encode())
                    self._proc.stdin.flush()
                except OSError:  # it exited meanwhile (killed, crashed): start a new one
                    kill_group(self._proc.pid)
                    self._proc = None
                    if attempt:
                        raise
                    continue
                self._run = run
                return run
        return None

    def prewarm(self, workspace: Path, kind: str) -> None:
        """Start the warm worker for jobs of ``kind`` now, unless one runs: the job expected soon (a Preview
        Frame after New Shot) finds torch imported. It is closed after ``idle_s`` if none comes."""
        with self._lock:
            if self._run is not None and self._run.rc is None:
                return
            if self._proc is not None and self._proc.poll() is None and self._workspace == Path(workspace):
                return
            self._close_locked()
            self._spawn(Path(workspace), kind)
            if self._idle is not None:
                self._idle.cancel()
            self._arm_idle()

    def _spawn(self, workspace: Path, kind: str) -> None:
        logs = workspace / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        from ..warm import LOG_NAME

        with open(logs / LOG_NAME, "ab") as logf:
            proc = subprocess.Popen(
                [sys.executable, "-m", "headsync.service.warm", str(workspace), kind],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=logf, env=worker_env(self.env),
                cwd=str(workspace), start_new_session=True, close_fds=True,
            )
        self._proc, self._workspace = proc, workspace
        threading.Thread(target=self._read, args=(proc,), name="headsync-warm-reader", daemon=True).start()

    def _read(self, proc: subprocess.Popen) -> None:
        """Answers ``ID RC`` finish their run; the end of the pipe (the process exited) finishes the run
        it had, with its exit code (negative: killed by that signal)."""
        for line in proc.stdout:
            parts = line.decode("ascii", "replace").split()
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                continue
            with self._lock:
                if self._run is not None and self._run.job_id == parts[0] and self._run._proc is proc:
                    self._run.finish(int(parts[1]))
                    self._arm_idle()
        rc = proc.wait()
        with self._lock:
            if self._run is not None and self._run._proc is proc:
                self._run.finish(rc)  # gone without answering: the scheduler says why (died)
            if self._proc is proc:
                self._proc = None

    def _arm_idle(self) -> None:
        if self.idle_s > 0:
            self._idle = threading.Timer(self.idle_s, self._on_idle)
            self._idle.daemon = True
            self._idle.start()

    def _on_idle(self) -> None:
        with self._lock:
            if self._run is None or self._run.rc is not None:
                self._close_locked()

    def _close_locked(self, wait_s: float = 0.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.stdin.close()  # the worker exits at the end of its stdin
        except OSError:
            pass
        if wait_s > 0:
            try:
                proc.wait(wait_s)
            except subprocess.TimeoutExpired:
                pass
        if proc.poll() is None and wait_s > 0:
            kill_group(proc.pid)

    def close(self) -> None:
        """Close the warm worker (the service is stopping; the scheduler has stopped its job)."""
        with self._lock:
            if self._idle is not None:
                self._idle.cancel()
            self._close_locked(wait_s=5.0)


def idle_seconds(env: dict[str, str] | None = None) -> float:
    """``$HEADSYNC_WARM_IDLE_S`` (of ``env``, default this process's), else :data:`DEFAULT_IDLE_S`."""
    value = (env if env is not None else os.environ).get("HEADSYNC_WARM_IDLE_S")
    return float(value) if value not in (None, "") else DEFAULT_IDLE_S
