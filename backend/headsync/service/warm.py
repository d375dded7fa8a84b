"""The warm worker: one long-lived process that runs the service's short jobs (Blender's Preview Frame)
one after the other, ``python -m headsync.service.warm WORKSPACE KIND``.

A per-job worker (:mod:`.worker`) imports torch, OpenCV and MediaPipe and loads the model for every job,
which is most of a one-frame render. This process does it once: it imports what jobs of KIND (the kind
of the job it was started for) need (:func:`headsync.tasks.preload_warm`), then reads job ids from its
stdin, one a line, and runs each with :func:`.worker.run_job`, the very code of a per-job worker, so the
job's row, progress, outcome and log (its stdout and stderr point at ``logs/ID.log`` while it runs) are
written the same way. Between jobs :mod:`headsync.core.keep` holds the latest model, audio features and
hand detector; they are loaded again when their files change (a new checkpoint after more training). It
answers ``ID EXIT_CODE`` on its reply pipe (its original stdout) after each job.

Only the service talks to it, through those two pipes: it listens on no socket, and it runs only the jobs
the service put in its job store (validated on arrival like every job; ids are checked here too).

Stopping: SIGUSR1 stops the job running now (a cancel: it raises ``Cancelled`` at its next progress step,
as SIGTERM does in a per-job worker); SIGTERM does that and ends the process (at once when idle); the end
of stdin (the service closed the pipe: idle too long, stopping, or gone) ends it after the current job,
and so does the service's death (parent-death signal). The service side is :mod:`.executors.warm`.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from pathlib import Path

JOB_ID_RE = re.compile(r"[0-9a-f]{16}")  # the store's ids (store.new_id)
LOG_NAME = "warm-worker.log"  # its own output between jobs, under WORKSPACE/logs/


def _log(text: str) -> None:
    sys.stdout.write(f"{time.strftime('%H:%M:%S', time.gmtime())}Z [warm worker {os.getpid()}] {text}\n")
    sys.stdout.flush()


def _into(fd: int) -> None:
    """Point stdout and stderr at ``fd``."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python -m headsync.service.warm WORKSPACE KIND", file=sys.stderr)
        return 2
    workspace = Path(argv[1])
    state = {"stop": False, "busy": False, "exit": False}

    def on_usr1(signum, frame):  # noqa: ARG001 - stop the job running now
        state["stop"] = True

    def on_term(signum, frame):  # noqa: ARG001
        state["stop"] = state["exit"] = True
        if not state["busy"]:
            raise SystemExit(0)

    signal.signal(signal.SIGUSR1, on_usr1)
    signal.signal(signal.SIGTERM, on_term)
    from .worker import run_job, setup_process

    orphaned = setup_process()
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    own = os.dup(2)  # the service opened logs/warm-worker.log as stderr
    _into(own)

    from .. import tasks
    from ..core import keep
    from .store import Store

    t0 = time.monotonic()
    tasks.load_plugins()
    kinds = tasks.preload_warm([argv[2]])
    keep.enable()
    logs = Store(workspace).logs
    _log(f"ready in {time.monotonic() - t0:.1f} s for {', '.join(kinds) or 'no kind'}")
    while not (state["exit"] or orphaned()):
        line = sys.stdin.readline()
        if not line:
            break  # the service closed the pipe
        job_id = line.strip()
        if not JOB_ID_RE.fullmatch(job_id):
            _log(f"ignored a line that is not a job id: {line[:40]!r}")
            reply.write(f"{job_id[:16] or '-'} 2\n")
            continue
        state["stop"], state["busy"] = False, True
        fd = os.open(logs / f"{job_id}.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        t = time.monotonic()
        try:
            _into(fd)
            rc = run_job(job_id, workspace, lambda: state["stop"] or orphaned())
        finally:
            _into(own)
            os.close(fd)
            state["busy"] = False
        _log(f"job {job_id}: exit code {rc} after {time.monotonic() - t:.2f} s")
        reply.write(f"{job_id} {rc}\n")
    _log("exiting")
    return 0


if __name__ == "__main__":
    from .worker import _exit

    _exit(main(sys.argv))
