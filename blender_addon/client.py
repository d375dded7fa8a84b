"""HTTP client of the local HeadSync service (``headsync serve``). Standard library only, no bpy.

Every call is short (a timeout of a couple of seconds at most) because the add-on calls it from the
user interface thread: a service that is down answers "connection refused" at once, and a service that
hangs costs at most ``timeout`` seconds before a :class:`ServiceUnavailable` says so.

Errors are mapped onto a small hierarchy so the UI can print one clear line and a hint, never a
traceback:

* :class:`ServiceUnavailable`: nothing listens, the connection timed out, no ``server.json``;
* :class:`AuthError`: 401/403, the token is wrong (a restarted service writes a new one);
* :class:`NotFound`: 404 (an unknown job or subject);
* :class:`BadRequest`: 400/409/422, the service refused the parameters (its message and hint are kept);
* :class:`ServerError`: 5xx or an answer that is not the JSON it should be.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

API = "/api/v1"
DEFAULT_TIMEOUT = 2.0
SERVER_JSON = "server.json"


#: What :meth:`Client.request` answers for ``304 Not Modified``.
NOT_MODIFIED = object()
#: The captured curves fetched this session: (service url, subject) -> (ETag, document); see Client.captured.
_CAPTURED: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}


class ServiceError(Exception):
    """A failure talking to the service: ``message`` (what happened) and ``hint`` (what to do)."""

    def __init__(self, message: str, hint: str = "", status: int | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.status = status

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ServiceUnavailable(ServiceError):
    pass


class AuthError(ServiceError):
    pass


class NotFound(ServiceError):
    pass


class BadRequest(ServiceError):
    pass


class ServerError(ServiceError):
    pass


@dataclass
class ServerInfo:
    url: str
    token: str
    pid: int | None = None


def _clean_url(url: str) -> str:
    url = (url or "").strip()
    if url and "://" not in url:
        url = "http://" + url
    return url.rstrip("/")


def is_loopback_url(url: str) -> bool:
    """True for http://127.x.x.x, http://[::1] and http://localhost (the service's only addresses)."""
    import ipaddress

    host = urllib.parse.urlsplit(_clean_url(url)).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_server_json(workspace: str | os.PathLike) -> ServerInfo:
    """The service's address and token from ``WORKSPACE/server.json``; raises :class:`ServiceUnavailable`."""
    if not workspace:
        raise ServiceUnavailable("no HeadSync workspace is set",
                                 "set the workspace folder in the add-on preferences")
    path = Path(workspace).expanduser() / SERVER_JSON
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ServiceUnavailable(f"no HeadSync service is running for the workspace {Path(workspace)}",
                                 "start it with 'Start Service' (or `headsync serve --workspace "
                                 f"{Path(workspace)}`)") from None
    except PermissionError:
        raise ServiceUnavailable(f"{path} is not readable", "check the workspace's permissions") from None
    except (OSError, ValueError) as e:
        raise ServiceUnavailable(f"{path} is unreadable ({e.__class__.__name__})",
                                 "restart the service; it rewrites the file") from None
    if not isinstance(data, dict) or not isinstance(data.get("url"), str) or not data.get("url"):
        raise ServiceUnavailable(f"{path} does not name the service's url", "restart the service")
    pid = data.get("pid")
    return ServerInfo(_clean_url(data["url"]), str(data.get("token") or ""), pid if isinstance(pid, int) else None)


def token_for(url: str, stored: str, workspace: str | os.PathLike | None) -> tuple[str, bool]:
    """The token for the service at ``url``: (token, read from server.json?).

    ``server.json`` of the workspace wins when it names the same service (it holds the token of the running
    service, rewritten at every start), so the preferences need not keep a copy; ``stored`` (what the user
    typed in the preferences) is for a service whose server.json is out of reach."""
    if workspace:
        try:
            info = read_server_json(workspace)
        except ServiceError:
            info = None
        if info is not None and info.token and (not url or _clean_url(url) == info.url):
            return info.token, True
    return stored or "", False


def pid_alive(pid: int | None) -> bool:
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, someone else's
        return True
    except OSError:
        return False
    return True


def _error_fields(body: Any) -> tuple[str, str]:
    """(message, hint) from the error bodies the service (or FastAPI) may send."""
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"]), str(err.get("hint") or "")
        if isinstance(err, str) and err:
            return err, str(body.get("hint") or "")
        if body.get("message"):
            return str(body["message"]), str(body.get("hint") or "")
        det = body.get("detail")
        if isinstance(det, dict) and det.get("message"):
            return str(det["message"]), str(det.get("hint") or "")
        if isinstance(det, str) and det:
            return det, str(body.get("hint") or "")
        if isinstance(det, list) and det:  # FastAPI validation errors
            parts = []
            for d in det[:3]:
                if isinstance(d, dict):
                    loc = ".".join(str(x) for x in d.get("loc", []) if x != "body")
                    parts.append(f"{loc}: {d.get('msg', '')}" if loc else str(d.get("msg", "")))
            return "; ".join(parts) or "invalid request", ""
    return "", ""


