"""The add-on's HTTP client (no bpy) against a tiny standard-library fake service on 127.0.0.1."""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from blender_addon import client  # noqa: E402

TOKEN = "s3cret-token"


class FakeService:
    """Records requests; answers from ``routes[(method, path)] = (status, body, delay_s[, etag])``: with an
    ETag, a request whose If-None-Match names it gets ``304`` and no body."""

    def __init__(self):
        self.requests: list[dict] = []
        self.routes: dict[tuple[str, str], tuple[int, object, float]] = {}
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _do(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                outer.requests.append({"method": self.command, "path": self.path,
                                       "auth": self.headers.get("Authorization"),
                                       "if_none_match": self.headers.get("If-None-Match"),
                                       "body": json.loads(body) if body else None})
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    return self._send(401, {"message": "missing or wrong token", "hint": "read server.json"})
                path = self.path.split("?")[0]
                route = outer.routes.get((self.command, path), (404, {"message": "no route"}, 0))
                status, payload, delay, *etag = route
                if delay:
                    time.sleep(delay)
                if etag and self.headers.get("If-None-Match") == etag[0]:
                    return self._send(304, b"", etag[0])
                self._send(status, payload, *etag)

            def _send(self, status, payload, etag=None):
                if isinstance(payload, (bytes, str)):
                    data = payload.encode() if isinstance(payload, str) else payload
                    ctype = "text/plain"
                else:
                    data, ctype = json.dumps(payload).encode(), "application/json"
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", ctype)
                    if etag:
                        self.send_header("ETag", etag)
                    if status != 304:
                        self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_GET = do_POST = _do

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake():
    f = FakeService()
    yield f
    f.close()


def test_health_sends_bearer_token(fake):
    fake.routes[("GET", "/api/v1/health")] = (200, {"version": "0.1.0", "device": "cpu", "gpu": None}, 0)
    c = client.Client(fake.url, TOKEN)
    assert c.health()["device"] == "cpu"
    assert fake.requests[-1]["auth"] == f"Bearer {TOKEN}"
    assert fake.requests[-1]["path"] == "/api/v1/health"


def test_wrong_token_is_an_auth_error(fake):
    c = client.Client(fake.url, "wrong")
    with pytest.raises(client.AuthError) as e:
        c.health()
    assert "token" in e.value.message and e.value.status == 401
    assert e.value.hint


def test_submit_posts_kind_subject_params(fake):
    fake.routes[("POST", "/api/v1/jobs")] = (201, {"id": "j123", "state": "queued"}, 0)
    c = client.Client(fake.url, TOKEN)
    assert c.submit("render", "astro", {"audio": "/a.wav", "curves": "/w/c.json"}) == "j123"
    req = fake.requests[-1]
    assert req["method"] == "POST"
    assert req["body"] == {"kind": "render", "subject": "astro", "params": {"audio": "/a.wav", "curves": "/w/c.json"}}


def test_errors_keep_the_services_message_and_hint(fake):
    fake.routes[("POST", "/api/v1/jobs")] = (422, {"message": "parameter 'audio': no such file '/x.wav'",
                                                   "hint": "give the absolute path of an existing file"}, 0)
    fake.routes[("GET", "/api/v1/jobs/nope")] = (404, {"message": "no job 'nope'", "hint": "list the jobs"}, 0)
    fake.routes[("GET", "/api/v1/jobs/boom")] = (500, {"message": "internal error"}, 0)
    fake.routes[("POST", "/api/v1/jobs/j1/cancel")] = (409, {"message": "job j1 already succeeded"}, 0)
    c = client.Client(fake.url, TOKEN)
    with pytest.raises(client.BadRequest) as e:
        c.submit("render", "astro", {"audio": "/x.wav"})
    assert "no such file" in e.value.message and "absolute path" in e.value.hint and e.value.status == 422
    with pytest.raises(client.NotFound):
        c.job("nope")
    with pytest.raises(client.ServerError) as e:
        c.job("boom")
    assert "internal error" in e.value.message
    with pytest.raises(client.BadRequest):
        c.cancel("j1")
    # every error is a ServiceError with a one-line str, never a traceback for the UI
    assert all(issubclass(k, client.ServiceError) for k in
               (client.BadRequest, client.NotFound, client.ServerError, client.AuthError, client.ServiceUnavailable))


def test_fastapi_style_error_bodies():
    assert client._error_fields({"detail": "Not Found"}) == ("Not Found", "")
    assert client._error_fields({"detail": [{"loc": ["body", "kind"], "msg": "field required"}]})[0] == \
        "kind: field required"
    assert client._error_fields({"error": {"message": "m", "hint": "h"}}) == ("m", "h")


def test_job_log_and_lists(fake):
    fake.routes[("GET", "/api/v1/jobs/j1")] = (200, {"id": "j1", "state": "running",
                                                     "progress": {"fraction": 0.5, "stage": "train"}}, 0)
    fake.routes[("GET", "/api/v1/jobs/j1/log")] = (200, "line 1\nline 2\n", 0)
    fake.routes[("GET", "/api/v1/jobs")] = (200, [{"id": "j1"}], 0)
    fake.routes[("GET", "/api/v1/subjects")] = (200, [{"name": "astro", "stages": [], "runs": ["default"]}], 0)
    c = client.Client(fake.url, TOKEN)
    assert c.job("j1")["progress"]["fraction"] == 0.5
    assert c.log("j1", 7) == "line 1\nline 2\n"
    assert fake.requests[-1]["path"] == "/api/v1/jobs/j1/log?offset=7"
    assert c.jobs(state="running") == [{"id": "j1"}]
    assert fake.requests[-1]["path"] == "/api/v1/jobs?state=running"
    assert c.subjects()[0]["runs"] == ["default"]


def test_non_json_answer_is_a_clear_error(fake):
    fake.routes[("GET", "/api/v1/health")] = (200, "<html>not a service</html>", 0)
    with pytest.raises(client.ServerError) as e:
        client.Client(fake.url, TOKEN).health()
    assert "not JSON" in e.value.message


def test_timeout_is_short_and_clear(fake):
    fake.routes[("GET", "/api/v1/health")] = (200, {"device": "cpu"}, 2.0)
    c = client.Client(fake.url, TOKEN, timeout=0.3)
    t = time.monotonic()
    with pytest.raises(client.ServiceUnavailable) as e:
        c.health()
    assert time.monotonic() - t < 1.5
    assert "did not answer within 0.3 s" in e.value.message


def test_service_down_is_connection_refused():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    t = time.monotonic()
    with pytest.raises(client.ServiceUnavailable) as e:
        client.Client(f"http://127.0.0.1:{port}", TOKEN).health()
    assert time.monotonic() - t < 1.0
    assert "not running" in e.value.message and e.value.hint


def test_proxy_environment_is_ignored(fake, monkeypatch):
    monkeypatch.setenv("http_proxy", "http://10.255.255.1:3128")
    monkeypatch.setenv("HTTP_PROXY", "http://10.255.255.1:3128")
    fake.routes[("GET", "/api/v1/health")] = (200, {"device": "cpu"}, 0)
    assert client.Client(fake.url, TOKEN, timeout=1.0).health() == {"device": "cpu"}


def test_server_json_discovery(fake, tmp_path):
    with pytest.raises(client.ServiceUnavailable) as e:
        client.read_server_json(tmp_path)
    assert "no HeadSync service is running" in e.value.message and "headsync serve" in e.value.hint
    with pytest.raises(client.ServiceUnavailable):
        client.read_server_json("")
    (tmp_path / "server.json").write_text("{not json")
    with pytest.raises(client.ServiceUnavailable):
        client.read_server_json(tmp_path)
    (tmp_path / "server.json").write_text(json.dumps({"url": fake.url + "/", "token": TOKEN, "pid": os.getpid()}))
    info = client.read_server_json(tmp_path)
    assert info.url == fake.url and info.token == TOKEN and client.pid_alive(info.pid)
    fake.routes[("GET", "/api/v1/health")] = (200, {"device": "cpu", "gpu": None}, 0)
    assert client.Client.from_workspace(tmp_path).health()["device"] == "cpu"


def test_start_service_refuses_a_missing_python(tmp_path):
    with pytest.raises(client.ServiceError) as e:
        client.start_service(str(tmp_path / "nope" / "python"), tmp_path)
    assert "does not exist" in e.value.message and ".venv/bin/python" in e.value.hint
    with pytest.raises(client.ServiceError):
        client.start_service("", tmp_path)


def test_start_service_runs_the_serve_command(tmp_path):
    # A stand-in "python" that records its arguments proves the command line without a real service.
    fake_py = tmp_path / "python"
    fake_py.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path}/args.txt\n")
    fake_py.chmod(0o755)
    proc = client.start_service(str(fake_py), tmp_path / "ws")
    assert proc.wait(timeout=10) == 0
    args = (tmp_path / "args.txt").read_text()
    assert "headsync.cli" in args and "serve --workspace" in args and str(tmp_path / "ws") in args
    assert (tmp_path / "ws" / "blender_service.log").exists()


