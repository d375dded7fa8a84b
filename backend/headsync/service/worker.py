"""The worker: one subprocess per job, ``python -m headsync.service.worker JOB_ID WORKSPACE``.

It runs :func:`headsync.tasks.run` (the very function the command line calls) with a reporter whose
events go into the job's row (progress) and its log file (stdout/stderr, opened by the scheduler), then
records the outcome. A crash here cannot take the service down; a worker that dies without recording
an outcome is noticed by the scheduler, which records one for it.

Stopping: SIGTERM sets a flag that the reporter's ``should_stop`` sees at the next progress step, so the
stage raises :class:`~headsync.core.errors.Cancelled` and its atomic writes clean up after themselves. The row's
``stop_reason`` says why: ``cancel`` (the user) or ``shutdown`` (the service is stopping). The worker also
stops when the service process dies (``PR_SET_PDEATHSIG`` on Linux, and a check of the parent's PID).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

EXIT_DISK_FULL = 75


def _set_parent_death_signal() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except Exception:  # pragma: no cover - best effort
        pass


def _log(text: str) -> None:
    ts = time.strftime("%H:%M:%S", time.gmtime())
    sys.stdout.write(f"{ts}Z {text}\n")
    sys.stdout.flush()


def classify(exc: BaseException, kind: str) -> dict[str, str]:
    """A job error {message, hint} for an exception raised by a task."""
    from ..core.errors import UserError

    text = str(exc)
    if isinstance(exc, UserError):
        return {"message": exc.message, "hint": exc.hint}
    found = os_error(exc)
    if found is not None:
        return found
    low = text.lower()
    if "out of memory" in low and ("cuda" in low or type(exc).__name__ == "OutOfMemoryError"):
        return {"message": f"GPU out of memory: {text.splitlines()[0] if text else ''}",
                "hint": "use a smaller preset, close other programs using the GPU, or run on the CPU"}
    if "cuda" in low and any(s in low for s in ("not available", "not compiled", "no cuda gpus",
                                                 "driver", "no kernel image", "cuda requested")):
        return {"message": f"cuda requested but not available ({text.splitlines()[0] if text else type(exc).__name__})",
                "hint": "install the CUDA build of PyTorch and check the GPU driver (nvidia-smi), "
                        "or use the CPU (device cpu / a CPU-sized preset)"}
    if isinstance(exc, MemoryError):
        return {"message": "out of memory", "hint": "use a smaller preset or close other programs"}
    first = text.splitlines()[0] if text else ""
    return {"message": f"internal error in {kind}: {type(exc).__name__}: {first}"[:2000],
            "hint": "see the job log (GET /api/v1/jobs/ID/log) and report it with the log attached"}


def _chain(exc: BaseException):
    e: BaseException | None = exc
    for _ in range(5):
        if e is None:
            return
        yield e
        e = e.__cause__ or e.__context__


def os_error(exc: BaseException) -> dict[str, str] | None:
    """{message, hint} for a file system failure that is not a bug: disk full, permission denied, a
    read-only file system; None for anything else. Each says what happened and where."""
    if is_disk_full(exc):
        return {"message": f"disk full: {exc}",
                "hint": "free some space on the disk holding the workspace (or the output folder), "
                        "then submit the job again"}
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM):
            where = e.filename or ""
            return {"message": f"permission denied: cannot write {where}".rstrip() if where else
                               f"permission denied: {e}",
                    "hint": "make the workspace (and the output folder) writable by the user running "
                            "headsync, or choose another workspace"}
        if isinstance(e, OSError) and e.errno == errno.EROFS:
            where = e.filename or ""
            return {"message": f"read-only file system: cannot write {where}".rstrip(),
                    "hint": "the workspace (or the output folder) is on a read-only disk; choose a writable "
                            "workspace"}
    return None


def is_disk_full(exc: BaseException) -> bool:
    e: BaseException | None = exc
    for _ in range(5):
        if e is None:
            break
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        s = str(e).lower()
        if "no space left on device" in s or "database or disk is full" in s or "disk quota exceeded" in s:
            return True
        e = e.__cause__ or e.__context__
    return False


def resumable_kind(kind: str) -> bool:
    """Kinds that take ``resume`` (train): an interrupted job of theirs can continue."""
    from .. import tasks

    t = tasks.TASKS.get(kind)
    return bool(t and t.resumable)


def checkpoint_of(kind: str, params: dict[str, Any]) -> Path | None:
    """The file a resumed job of ``kind`` continues from (its task's ``checkpoint``), or None."""
    from .. import tasks

    t = tasks.TASKS.get(kind)
    return t.checkpoint(params) if t and t.checkpoint else None


def can_resume(kind: str, params: dict[str, Any]) -> bool:
    """True when an interrupted job of ``kind`` has a checkpoint to continue from."""
    if not resumable_kind(kind):
        return False
    ckpt = checkpoint_of(kind, params)
    return ckpt is None or ckpt.is_file()


def resume_hint(kind: str, params: dict[str, Any]) -> str:
    return "resume it: POST /api/v1/jobs/ID/resume" if can_resume(kind, params) else "submit the job again"


STOP_POLL_S = 1.0  # how often a worker reads its row's stop_reason (the way a cancel reaches a remote one)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python -m headsync.service.worker JOB_ID WORKSPACE", file=sys.stderr)
        return 2
    job_id, workspace = argv[1], Path(argv[2])
    stop = {"flag": False}

    def on_term(signum, frame):  # noqa: ARG001
        stop["flag"] = True

    signal.signal(signal.SIGTERM, on_term)
    orphaned = setup_process()

    def stopped() -> bool:
        if orphaned():
            stop["flag"] = True
        return stop["flag"]

    return run_job(job_id, workspace, stopped)


def setup_process() -> Callable[[], bool]:
    """What every worker process does first (this one and the warm worker, service/warm.py): die with the
    service (parent-death signal), leave Ctrl-C to the service, lower its CPU priority. Returns a check
    that is True once the service is gone."""
    parent = int(os.environ.get("HEADSYNC_SERVICE_PID", "0") or 0)
    _set_parent_death_signal()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the service's terminal is the service's
    nice = int(os.environ.get("HEADSYNC_WORKER_NICE", "5") or 0)
    if nice:
        try:
            os.nice(nice)  # keep the service (and Blender) responsive while a job eats the CPU
        except OSError:
            pass
    return lambda: bool(parent) and os.getppid() != parent


def run_job(job_id: str, workspace: Path, stopped: Callable[[], bool]) -> int:
    """Run the ``running`` job ``job_id`` of the store in ``workspace`` here and record its outcome; the
    exit code of a worker (0: recorded). ``stopped()`` is this process's own reason to stop (a signal, a
    dead parent); a ``stop_reason`` written into the job's row (cancel, shutdown) also stops it, read at
    most every :data:`STOP_POLL_S` seconds, so a worker on another machine stops the same way."""
    from .. import tasks
    from ..core.errors import Cancelled
    from ..core.progress import Reporter
    from . import cleanup, jobspec
    from .store import Store, jsonsafe

    tasks.load_plugins()
    store = Store(workspace)
    job = store.get(job_id)
    if job is None or job["state"] != "running":
        print(f"job {job_id} is not running here (state {job and job['state']})", file=sys.stderr)
        return 3
    kind = job["kind"]
    _log(f"job {job_id}: {kind} {json.dumps(job['params'])} (worker pid {os.getpid()})")

    stop = {"flag": False, "polled": float("-inf")}  # the first check reads the row

    def should_stop() -> bool:
        if stopped():
            stop["flag"] = True
        elif time.monotonic() - stop["polled"] >= STOP_POLL_S:
            stop["polled"] = time.monotonic()
            try:
                stop["flag"] = bool((store.get(job_id) or {}).get("stop_reason"))
            except Exception:  # noqa: BLE001 - a busy database: ask again at the next step
                pass
        return stop["flag"]

    state = {"stage": None, "message": None, "last_log": 0.0, "progress": dict(job["progress"])}

    def sink(ev: dict[str, Any]) -> None:
        prog = state["progress"]
        if ev.get("event") == "progress":
            done, total = int(ev.get("done", 0)), int(ev.get("total", 0))
            stage_changed = ev.get("stage") != prog.get("stage")
            prog.update(stage=ev.get("stage"), done=done, total=total,
                        # the whole job's fraction when the job has steps (prepare), else the stage's
                        fraction=(ev["overall"] if "overall" in ev else
                                  round(min(max(done / total, 0.0), 1.0), 4) if total > 0 else None),
                        eta_s=ev.get("eta_s"))
            extras = {k: v for k, v in ev.items() if k not in ("event", "stage", "done", "total", "eta_s", "overall")}
            prog["extra"] = jsonsafe(extras)  # loss, psnr, ... as the stage reports them
            now = time.monotonic()
            if stage_changed or done >= total or now - state["last_log"] >= 2.0:
                state["last_log"] = now
                eta = f" eta {ev['eta_s']:.0f}s" if isinstance(ev.get("eta_s"), (int, float)) else ""
                ex = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in extras.items())
                _log(f"[{ev.get('stage')}] {done}/{total}{eta} {ex}".rstrip())
        elif ev.get("event") == "message":
            prog["message"] = str(ev.get("message"))[:500]
            _log(f"{ev.get('level', 'info')}: {ev.get('message')}")
        try:
            store.set_progress(job_id, jsonsafe(prog))
        except Exception as e:  # noqa: BLE001 - progress is best effort: never fail a job over it
            _log(f"could not record progress: {e!r}")

    reporter = Reporter(sink=sink, should_stop=should_stop)
    error: dict[str, str] | None = None
    artifacts: dict[str, Any] = {}
    outcome = "failed"
    try:
        reporter.check()
        jobspec.check_writes(workspace, kind, job["params"])  # links may have changed since submission
        artifacts = tasks.run(kind, job["params"], reporter) or {}
        artifacts = jsonsafe(artifacts)
        outcome = "succeeded"
    except BaseException as exc:  # noqa: BLE001 - everything becomes a job outcome
        row = {}
        try:
            row = store.get(job_id) or {}
        except Exception:  # noqa: BLE001 - the store is unreadable: classify without it
            pass
        # a stop asked for (signal or row) wins over what the stage raised on its way out
        if stop["flag"] or stopped() or row.get("stop_reason") or isinstance(exc, Cancelled):
            if row.get("stop_reason") == "cancel":
                outcome, error = "cancelled", {"message": "cancelled by request", "hint": ""}
            else:
                outcome = "failed"
                error = {"message": "interrupted: the service stopped while the job was running",
                         "hint": resume_hint(kind, job["params"])}
            _log(f"stopped: {exc!r}")
        elif isinstance(exc, jobspec.ApiError):
            error = {"message": exc.message, "hint": exc.hint}
            _log("refused: " + error["message"])
        else:
            error = classify(exc, kind)
            _log("failed: " + error["message"])
            traceback.print_exc(file=sys.stdout)
            sys.stdout.flush()
    try:
        if outcome != "succeeded":
            for line in cleanup.sweep_temp([Path(job["params"]["subject"])], os.getpid(), inside=workspace):
                _log(f"cleanup: {line}")
            for line in cleanup.remove_owned(job.get("owned") or [], workspace):
                _log(f"cleanup: {line}")
        prog = state["progress"]
        if outcome == "succeeded":
            prog.update(fraction=1.0, eta_s=0)
        resumable = outcome != "succeeded" and can_resume(kind, job["params"])
        store.transition(job_id, ["running"], outcome, progress=jsonsafe(prog), error=error, artifacts=artifacts,
                         resumable=int(resumable))
        _log(f"job {job_id}: {outcome}")
    except BaseException as exc:  # noqa: BLE001 - cannot record (disk full?): the scheduler will
        print(f"could not record the outcome of job {job_id}: {exc!r}", file=sys.stderr)
        return EXIT_DISK_FULL if is_disk_full(exc) else 1
    return 0


def _exit(code: int) -> None:
    """Leave without the interpreter's teardown: the outcome is recorded, and a task's leftover non-daemon
    thread (a prefetcher blocked on a queue, say) must not keep a finished worker alive until SIGKILL."""
    import gc

    gc.collect()  # close files the task left open (their buffers are flushed on close)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            pass
    os._exit(code)


if __name__ == "__main__":
    _exit(main(sys.argv))
