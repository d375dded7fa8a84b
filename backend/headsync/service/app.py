"""The HTTP API of the local service (FastAPI): the contract is DESIGN.md, "Local service".

Every request needs ``Authorization: Bearer TOKEN`` (the token is in ``WORKSPACE/server.json``), the
OpenAPI document included (``GET /api/v1/openapi.json``), and a ``Host`` header naming this machine
(127.0.0.0/8, ``localhost`` or ``[::1]``, any port): a web page cannot reach the service by pointing a
name of its own at 127.0.0.1 (DNS rebinding). Every error is JSON ``{"message", "hint"}`` with a 4xx
status; a request body is parsed and checked here and by :func:`headsync.tasks.validate` (the command
line's own check, one pydantic schema per kind), so the service and the command line accept exactly the
same jobs.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import re
import subprocess
import sys
import threading
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Callable, Literal

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__, tasks
from . import jobspec
from ..core.names import is_name
from ..post.torso.config import MODES as TORSO_MODES
from ..renderers.registry import renderer_names
from ..subject.info import subject_info
from .jobspec import ApiError
from .scheduler import Scheduler
from .server import is_loopback
from .store import STATES, Store, jsonsafe, new_id, public
from .worker import can_resume, checkpoint_of, resumable_kind

log = logging.getLogger("headsync.service")

API = "/api/v1"
MAX_BODY = 1 << 20  # 1 MiB: a job request is a few hundred bytes
MAX_LOG_CHUNK = 1 << 20
MAX_CURVE_FRAMES = 1_000_000  # about 11 hours at 25 fps
JOB_ID_RE = re.compile(r"[0-9a-f]{16}")


#: What a subject's captured curves are made of (``GET /subjects/NAME/curves`` and its ETag).
CAPTURE_FILES = ("subject.json", "expression.npy", "pose.npz")


def capture_etag(files: list[Path], frames: int | None) -> str:
    """A strong ETag of the captured curves: the size and modification time of each capture file, and
    ``frames`` (a prepare that writes them again changes it)."""
    import hashlib

    h = hashlib.sha1(repr(frames).encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return '"' + h.hexdigest()[:20] + '"'


# ---- JSON in and out ---------------------------------------------------------------------------
class ApiJSON(JSONResponse):
    """JSON that never fails to encode: ASCII only (user input may hold lone surrogates), no NaN."""

    def render(self, content: Any) -> bytes:
        try:
            return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":"),
                              default=str).encode("ascii")
        except ValueError:  # a NaN from a task's metrics: null instead
            return json.dumps(jsonsafe(content), ensure_ascii=True, separators=(",", ":")).encode("ascii")


def loopback_host(host: bytes | None) -> bool:
    """True when a ``Host`` header names this machine: 127.0.0.0/8, ``localhost``, ``[::1]``; any port."""
    if not host:
        return False
    try:
        h = host.decode("ascii").strip().lower()
    except UnicodeDecodeError:
        return False
    if h.startswith("["):  # [v6]:port
        name, sep, rest = h[1:].partition("]")
        if not sep or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return False
    else:
        name, _, port = h.partition(":")
        if port and not port.isdigit():
            return False
    return is_loopback(name)


def _err(status: int, message: str, hint: str = "", headers: dict[str, str] | None = None) -> ApiJSON:
    return ApiJSON({"message": message, "hint": hint}, status_code=status, headers=headers)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_no_constants)
    except (ValueError, RecursionError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON: {str(e)[:200]}",
                       'send a JSON object: {"kind": ..., "subject": NAME, "params": {...}}')


# ---- models (for the OpenAPI document and response checks) -------------------------------------
class ErrorOut(BaseModel):
    message: str
    hint: str = ""


class ProgressOut(BaseModel):
    fraction: float | None = Field(None, description="fraction of the whole job done, 0..1 (prepare: over all its stages)")
    stage: str | None = None
    message: str | None = Field(None, description="the last message the job printed")
    eta_s: float | None = Field(None, description="seconds left in the current stage")
    done: int = 0
    total: int = 0
    extra: dict[str, Any] = Field(default_factory=dict, description="what the stage reports with its steps (loss, psnr)")


class JobOut(BaseModel):
    id: str
    kind: str
    subject: str
    params: dict[str, Any] = Field(description="the task parameters as the job runs them (absolute paths)")
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    progress: ProgressOut
    error: ErrorOut | None
    artifacts: dict[str, Any]
    created: str = Field(description="ISO 8601, UTC")
    started: str | None
    finished: str | None
    resumable: bool = Field(description="a failed/cancelled train job that POST .../resume continues")
    resumed_from: str | None = None


class CreatedOut(BaseModel):
    id: str
    state: str
    resumed_from: str | None = None


class HealthOut(BaseModel):
    version: str
    device: Literal["cuda", "cpu"]
    gpu: str | None
    workspace: str
    running: int
    max_jobs: int
    renderers: list[str]  # the registered renderers, for a train job's "renderer" (built-in first)
    torso_modes: list[str]  # the torso paths, for a torso job's "mode" and a render's "torso"


class RunOut(BaseModel):
    name: str
    trained: bool = Field(description="the run finished training (it has its metrics.json)")
    renderer: str | None = Field(description="the renderer it trained (nerf, gaussian, ...)")
    heldout_psnr: float | None = Field(description="dB on the held-out frames")
    weak_expressions: list[str] | None = Field(
        description="core expression coefficients whose edits barely act on the render (checked after training)")


class TorsoOut(BaseModel):
    mode: str = Field(description="the torso path renders use: the last torso job's mode, else source")
    trained: list[str] = Field(description="the modes a render may pick with the parts trained")


class SubjectOut(BaseModel):
    name: str
    stages: list[str] = Field(description="finished stages (subject.json)")
    runs: list[str] = Field(description="model runs under models/")
    prepared: bool
    models: list[RunOut] = Field(description="each run's record")
    warnings: list[str] = Field(description="what the footage cannot give (prepare's checks), as text")
    torso: TorsoOut


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {400: "malformed request (or a Host header that is not this machine)", 401: "missing or wrong token",
            404: "not found",
            409: "not possible in the job's state", 413: "request body too large",
            422: "invalid request"}
    return {c: {"model": ErrorOut, "description": text[c]} for c in codes}


# ---- the service -------------------------------------------------------------------------------
class Service:
    """State shared by the routes: workspace, store, scheduler, device."""

    def __init__(self, workspace: Path, token: str, max_jobs: int = 1, grace_s: float = 5.0,
                 min_free_mb: float = 64.0, executor: Any = None):
        self.workspace = Path(workspace).resolve()
        (self.workspace / "subjects").mkdir(parents=True, exist_ok=True)
        self.token = token
        self.store = Store(self.workspace, check=True)  # a damaged jobs.db: refuse, never start empty
        self.scheduler = Scheduler(self.store, self.workspace, max_jobs=max_jobs, grace_s=grace_s,
                                   min_free_mb=min_free_mb, executor=executor)
        self.device: dict[str, Any] | None = None
        self._device_ready = threading.Event()

    def start(self) -> None:
        self.scheduler.start()
        threading.Thread(target=self._probe_device, name="headsync-device-probe", daemon=True).start()

    def stop(self) -> None:
        self.scheduler.stop()

    def _probe_device(self) -> None:
        """Ask a short-lived Python whether torch sees CUDA (torch is never imported by the service)."""
        override = os.environ.get("HEADSYNC_SERVICE_DEVICE")
        try:
            if override:
                dev, _, name = override.partition(":")
                self.device = {"device": "cuda" if dev == "cuda" else "cpu", "gpu": name or None}
                return
            code = ("import json, torch; ok = torch.cuda.is_available(); "
                    "print(json.dumps({'device': 'cuda' if ok else 'cpu', "
                    "'gpu': torch.cuda.get_device_name(0) if ok else None}))")
            r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
            self.device = json.loads(r.stdout.strip().splitlines()[-1])
        except Exception as e:  # noqa: BLE001
            log.warning("device probe failed: %s", e)
            self.device = {"device": "cpu", "gpu": None}
        finally:
            self._device_ready.set()


def create_app(service: Service, on_startup: Callable[[], None] | None = None,
               on_shutdown: Callable[[], None] | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        # Announce the service (server.json) only once the device is known, so that /health, the first
        # thing a client asks, never waits on the probe.
        await run_in_threadpool(service._device_ready.wait, 180)
        if on_startup:
            on_startup()
        try:
            yield
        finally:
            await run_in_threadpool(service.stop)
            if on_shutdown:
                on_shutdown()

    app = FastAPI(title="HeadSync local service", version=__version__, lifespan=lifespan,
                  openapi_url=f"{API}/openapi.json", docs_url=None, redoc_url=None,
                  default_response_class=ApiJSON,
                  description="The backend the Blender add-on drives. Every request needs "
                              "`Authorization: Bearer TOKEN` (token in WORKSPACE/server.json).")
    store, scheduler, ws = service.store, service.scheduler, service.workspace

    # ---- errors ----
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return _err(exc.status, exc.message, exc.hint)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        msg = exc.detail if isinstance(exc.detail, str) else "error"
        hint = "see GET /api/v1/openapi.json for the endpoints" if exc.status_code in (404, 405) else ""
        return _err(exc.status_code, msg.lower() if exc.status_code in (404, 405) else msg, hint,
                    headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        errs = exc.errors()
        parts = []
        for e in errs[:3]:
            loc = ".".join(str(x) for x in e.get("loc", ()) if x not in ("query", "path", "body"))
            parts.append(f"{loc}: {e.get('msg', 'invalid')}" if loc else str(e.get("msg", "invalid")))
        return _err(422, "invalid request: " + "; ".join(parts), "see GET /api/v1/openapi.json")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):  # pragma: no cover - a bug
        log.exception("internal error on %s", request.url.path)
        return _err(500, f"internal error: {type(exc).__name__}", "see the service's output")

    # ---- auth (pure ASGI middleware: cheap, and before any body is read) ----
    token = service.token.encode()

    class Auth:
        def __init__(self, app):
            self.app = app

        async def __call__(self, scope, receive, send):
            if scope["type"] != "http":
                return await self.app(scope, receive, send)
            auth = b""
            clen = host = None
            for k, v in scope["headers"]:
                if k == b"authorization":
                    auth = v
                elif k == b"content-length":
                    clen = v
                elif k == b"host":
                    host = v
            if not loopback_host(host):
                resp = _err(400, f"refused Host header {(host or b'').decode('latin-1')[:100]!r}: the service "
                                 "answers only requests addressed to this machine",
                            "address it as http://127.0.0.1:PORT (the url in WORKSPACE/server.json)")
                return await resp(scope, receive, send)
            scheme, _, given = auth.strip().partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), token):
                resp = _err(401, "missing or wrong token",
                            "send the header 'Authorization: Bearer TOKEN' with the token from "
                            "WORKSPACE/server.json", headers={"WWW-Authenticate": "Bearer"})
                return await resp(scope, receive, send)
            if clen is not None and (not clen.isdigit() or int(clen) > MAX_BODY):
                resp = _err(413, f"request body too large (limit {MAX_BODY} bytes)",
                            "a job request is a small JSON object")
                return await resp(scope, receive, send)
            return await self.app(scope, receive, send)

    app.add_middleware(Auth)

    async def read_body(request: Request) -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY:
                raise ApiError(413, f"request body too large (limit {MAX_BODY} bytes)",
                               "a job request is a small JSON object")
            chunks.append(chunk)
        return b"".join(chunks)

    def get_job(job_id: str) -> dict[str, Any]:
        job = store.get(job_id) if JOB_ID_RE.fullmatch(job_id) else None
        if job is None:
            raise ApiError(404, f"no job {job_id[:40]!r}", "list the jobs: GET /api/v1/jobs")
        return job

    # ---- routes ----
    @app.get(f"{API}/health", response_model=HealthOut, responses=_responses(401))
    async def health():
        if not service._device_ready.is_set():
            await asyncio.get_running_loop().run_in_executor(None, service._device_ready.wait, 60)
        dev = service.device or {"device": "cpu", "gpu": None}
        return ApiJSON({"version": __version__, "device": dev["device"], "gpu": dev["gpu"],
                        "workspace": str(ws), "running": scheduler.running_count(),
                        "max_jobs": scheduler.max_jobs, "renderers": renderer_names(),
                        "torso_modes": list(TORSO_MODES)})

    request_schema, request_components = jobspec.json_schema_for_requests()

    @app.post(f"{API}/jobs", status_code=201, response_model=CreatedOut,
              responses=_responses(400, 401, 404, 413, 422),
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": request_schema}}}})
    async def submit(request: Request):
        """Queue a job: ``{"kind", "subject": NAME, "params": {...}}`` (the command line's parameters)."""
        body = parse_json(await read_body(request))
        job_id = new_id()

        def make():
            active = store.active_subjects(kinds=jobspec.creating_kinds())
            spec = jobspec.build(ws, body, job_id, active_subjects=active)
            return store.create(spec.kind, spec.subject, spec.params, owned=spec.owned, job_id=job_id)

        job = await run_in_threadpool(make)
        scheduler.wake()
        return ApiJSON({"id": job["id"], "state": job["state"], "resumed_from": None}, status_code=201,
                       headers={"Location": f"{API}/jobs/{job['id']}"})

    @app.get(f"{API}/jobs", response_model=list[JobOut], responses=_responses(401, 422))
    async def list_jobs(state: Literal["queued", "running", "succeeded", "failed", "cancelled"] | None = None,
                        kind: str | None = Query(None, max_length=64),
                        subject: str | None = Query(None, max_length=64),
                        limit: int = Query(200, ge=1, le=10000)):
        """Jobs, newest first; filter by ``state`` (queued|running|succeeded|failed|cancelled), kind, subject."""
        assert state is None or state in STATES
        return ApiJSON([public(j) for j in store.list(state=state, kind=kind, subject=subject, limit=limit)])

    @app.get(API + "/jobs/{job_id}", response_model=JobOut, responses=_responses(401, 404))
    async def job(job_id: str):
        return ApiJSON(public(get_job(job_id)))

    @app.post(API + "/jobs/{job_id}/cancel", response_model=JobOut, responses=_responses(401, 404, 409))
    async def cancel(job_id: str):
        """Cancel a job. Queued: cancelled at once. Running: the worker is told to stop (SIGTERM, then
        SIGKILL after the grace period) and the job turns ``cancelled`` within seconds; poll it."""
        job = get_job(job_id)
        if job["state"] in ("succeeded", "failed"):
            raise ApiError(409, f"job {job_id} already {job['state']}", "nothing to cancel")
        if job["state"] == "running" or job["state"] == "queued":
            await run_in_threadpool(scheduler.cancel, job_id)
        return ApiJSON(public(get_job(job_id)))

    @app.post(API + "/jobs/{job_id}/resume", status_code=201, response_model=CreatedOut,
              responses=_responses(401, 404, 409))
    async def resume(job_id: str):
        """Queue a new job continuing an interrupted (failed or cancelled) train job from its last
        checkpoint: the same parameters with ``resume: true``."""
        job = get_job(job_id)
        if not resumable_kind(job["kind"]):
            raise ApiError(409, f"a {job['kind']} job cannot be resumed", "submit it again instead")
        if job["state"] not in ("failed", "cancelled"):
            raise ApiError(409, f"job {job_id} is {job['state']}", "only a failed or cancelled job is resumed")
        params = {**job["params"], "resume": True}
        sdir = Path(params["subject"])
        if not (sdir / "subject.json").is_file() and not jobspec.creates_subject(job["kind"]):
            raise ApiError(404, f"subject {job['subject']!r} no longer exists", "prepare it again")
        jobspec.check_writes(ws, job["kind"], params)  # its folders may have become links out since
        if not can_resume(job["kind"], job["params"]):
            raise ApiError(409, f"job {job_id} left no checkpoint to resume from "
                                f"({checkpoint_of(job['kind'], job['params'])})", "submit the job again")
        new = store.create(job["kind"], job["subject"], params, owned=job.get("owned"), resumed_from=job_id)
        scheduler.wake()
        return ApiJSON({"id": new["id"], "state": new["state"], "resumed_from": job_id}, status_code=201,
                       headers={"Location": f"{API}/jobs/{new['id']}"})

    @app.get(API + "/jobs/{job_id}/log", response_class=Response, responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}},
              "description": "the log from byte `offset` (at most 1 MiB); headers X-Log-Size, X-Next-Offset"},
        **_responses(401, 404, 422)})
    async def job_log(job_id: str, offset: int = Query(0, ge=0)):
        get_job(job_id)
        path = store.log_path(job_id)

        def read() -> tuple[bytes, int]:
            try:
                with open(path, "rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    if offset >= size:
                        return b"", size
                    f.seek(offset)
                    return f.read(min(size - offset, MAX_LOG_CHUNK)), size
            except FileNotFoundError:
                return b"", 0

        data, size = await run_in_threadpool(read)
        nxt = min(offset, size) + len(data) if offset <= size else offset
        return Response(data, media_type="text/plain; charset=utf-8",
                        headers={"X-Log-Size": str(size), "X-Next-Offset": str(nxt)})

    def subject_record(name: str) -> dict[str, Any] | None:
        """:func:`subject_info` of subject ``name`` when its folder stays inside the workspace, else None."""
        try:
            d = jobspec.check_subject_dir(ws, name)
        except ApiError:  # a folder (or a link in it) leading out of the workspace is not read
            return None
        return subject_info(d) | {"name": name}

    @app.get(f"{API}/subjects", response_model=list[SubjectOut], responses=_responses(401))
    def subjects():
        """Subjects in the workspace: finished stages (subject.json), model runs (models/*), warnings, torso."""
        root = ws / "subjects"
        names = [d.name for d in (sorted(root.iterdir()) if root.is_dir() else []) if d.is_dir() and is_name(d.name)]
        return ApiJSON([r for r in map(subject_record, names) if r is not None])

    @app.get(API + "/subjects/{name}", response_model=SubjectOut, responses=_responses(401, 404, 422))
    def subject(name: str):
        """One subject: what the add-on shows beside it (its runs' renderers and weak expression
        coefficients, the warnings of ``prepare``, the torso path)."""
        rec = subject_record(jobspec.check_name(name, "subject"))
        if rec is None or not (ws / "subjects" / name / "subject.json").is_file():
            raise jobspec.unknown_subject(ws, name)
        return ApiJSON(rec)

    @app.get(API + "/subjects/{name}/curves", responses={
        **_responses(401, 404, 422), 304: {"description": "not modified: If-None-Match names the current ETag"}})
    def subject_curves(request: Request, name: str, frames: int | None = Query(None, ge=1, le=MAX_CURVE_FRAMES)):
        """curves.json (``headsync.curves/1``) of the subject's captured performance, looped back and forth
        over ``frames`` frames as a render without curves loops it (default: the subject's own frames).
        Blender keys a new shot from it, so the add-on never reads the subject's arrays itself. The answer
        has an ``ETag`` (the capture's files and ``frames``): asked with ``If-None-Match`` and that tag, the
        service answers ``304`` with no body while the capture has not changed. For a trained subject it
        also starts the warm worker (a Preview Frame of the new shot comes next)."""
        from ..curves import captured_curves
        from ..core.errors import UserError
        from ..subject.folder import Subject

        check = jobspec.check_name(name, "subject")
        subject = Subject(ws / "subjects" / check)
        files = [subject.path(f) for f in CAPTURE_FILES]
        if not all(f.is_file() for f in files):
            raise ApiError(404, f"subject {name!r} has no captured performance yet",
                           "prepare it first (its 'prepare' job writes expression.npy and pose.npz)")
        if any((subject.root / "models").glob("*/checkpoint.pt")):
            scheduler.prewarm("render")  # a shot is being made of a trained subject: a Preview Frame follows
        etag = capture_etag(files, frames)
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers={"ETag": etag})
        try:
            curves = captured_curves(subject, frames or subject.frame_count())
        except UserError as e:
            raise ApiError(404, e.message, e.hint)
        except (OSError, ValueError, KeyError) as e:
            raise ApiError(404, f"the captured performance of subject {name!r} is unreadable ({type(e).__name__})",
                           "prepare the subject again")
        return ApiJSON(curves.to_json(), headers={"ETag": etag})

    # ---- OpenAPI: declare the bearer token ----
    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(title=app.title, version=app.version, description=app.description,
                             routes=app.routes)
        components = schema.setdefault("components", {})
        components.setdefault("securitySchemes", {})["bearer"] = {"type": "http", "scheme": "bearer"}
        components.setdefault("schemas", {}).update(request_components)  # the kinds' parameter schemas
        schema["security"] = [{"bearer": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app