def test_loopback_urls():
    assert client.is_loopback_url("http://127.0.0.1:8000") and client.is_loopback_url("localhost:1")
    assert client.is_loopback_url("http://[::1]:9") and not client.is_loopback_url("http://example.com:80")
    assert not client.is_loopback_url("http://192.168.1.5:80")


def test_captured_curves_are_fetched_once_per_subject_while_the_etag_holds(fake):
    """New Shot asks for a subject's captured curves (its own frames) once: later asks carry the ETag and
    a 304 answer gives back the kept document; a new ETag (the subject prepared again) replaces it."""
    client._CAPTURED.clear()
    route = ("GET", "/api/v1/subjects/astro/curves")
    first, second = {"schema": "headsync.curves/1", "frame_count": 3}, {"schema": "headsync.curves/1", "frame_count": 4}
    fake.routes[route] = (200, first, 0, '"v1"')
    c = client.Client(fake.url, TOKEN, timeout=1.0)
    assert c.captured("astro") == first
    assert fake.requests[-1]["path"] == "/api/v1/subjects/astro/curves" and fake.requests[-1]["if_none_match"] is None
    assert c.captured("astro") == first and fake.requests[-1]["if_none_match"] == '"v1"'  # answered 304
    fake.routes[route] = (200, second, 0, '"v2"')
    assert c.captured("astro") == second and fake.requests[-1]["if_none_match"] == '"v1"'
    assert c.captured("astro") == second and fake.requests[-1]["if_none_match"] == '"v2"'
    fake.routes[route] = (200, first, 0)  # a service without ETags: asked every time
    client._CAPTURED.clear()
    assert c.captured("astro") == first and c.captured("astro") == first
    assert fake.requests[-1]["if_none_match"] is None
    fake.routes[route] = (404, {"message": "no captured performance", "hint": "prepare it first"}, 0)
    with pytest.raises(client.NotFound):
        c.captured("astro")


