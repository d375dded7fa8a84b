"""A HeadSync service in a subprocess, started as a user would start it, for the tests over real HTTP
(test_service.py, test_service_slow.py, test_security.py).

``test_tasks`` puts ``tests/plugins`` on the service's ``PYTHONPATH``: its entry point adds the test-only
job kind ``test_sleep`` (``plugins/headsync_test_tasks.py``). ``prefix`` runs the service under another
command (``unshare`` for the read-only workspace tests).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
BACKEND = REPO / "backend"


PLUGINS = REPO / "tests" / "plugins"


def service_env(test_tasks: bool = True, max_jobs: int = 1, grace_s: float = 2.0,
                extra_env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a test service: this checkout's backend first, the test plugin when asked."""
    env = dict(os.environ)
    paths = [str(BACKEND)] + ([str(PLUGINS)] if test_tasks else []) + \
        ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["HEADSYNC_MAX_JOBS"] = str(max_jobs)
    env["HEADSYNC_CANCEL_GRACE_S"] = str(grace_s)
    env.setdefault("HEADSYNC_SERVICE_DEVICE", "cpu")  # skip the torch probe: tests do not need it
    env.update(extra_env or {})
    return env


# ---- a service in a subprocess -----------------------------------------------------------------
class ServiceProc:
    """``python -m headsync.service --workspace W`` with a client that carries the token."""

    def __init__(self, workspace: Path, max_jobs: int = 1, grace_s: float = 2.0, test_tasks: bool = True,
                 extra_env: dict[str, str] | None = None, prefix: list[str] | None = None,
                 command: list[str] | None = None):
        self.workspace = Path(workspace)
        self.env = service_env(test_tasks, max_jobs=max_jobs, grace_s=grace_s, extra_env=extra_env)
        # what runs: [*prefix, python, *command]; the default serves self.workspace
        self.prefix = list(prefix or [])
        self.command = list(command or ["-m", "headsync.service", "--workspace", str(self.workspace)])
        self.start()

    def start(self) -> None:
        sj = self.workspace / "server.json"
        self.out = open(self.workspace.parent / f"{self.workspace.name}-service.out", "ab")
        self.proc = subprocess.Popen([*self.prefix, sys.executable, *self.command],
                                     env=self.env, stdout=self.out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the service exited with {self.proc.returncode}: {self.output()}")
            try:
                info = json.loads(sj.read_text())
                if info.get("pid") == self.proc.pid:
                    break
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the service did not write server.json in 60 s")
            time.sleep(0.05)
        self.info = info
        self.url, self.token = info["url"], info["token"]
        self.client = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"},
                                   timeout=30)

    def output(self) -> str:
        return (self.workspace.parent / f"{self.workspace.name}-service.out").read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.out.close()

    # ---- API helpers ----
    def submit(self, kind: str = "test_sleep", subject: str = "s", **params) -> str:
        r = self.client.post("/api/v1/jobs", json={"kind": kind, "subject": subject, "params": params})
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def job(self, job_id: str) -> dict:
        r = self.client.get(f"/api/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        return r.json()

    def wait(self, job_id: str, states=("succeeded", "failed", "cancelled"), timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            j = self.job(job_id)
            if j["state"] in states:
                return j
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {j['state']} after {timeout}s: {j}\n{self.log(job_id)}")
            time.sleep(0.05)

    def log(self, job_id: str, offset: int = 0) -> str:
        return self.client.get(f"/api/v1/jobs/{job_id}/log", params={"offset": offset}).text


def run_serve(args: list[str], prefix: list[str] | None = None, timeout: float = 60,
              **env_kw) -> subprocess.CompletedProcess:
    """``headsync serve ARGS`` run to its end (for the starts that must be refused)."""
    return subprocess.run([*(prefix or []), sys.executable, "-m", "headsync.cli", "serve", *args],
                          env=service_env(**env_kw), capture_output=True, text=True, timeout=timeout)


def worker_pid(job_id: str) -> int | None:
    """The PID of the worker running ``job_id`` (found through /proc)."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"headsync.service.worker" in cmd and job_id.encode() in cmd:
            return int(d.name)
    return None


def pid_alive(pid: int) -> bool:
    try:
        st = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return st.rsplit(")", 1)[1].split()[0] != "Z"


def wait_for(pred, timeout: float = 20, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)




# ---- what changed on the disk ------------------------------------------------------------------------
def tree_digest(*roots: Path) -> dict[str, tuple]:
    """Every entry under ``roots``: path -> (kind, size, sha256 of a file's bytes / a link's target).
    Links are listed, not followed."""
    out: dict[str, tuple] = {}
    for root in roots:
        root = Path(root)
        if not os.path.lexists(root):
            out[str(root)] = ("absent",)
            continue
        if root.is_symlink() or not root.is_dir():
            out[str(root)] = _entry(root)
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            out[dirpath] = ("dir",)
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                if p.is_symlink() or not p.is_dir():
                    out[str(p)] = _entry(p)
    return out


def _entry(p: Path) -> tuple:
    if p.is_symlink():
        return ("link", os.readlink(p))
    if p.is_file():
        data = p.read_bytes()
        return ("file", len(data), hashlib.sha256(data).hexdigest())
    return ("other",)


def changes(before: dict[str, tuple], after: dict[str, tuple]) -> list[str]:
    """What differs between two :func:`tree_digest` listings (added, removed, changed), sorted."""
    keys = set(before) | set(after)
    return sorted(f"{'added' if k not in before else 'removed' if k not in after else 'changed'} {k}"
                  for k in keys if before.get(k) != after.get(k))
