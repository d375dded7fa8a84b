"""``headsync batch SHOTS.json``: many renders at once, for use without Blender (a render farm's queue).

SHOTS.json is a list of shots, each ``{"subject": NAME, "audio": PATH, "curves": PATH?, "out": DIR?, ...}``
(any other render parameter: ``run``, ``shot``, ``portrait``). Every shot is submitted as a render job,
to the service already serving the workspace (found through ``WORKSPACE/server.json``) or, when none is,
to one run in this process for the batch (``--executor local|ray`` as ``serve``). A shot that is refused
or fails does not stop the others; the report names each failed shot with its reason. Exit code 0 when
every shot succeeded, 1 when any failed, 2 for an unreadable SHOTS.json.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..core.errors import UserError

FINAL = ("succeeded", "failed", "cancelled")
POLL_S = 0.5


def load_shots(path: Path) -> list[dict[str, Any]]:
    """The shots of a SHOTS.json: a non-empty list of objects, each with ``subject`` and ``audio``."""
    try:
        shots = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read the shots file {path}: {e}",
                        'write a JSON list of shots: [{"subject": NAME, "audio": PATH, "out": DIR}, ...]') from None
    if not isinstance(shots, list) or not shots:
        raise UserError(f"{path}: expected a non-empty JSON list of shots", 'e.g. [{"subject": "astro", "audio": '
                        '"/media/line1.wav", "out": "renders/line1"}]')
    for i, s in enumerate(shots):
        if not isinstance(s, dict) or not isinstance(s.get("subject"), str) or "audio" not in s:
            raise UserError(f"{path}: shot {i} is not an object with \"subject\" and \"audio\"",
                            "give every shot a subject name and an audio file")
    return shots


@dataclass
class Outcome:
    index: int
    shot: dict[str, Any]
    job_id: str | None
    state: str
    message: str = ""
    hint: str = ""


class HttpQueue:
    """A running service, through its API (stdlib only: the batch needs no HTTP library)."""

    def __init__(self, url: str, token: str):
        self.url, self.token = url.rstrip("/"), token

    def _call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        req = urllib.request.Request(self.url + "/api/v1" + path, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {self.token}",
                                              "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def alive(self) -> bool:
        try:
            return self._call("GET", "/health")[0] == 200
        except (OSError, ValueError):
            return False

    def submit(self, body: dict[str, Any]) -> tuple[str | None, dict[str, str]]:
        code, out = self._call("POST", "/jobs", body)
        if code == 201:
            return out["id"], {}
        out = out if isinstance(out, dict) else {}
        return None, {"message": str(out.get("message", f"refused ({code})")), "hint": str(out.get("hint", ""))}

    def get(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/jobs/{job_id}")[1]

    def close(self) -> None:
        pass


class LocalQueue:
    """A service of this process for the batch: the same store, checks and executor, without HTTP."""

    def __init__(self, workspace: Path, executor: str, ray_address: str | None, max_jobs: int | None):
        from .app import Service
        from .executors import make_executor
        from .server import _lock, _writable_workspace

        _writable_workspace(workspace)  # as serve: made if missing, refused with a hint if unusable
        self.lock = _lock(workspace)  # no service may start on this workspace meanwhile
        try:
            runner = make_executor(executor, ray_address)
        except UserError:
            self.lock.close()
            raise
        self.service = Service(workspace, token="", max_jobs=max_jobs or runner.capacity() or 1, executor=runner)
        self.service.start()

    def submit(self, body: dict[str, Any]) -> tuple[str | None, dict[str, str]]:
        from . import jobspec
        from .store import new_id

        job_id = new_id()
        store = self.service.store
        try:
            spec = jobspec.build(self.service.workspace, body, job_id,
                                 active_subjects=store.active_subjects(kinds=jobspec.creating_kinds()))
        except jobspec.ApiError as e:
            return None, {"message": e.message, "hint": e.hint}
        job = store.create(spec.kind, spec.subject, spec.params, owned=spec.owned, job_id=job_id)
        self.service.scheduler.wake()
        return job["id"], {}

    def get(self, job_id: str) -> dict[str, Any]:
        return self.service.store.get(job_id) or {}

    def close(self) -> None:
        self.service.stop()
        self.lock.close()


def run_batch(shots: list[dict[str, Any]], queue: HttpQueue | LocalQueue,
              echo: Callable[[str], None] = print, timeout_s: float | None = None) -> list[Outcome]:
    """Submit every shot as a render job, wait for them all; one :class:`Outcome` per shot, in order."""
    outcomes: list[Outcome] = []
    for i, shot in enumerate(shots):
        params = {k: v for k, v in shot.items() if k != "subject"}
        job_id, err = queue.submit({"kind": "render", "subject": shot["subject"], "params": params})
        outcomes.append(Outcome(i, shot, job_id, "queued" if job_id else "refused", **err))
        echo(f"shot {i} ({shot['subject']}): " + (f"job {job_id}" if job_id else f"refused: {err['message']}"))
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    pending = [o for o in outcomes if o.job_id]
    while pending:
        for o in list(pending):
            job = queue.get(o.job_id)  # type: ignore[arg-type]
            if job.get("state") in FINAL:
                o.state = job["state"]
                err = job.get("error") or {}
                o.message, o.hint = err.get("message", ""), err.get("hint", "")
                pending.remove(o)
                echo(f"shot {o.index} ({o.shot['subject']}): {o.state}" + (f": {o.message}" if o.message else ""))
        if pending:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{len(pending)} shot(s) unfinished after {timeout_s}s")
            time.sleep(POLL_S)
    return outcomes


def main(shots_file: str, workspace: str | None = None, executor: str = "local",
         ray_address: str | None = None, max_jobs: int | None = None, echo: Callable[[str], None] = print) -> int:
    """``headsync batch``: the exit code (0 all succeeded, 1 some failed); raises UserError on bad input."""
    from .server import default_workspace

    shots = load_shots(Path(shots_file))
    ws = (Path(workspace).expanduser() if workspace else default_workspace()).resolve()
    queue: HttpQueue | LocalQueue | None = None
    try:
        info = json.loads((ws / "server.json").read_text())
        queue = HttpQueue(info["url"], info["token"])
        if not queue.alive():
            queue = None
        else:
            echo(f"headsync batch: submitting {len(shots)} shot(s) to the service at {info['url']}")
    except (OSError, ValueError, KeyError):
        queue = None
    if queue is None:
        echo(f"headsync batch: no service serves {ws}; running {len(shots)} shot(s) here ({executor} executor)")
        queue = LocalQueue(ws, executor, ray_address, max_jobs)
    try:
        outcomes = run_batch(shots, queue, echo)
    finally:
        queue.close()
    failed = [o for o in outcomes if o.state != "succeeded"]
    echo(f"headsync batch: {len(outcomes) - len(failed)} of {len(outcomes)} shot(s) succeeded")
    for o in failed:
        echo(f"  FAILED shot {o.index} ({o.shot['subject']}, {o.shot.get('out') or o.shot['audio']}): "
             f"{o.message or o.state}" + (f" - {o.hint}" if o.hint else ""))
    return 1 if failed else 0