def test_token_comes_from_server_json_when_it_names_the_service(fake, tmp_path):
    """The preferences need not keep the token: server.json of the workspace has it for its own service."""
    assert client.token_for(fake.url, "typed", tmp_path) == ("typed", False)  # no server.json: what was typed
    (tmp_path / "server.json").write_text(json.dumps({"url": fake.url, "token": TOKEN, "pid": os.getpid()}))
    assert client.token_for(fake.url + "/", "typed", tmp_path) == (TOKEN, True)
    assert client.token_for("", "", tmp_path) == (TOKEN, True)
    assert client.token_for("http://127.0.0.1:1", "typed", tmp_path) == ("typed", False)  # another service
    assert client.token_for(fake.url, "typed", None) == ("typed", False)


def test_subject_curves_request(fake):
    doc = {"schema": "headsync.curves/1"}
    fake.routes[("GET", "/api/v1/subjects/astro/curves")] = (200, doc, 0)
    c = client.Client(fake.url, TOKEN, timeout=1.0)
    assert c.subject_curves("astro", 250) == doc
    assert fake.requests[-1]["path"] == "/api/v1/subjects/astro/curves?frames=250"
    fake.routes[("GET", "/api/v1/subjects/astro/curves")] = (404, {"message": "no captured performance",
                                                                    "hint": "prepare it first"}, 0)
    with pytest.raises(client.NotFound) as e:
        c.subject_curves("astro")
    assert e.value.hint == "prepare it first"


def test_subject_record_request(fake):
    rec = {"name": "astro", "warnings": ["no full blink"], "models": [], "torso": {"mode": "source"}}
    fake.routes[("GET", "/api/v1/subjects/astro")] = (200, rec, 0)
    c = client.Client(fake.url, TOKEN, timeout=1.0)
    assert c.subject("astro") == rec and fake.requests[-1]["path"] == "/api/v1/subjects/astro"
    fake.routes[("GET", "/api/v1/subjects/astro")] = (200, ["not", "a", "record"], 0)
    with pytest.raises(client.ServerError):
        c.subject("astro")
    fake.routes[("GET", "/api/v1/subjects/nobody")] = (404, {"message": "unknown subject 'nobody'"}, 0)
    with pytest.raises(client.NotFound):
        c.subject("nobody")