class Client:
    """One service: ``url`` (http://127.0.0.1:PORT) and its bearer ``token``."""

    def __init__(self, url: str, token: str = "", timeout: float = DEFAULT_TIMEOUT):
        self.url = _clean_url(url)
        if not self.url:
            raise ServiceUnavailable("no service URL", "set the service URL or the workspace in the preferences")
        self.token = token or ""
        self.timeout = float(timeout)
        # Loopback only: never route through an http_proxy from the environment.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @classmethod
    def from_workspace(cls, workspace: str | os.PathLike, timeout: float = DEFAULT_TIMEOUT) -> "Client":
        info = read_server_json(workspace)
        return cls(info.url, info.token, timeout)

    # ---- transport ---------------------------------------------------------------------------
    def request(self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None,
                timeout: float | None = None, raw: bool = False, etag: str | None = None) -> Any:
        """The answer's JSON (``raw``: its text). ``etag``: sent as ``If-None-Match``; then the answer is
        ``(json or NOT_MODIFIED, the answer's ETag)``."""
        url = self.url + API + path
        if query:
            url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        data = None
        headers = {"Accept": "application/json", "User-Agent": "headsync-blender"}
        if etag:
            headers["If-None-Match"] = etag
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(url, data=data, headers=headers, method=method)
        t = self.timeout if timeout is None else timeout
        try:
            with self._opener.open(req, timeout=t) as resp:
                payload = resp.read()
                status = resp.status
                got_etag = resp.headers.get("ETag") or ""
        except urllib.error.HTTPError as e:
            if e.code == 304 and etag:  # urllib raises for "not modified" too
                e.close()
                return NOT_MODIFIED, e.headers.get("ETag") or etag
            try:
                payload = e.read()
            except Exception:
                payload = b""
            finally:
                e.close()
            raise self._http_error(e.code, payload, method, path) from None
        except urllib.error.URLError as e:
            reason = e.reason
            if isinstance(reason, (socket.timeout, TimeoutError)):
                raise ServiceUnavailable(f"the HeadSync service at {self.url} did not answer within {t:g} s",
                                         "it may be busy or hung; try again, or restart it") from None
            if isinstance(reason, ConnectionRefusedError):
                raise ServiceUnavailable(f"the HeadSync service at {self.url} is not running (connection refused)",
                                         "start it with 'Start Service' or check the URL in the preferences") from None
            raise ServiceUnavailable(f"cannot reach the HeadSync service at {self.url} ({reason})",
                                     "check the URL in the preferences and that the service runs") from None
        except (socket.timeout, TimeoutError):
            raise ServiceUnavailable(f"the HeadSync service at {self.url} did not answer within {t:g} s",
                                     "it may be busy or hung; try again, or restart it") from None
        except (ConnectionError, OSError) as e:
            raise ServiceUnavailable(f"lost the connection to the HeadSync service at {self.url} "
                                     f"({e.__class__.__name__})", "check that the service still runs") from None
        if raw:
            return payload.decode("utf-8", errors="replace")
        if not payload:
            return (None, got_etag) if etag is not None else None
        try:
            ans = json.loads(payload.decode("utf-8"))
        except ValueError:
            raise ServerError(f"the service answered {method} {path} with something that is not JSON "
                              f"(HTTP {status})", "is the URL really a HeadSync service?") from None
        return (ans, got_etag) if etag is not None else ans

    def _http_error(self, code: int, payload: bytes, method: str, path: str) -> ServiceError:
        try:
            body = json.loads(payload.decode("utf-8")) if payload else None
        except ValueError:
            body = None
        message, hint = _error_fields(body)
        if not message:
            text = payload.decode("utf-8", errors="replace").strip()
            message = text[:200] if text and not text.lstrip().startswith("<") else f"HTTP {code}"
        if code in (401, 403):
            return AuthError(f"the HeadSync service refused the token ({message})",
                             hint or "the service was restarted with a new token: refresh, or check the "
                                     "workspace in the preferences", code)
        if code == 404:
            return NotFound(message, hint, code)
        if code in (400, 409, 413, 415, 422):
            return BadRequest(message, hint, code)
        return ServerError(f"the HeadSync service failed on {method} {path}: {message}",
                           hint or "see the service's log", code)

    # ---- API ---------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return self.request("GET", "/health") or {}

    def submit(self, kind: str, subject: str, params: dict[str, Any] | None = None) -> str:
        ans = self.request("POST", "/jobs", {"kind": kind, "subject": subject, "params": params or {}})
        if not isinstance(ans, dict) or not ans.get("id"):
            raise ServerError("the service accepted the job but returned no id", "see the service's log")
        return str(ans["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        ans = self.request("GET", f"/jobs/{urllib.parse.quote(str(job_id), safe='')}")
        if not isinstance(ans, dict):
            raise ServerError(f"the service returned no record for job {job_id}")
        return ans

    def jobs(self, state: str | None = None) -> list[dict[str, Any]]:
        ans = self.request("GET", "/jobs", query={"state": state} if state else None)
        if isinstance(ans, dict) and isinstance(ans.get("jobs"), list):
            return ans["jobs"]
        return ans if isinstance(ans, list) else []

    def cancel(self, job_id: str) -> Any:
        return self.request("POST", f"/jobs/{urllib.parse.quote(str(job_id), safe='')}/cancel", {})

    def log(self, job_id: str, offset: int = 0) -> str:
        return self.request("GET", f"/jobs/{urllib.parse.quote(str(job_id), safe='')}/log",
                            query={"offset": int(offset)}, raw=True)

    def subject_curves(self, subject: str, frames: int | None = None) -> dict[str, Any]:
        """curves.json of the subject's captured performance, looped over ``frames`` frames (unvalidated)."""
        ans = self.request("GET", f"/subjects/{urllib.parse.quote(str(subject), safe='')}/curves",
                           query={"frames": int(frames)} if frames else None, timeout=max(self.timeout, 10.0))
        if not isinstance(ans, dict):
            raise ServerError(f"the service returned no curves for subject {subject!r}", "see the service's log")
        return ans

    def captured(self, subject: str) -> dict[str, Any]:
        """curves.json of the subject's captured performance over its own frames (unvalidated), fetched once:
        kept with its ETag (per service and subject, for this session), asked again with ``If-None-Match``,
        and fetched again only when the service says the capture changed (a new prepare)."""
        key = (self.url, str(subject))
        tag, doc = _CAPTURED.get(key, ("", None))
        ans, new_tag = self.request("GET", f"/subjects/{urllib.parse.quote(str(subject), safe='')}/curves",
                                    timeout=max(self.timeout, 10.0), etag=tag if doc is not None else "")
        if ans is NOT_MODIFIED and doc is not None:
            return doc
        if not isinstance(ans, dict):
            raise ServerError(f"the service returned no curves for subject {subject!r}", "see the service's log")
        _CAPTURED.pop(key, None)
        if new_tag:
            _CAPTURED[key] = (new_tag, ans)
        return ans

    def subjects(self) -> list[dict[str, Any]]:
        ans = self.request("GET", "/subjects")
        if isinstance(ans, dict) and isinstance(ans.get("subjects"), list):
            return ans["subjects"]
        return ans if isinstance(ans, list) else []

    def subject(self, name: str) -> dict[str, Any]:
        """The service's record of one subject: runs (renderer, weak expressions), warnings, torso (unvalidated:
        :func:`subjects.subject_fields` keeps what it expects)."""
        ans = self.request("GET", f"/subjects/{urllib.parse.quote(str(name), safe='')}")
        if not isinstance(ans, dict):
            raise ServerError(f"the service returned no record of subject {name!r}", "see the service's log")
        return ans


# ---- starting the service ---------------------------------------------------------------------
SERVE_CODE = "import sys; from headsync.cli import main; sys.exit(main(sys.argv[1:]))"


def service_command(python: str, workspace: str, host: str = "127.0.0.1", port: int = 0) -> list[str]:
    return [python, "-c", SERVE_CODE, "serve", "--workspace", str(workspace), "--host", host, "--port", str(port)]


def start_service(python: str, workspace: str | os.PathLike, log_path: str | os.PathLike | None = None,
                  env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``headsync serve`` with the backend's Python in the background (returns at once).

    The caller waits for ``server.json`` (non-blocking, from a timer). Raises :class:`ServiceError` with
    a clear message when the executable or the workspace is unusable.
    """
    python = os.path.expanduser(python or "")
    if not python:
        raise ServiceError("no backend Python is set",
                           "set it in the preferences: the .venv/bin/python of a HeadSync checkout")
    if not os.path.isfile(python) or not os.access(python, os.X_OK):
        raise ServiceError(f"the backend Python {python} does not exist or is not executable",
                           "point the preferences at the .venv/bin/python of a HeadSync checkout")
    if not workspace:
        raise ServiceError("no HeadSync workspace is set", "set the workspace folder in the preferences")
    ws = Path(workspace).expanduser()
    try:
        ws.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ServiceError(f"cannot create the workspace {ws} ({e.strerror or e})",
                           "choose a folder you can write to") from None
    log = Path(log_path) if log_path else ws / "blender_service.log"
    kw: dict[str, Any] = {}
    if sys.platform != "win32":
        kw["start_new_session"] = True  # the service outlives a crash of Blender, and Ctrl-C in it
    try:
        fh = open(log, "ab")
    except OSError as e:
        raise ServiceError(f"cannot write the service log {log} ({e.strerror or e})", "check the workspace") from None
    try:
        proc = subprocess.Popen(service_command(python, str(ws)), stdin=subprocess.DEVNULL, stdout=fh,
                                stderr=subprocess.STDOUT, env=env, cwd=str(ws), **kw)
    except OSError as e:
        raise ServiceError(f"cannot start {python} ({e.strerror or e})",
                           "point the preferences at the .venv/bin/python of a HeadSync checkout") from None
    finally:
        fh.close()
    return proc
