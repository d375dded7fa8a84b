"""The queue: dispatches queued jobs to workers, watches them, stops them.

Where a worker runs is the executor's business (:mod:`.executors`: a local subprocess, or a Ray task).
One thread owns every worker (it starts them, so a local worker's parent-death signal is tied to a
thread that lives as long as the service). Each tick (at most every 0.2 s, at once when woken):

1. reap workers that exited: a job still ``running`` in the store is failed with the reason
   (``worker died: killed by signal 9 (SIGKILL)``, as the executor words it), or ``cancelled`` when a
   cancel was asked for;
   their half-written files are swept (:mod:`.cleanup`);
2. SIGKILL workers that did not stop within the grace period after a cancel;
3. start queued jobs, oldest first, while fewer than ``max_jobs`` run (one GPU job at a time by
   default) and never two jobs of the same subject at once, except jobs that only read it (renders).

On start, :meth:`recover` fails the jobs a previous service left ``running`` (killing their orphaned
workers, if any): a train job is marked resumable.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from . import cleanup
from .executors import Executor, Run
from .executors.local import LocalExecutor, kill_group
from .store import Store, now_iso
from .worker import EXIT_DISK_FULL, can_resume, os_error, resume_hint

log = logging.getLogger("headsync.service")


@dataclass
class Worker:
    job_id: str
    run: Run
    kind: str = ""
    subject: str = ""
    kill_at: float | None = None  # monotonic deadline for SIGKILL after a stop request


def _is_our_worker(pid: int, job_id: str) -> bool:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"headsync.service.worker" in cmd and job_id.encode() in cmd


class Scheduler:
    def __init__(self, store: Store, workspace: Path, max_jobs: int = 1, grace_s: float = 5.0,
                 min_free_mb: float = 64.0, env: dict[str, str] | None = None, executor: Executor | None = None):
        self.store = store
        self.executor: Executor = executor or LocalExecutor(env)
        self.workspace = Path(workspace)
        self.max_jobs = max(1, int(max_jobs))
        self.grace_s = float(grace_s)
        self.min_free_mb = float(min_free_mb)
        self.env = env
        self.workers: dict[str, Worker] = {}
        self._unrecorded: list[Worker] = []  # exited workers whose outcome could not be written yet
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- life --------------------------------------------------------------------------------
    def start(self) -> None:
        self.recover()
        self._thread = threading.Thread(target=self._loop, name="headsync-scheduler", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - the loop must go on (e.g. a busy database)
                log.exception("scheduler tick failed")
            self._wake.wait(0.2)
            self._wake.clear()

    def stop(self) -> None:
        """Stop dispatching; stop running workers (SIGTERM, then SIGKILL after the grace period)."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            workers = list(self.workers.values())
        for w in workers:
            try:
                self.store.set_fields(w.job_id, stop_reason="shutdown")
            except Exception:  # noqa: BLE001
                pass
            w.run.stop()
        deadline = time.monotonic() + self.grace_s
        for w in workers:
            if not w.run.wait(max(deadline - time.monotonic(), 0.05)):
                w.run.kill()
                w.run.wait(5)
        self.reap(shutting_down=True)
        self.executor.close()

    # ---- recovery ------------------------------------------------------------------------------
    def recover(self) -> None:
        """Fail the jobs a previous service left running (it died, or was killed)."""
        for job in self.store.running():
            pid = job.get("pid")
            if pid and _is_our_worker(pid, job["id"]):
                kill_group(pid)
                for _ in range(100):
                    if not _is_our_worker(pid, job["id"]):
                        break
                    time.sleep(0.05)
            self._cleanup(job, pid)
            resumable = can_resume(job["kind"], job["params"])
            self.store.transition(job["id"], ["running"], "failed", resumable=int(resumable), error={
                "message": "interrupted: the service stopped while the job was running",
                "hint": resume_hint(job["kind"], job["params"]),
            })
            self._append_log(job["id"], "service restarted: the job was running and is marked failed")

    # ---- the tick ------------------------------------------------------------------------------
    def tick(self) -> None:
        self.reap()
        now = time.monotonic()
        with self._lock:
            overdue = [w for w in self.workers.values() if w.kill_at is not None and now >= w.kill_at]
        for w in overdue:
            self._append_log(w.job_id, f"did not stop within {self.grace_s:g}s: killed")
            w.run.kill()
            w.kill_at = None
        if not self._stopping.is_set():
            self.dispatch()

    def reap(self, shutting_down: bool = False) -> None:
        with self._lock:
            done = [w for w in self.workers.values() if w.run.poll() is not None]
            for w in done:
                del self.workers[w.job_id]
            done += self._unrecorded
            self._unrecorded = []
        for w in done:
            try:
                self._reaped(w, shutting_down)
            except Exception:  # noqa: BLE001 - e.g. the disk is full: try again at the next tick
                log.exception("could not record the end of job %s; will retry", w.job_id)
                with self._lock:
                    self._unrecorded.append(w)

    def _reaped(self, w: Worker, shutting_down: bool) -> None:
        rc = w.run.poll()
        w.run.close()
        job = self.store.get(w.job_id)
        if job is None:
            return
        if job["state"] == "running":
            if rc == EXIT_DISK_FULL:
                reason = "disk full: the worker could not record its result"
            else:
                reason = w.run.died(rc if rc is not None else -1)
            resumable = can_resume(job["kind"], job["params"])
            hint = resume_hint(job["kind"], job["params"])
            if job.get("stop_reason") == "cancel":
                state, error = "cancelled", {"message": f"cancelled by request ({reason})", "hint": ""}
            elif job.get("stop_reason") == "shutdown" or shutting_down:
                state, error = "failed", {
                    "message": f"interrupted: the service stopped while the job was running ({reason})",
                    "hint": hint}
            else:
                state = "failed"
                error = {"message": reason,
                         "hint": ("free some space on the workspace's disk" if rc == EXIT_DISK_FULL else
                                  "see the job log; " + hint)}
            self.store.transition(w.job_id, ["running"], state, error=error, resumable=int(resumable))
            self._append_log(w.job_id, f"{error['message']} -> {state}")
        job = self.store.get(w.job_id) or job
        if job["state"] != "succeeded":
            self._cleanup(job, job.get("pid") or w.run.pid)  # the row has the last attempt's (a remote one)

    def _cleanup(self, job: dict, pid: int | None) -> None:
        try:
            roots = [Path(job["params"]["subject"])]
            out = job["params"].get("out")
            if out:
                roots.append(Path(out).parent)
            for line in cleanup.sweep_temp(roots, pid, inside=self.workspace):
                self._append_log(job["id"], f"cleanup: {line}")
            for line in cleanup.remove_owned(job.get("owned") or [], self.workspace):
                self._append_log(job["id"], f"cleanup: {line}")
        except Exception:  # noqa: BLE001
            log.exception("cleanup of job %s failed", job.get("id"))

    def dispatch(self) -> None:
        with self._lock:
            slots = self.max_jobs - len(self.workers)
            # subject -> True while only jobs that read it run there (another such job may join them)
            busy: dict[str, bool] = {}
            for w in self.workers.values():
                busy[w.subject] = busy.get(w.subject, True) and _reads_subject(w.kind)
        if slots <= 0:
            return
        for job in self.store.queued():
            if slots <= 0 or self._stopping.is_set():
                break
            if job["subject"] in busy and not (busy[job["subject"]] and _reads_subject(job["kind"])):
                continue
            if self._start(job):
                slots -= 1
                busy[job["subject"]] = busy.get(job["subject"], True) and _reads_subject(job["kind"])

    def _start(self, job: dict) -> bool:
        job_id = job["id"]
        try:
            free_mb = shutil.disk_usage(self.workspace).free / 2**20
        except OSError:
            free_mb = float("inf")
        owned = [p for p in job.get("owned") or [] if not os.path.lexists(p)]
        if not self.store.transition(job_id, ["queued"], "running", started=now_iso(), owned=owned):
            return False  # cancelled meanwhile
        if free_mb < self.min_free_mb:
            self.store.transition(job_id, ["running"], "failed", error={
                "message": f"disk full: only {free_mb:.0f} MiB free in the workspace {self.workspace}",
                "hint": f"free some space (at least {self.min_free_mb:.0f} MiB), then submit the job again"})
            return False
        log_path = self.store.log_path(job_id)
        try:
            run = self.executor.launch(job, self.workspace, log_path)
        except Exception as e:  # noqa: BLE001 - OSError here, anything from a cluster: never stay running
            known = os_error(e)
            self.store.transition(job_id, ["running"], "failed", error=(
                {"message": f"could not start a worker: {known['message']}", "hint": known["hint"]} if known else
                {"message": f"could not start a worker: {e}", "hint": "see the service's output"}))
            return False
        if run.pid is not None:
            self.store.set_fields(job_id, pid=run.pid)
        w = Worker(job_id, run, job["kind"], job["subject"])
        with self._lock:
            self.workers[job_id] = w
        if (self.store.get(job_id) or {}).get("stop_reason") == "cancel":  # cancelled while starting
            w.run.stop()
            w.kill_at = time.monotonic() + self.grace_s
        return True

    # ---- requests from the API ---------------------------------------------------------------
    def cancel(self, job_id: str) -> str:
        """Cancel a job: queued -> cancelled now; running -> SIGTERM, SIGKILL after the grace period.

        Returns the state the job is in afterwards (``running`` while the worker stops).
        """
        if self.store.transition(job_id, ["queued"], "cancelled",
                                 error={"message": "cancelled by request", "hint": ""}):
            return "cancelled"
        job = self.store.get(job_id)
        if job is None:
            raise KeyError(job_id)
        if job["state"] != "running":
            return job["state"]
        self.store.set_fields(job_id, stop_reason="cancel")
        with self._lock:
            w = self.workers.get(job_id)
        if w is not None:
            self._append_log(job_id, "cancel requested: stopping the worker")
            w.run.stop()
            if w.kill_at is None:
                w.kill_at = time.monotonic() + self.grace_s
        self._wake.set()
        return "running"

    def prewarm(self, kind: str) -> None:
        """A job of ``kind`` is likely soon (a Preview Frame once a shot is made): let the executor get
        ready for it, if it can (the local one starts its warm worker). Never raises."""
        prewarm = getattr(self.executor, "prewarm", None)
        if prewarm is None or self._stopping.is_set():
            return
        try:
            prewarm(self.workspace, kind)
        except Exception:  # noqa: BLE001 - only an optimisation: the job will start its worker itself
            log.exception("could not start the warm worker for %s", kind)

    def running_count(self) -> int:
        with self._lock:
            return len(self.workers)

    def _append_log(self, job_id: str, text: str) -> None:
        try:
            with open(self.store.log_path(job_id), "a") as f:
                f.write(f"{time.strftime('%H:%M:%S', time.gmtime())}Z [service] {text}\n")
        except OSError:
            pass


def _reads_subject(kind: str) -> bool:
    from .. import tasks

    t = tasks.TASKS.get(kind)
    return bool(t and t.reads_subject)
