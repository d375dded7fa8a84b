"""The ``ray`` executor: each job is one Ray task on a cluster whose nodes all see the workspace.

The task runs :func:`headsync.service.worker.run_job` in a Ray worker process, with its stdout/stderr
appended to the job's log in the workspace, so progress, logs and outcomes reach the job store exactly as
from a local worker. Train, render and eval ask for one GPU (``num_gpus=1``) when the cluster has GPUs;
prepare, and everything on a cluster without GPUs, asks for one CPU. A cancel or a shutdown reaches the
task through the job's row (``stop_reason``); past the grace period it is force-cancelled.

Faults (docs/cluster.md): a worker process or node that dies mid-job is retried by Ray, :data:`RETRIES`
time(s), on any node; the new attempt first sweeps the half-written files of the one that died (their
names carry its PID, recorded in the row). When the retries are spent the job is ``failed`` with the reason.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from ...core.errors import UserError
from .local import worker_env

RETRIES = 1  # attempts after a worker died (not after an error the job itself raised: that one is recorded)
NOT_RUNNING = 3  # the exit code of an attempt that found its job no longer running


def run_attempt(job_id: str, workspace: str, log_path: str) -> int:
    """One attempt at ``job_id``, inside a Ray worker: its output goes to the job's log. The exit code of
    :func:`~headsync.service.worker.run_job` (0: the outcome is recorded)."""
    from .. import cleanup
    from ..store import Store
    from ..worker import _log, run_job

    ws = Path(workspace)
    store = Store(ws)
    job = store.get(job_id)
    if job is None or job["state"] != "running":
        return NOT_RUNNING
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_path, "ab") as logf:
        os.dup2(logf.fileno(), 1)
        os.dup2(logf.fileno(), 2)
        try:
            before = job.get("pid")
            if before and before != os.getpid():  # a retry: what the dead attempt half-wrote goes first
                _log(f"[ray] retrying on {socket.gethostname()}: the worker of the previous attempt "
                     f"(pid {before}) died")
                roots = [Path(job["params"]["subject"])] + \
                    ([Path(job["params"]["out"]).parent] if job["params"].get("out") else [])
                for line in cleanup.sweep_temp(roots, before, inside=ws):
                    _log(f"cleanup: {line}")
            store.set_fields(job_id, pid=os.getpid())
            _log(f"[ray] node {socket.gethostname()}, worker pid {os.getpid()}")
            return run_job(job_id, ws, lambda: False)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            store.close()


class RayRun:
    def __init__(self, ray, ref):
        self.ray, self.ref = ray, ref
        self.pid: int | None = None  # on another node: the attempt records its own in the row
        self.rc: int | None = None
        self.reason = ""

    def poll(self) -> int | None:
        if self.rc is None and self.ray.wait([self.ref], timeout=0)[0]:
            try:
                self.rc = int(self.ray.get(self.ref))
            except self.ray.exceptions.TaskCancelledError:
                self.rc, self.reason = -9, "worker stopped by force (ray.cancel)"
            except self.ray.exceptions.RayError as e:
                first = (str(e).strip().splitlines() or [""])[0][:300]
                self.rc = -1
                self.reason = (f"ray worker died ({type(e).__name__}) after {RETRIES + 1} attempt(s): {first}")
        return self.rc

    def wait(self, timeout: float) -> bool:
        return bool(self.ray.wait([self.ref], timeout=max(timeout, 0.0))[0])

    def stop(self) -> None:
        pass  # the scheduler wrote stop_reason into the row: the attempt reads it at its next step

    def kill(self) -> None:
        try:
            self.ray.cancel(self.ref, force=True)
        except Exception:  # noqa: BLE001 - it ended meanwhile
            pass

    def died(self, rc: int) -> str:
        return self.reason or f"ray worker ended without recording an outcome (exit code {rc})"

    def close(self) -> None:
        pass


class RayExecutor:
    name = "ray"

    def __init__(self, address: str | None = None, env: dict[str, str] | None = None):
        try:
            import ray
        except ImportError:
            raise UserError("--executor ray needs Ray, which is not installed",
                            "pip install 'headsync[ray]' on the service's machine and on every node") from None
        self.ray = ray
        base = worker_env(env)
        env_vars = {k: v for k, v in base.items()
                    if k == "PYTHONPATH" or (k.startswith("HEADSYNC_") and k != "HEADSYNC_SERVICE_PID")}
        try:
            ray.init(address=address or None, namespace="headsync", log_to_driver=False,
                     runtime_env={"env_vars": env_vars}, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise UserError(f"cannot join the Ray cluster at {address or 'auto'}: {e}",
                            "start it first (docs/cluster.md: ray start --head ...) and pass --ray-address "
                            "HOST:PORT") from None
        # max_calls=1: a fresh worker process per attempt, so no job inherits another's memory (or GPU state)
        self.task = ray.remote(max_calls=1)(run_attempt)
        res = ray.cluster_resources()
        self.gpus, self.cpus = int(res.get("GPU", 0)), int(res.get("CPU", 0))

    def options(self, kind: str) -> dict:
        """The Ray resources of a job of ``kind``: one GPU for the GPU kinds where the cluster has any."""
        from ... import tasks

        t = tasks.TASKS.get(kind)
        gpu = bool(t and t.gpu) and self.gpus > 0
        return {"num_gpus": 1 if gpu else 0, "num_cpus": 1, "max_retries": RETRIES, "retry_exceptions": False}

    def launch(self, job: dict, workspace: Path, log_path: Path) -> RayRun:
        ref = self.task.options(**self.options(job["kind"])).remote(job["id"], str(workspace), str(log_path))
        return RayRun(self.ray, ref)

    def capacity(self) -> int | None:
        return max(self.gpus or self.cpus, 1)

    def close(self) -> None:
        self.ray.shutdown()
