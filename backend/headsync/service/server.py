"""Starting the service: ``headsync serve [--host 127.0.0.1] [--port 0] [--workspace DIR]``.

:func:`serve` binds 127.0.0.1 (a random free port by default), makes a random token, and, once the
queue is recovered and the socket listens, writes ``WORKSPACE/server.json`` = ``{"url", "token", "pid"}``
atomically with mode 0600 and prints where it listens. SIGINT/SIGTERM stop it cleanly: no new
connections, running workers stopped (their jobs failed, resumable for train), ``server.json`` removed,
exit code 0. One service per workspace (a lock file says so).
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import signal
import socket
import sys
from pathlib import Path
from typing import Callable

from ..core.atomic import write_json_atomic
from ..core.errors import UserError

DEFAULT_WORKSPACE = "~/HeadSync"


def default_workspace() -> Path:
    return Path(os.environ.get("HEADSYNC_WORKSPACE") or DEFAULT_WORKSPACE).expanduser()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def write_server_json(path: Path, info: dict) -> None:
    """Write ``info`` to ``path`` atomically, readable by the owner only (mode 0600) from the first byte."""
    write_json_atomic(path, info, mode=0o600)


def _lock(workspace: Path):
    f = open(workspace / "service.lock", "a+")
    try:
        import fcntl  # POSIX; elsewhere the lock is skipped
    except ImportError:  # pragma: no cover
        return f
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        other = ""
        try:
            info = json.loads((workspace / "server.json").read_text())
            other = f" ({info.get('url')}, pid {info.get('pid')})"
        except (OSError, ValueError):
            pass
        raise UserError(f"another headsync service is already running on {workspace}{other}",
                        "use that one (its address is in server.json), stop it, or pass another --workspace")
    return f


def serve(host: str = "127.0.0.1", port: int = 0, workspace: str | Path | None = None, *,
          max_jobs: int | None = None, grace_s: float | None = None,
          echo: Callable[[str], None] | None = None) -> int:
    """Run the service until SIGINT/SIGTERM; returns 0 after a clean shutdown.

    ``max_jobs`` (default ``$HEADSYNC_MAX_JOBS`` or 1): jobs running at once. ``grace_s`` (default
    ``$HEADSYNC_CANCEL_GRACE_S`` or 5): seconds a worker gets to stop before SIGKILL. Raises
    :class:`UserError` for a non-loopback host, a busy port or a workspace already served.
    """
    import uvicorn

    from .app import Service, create_app

    echo = echo or (lambda s: print(s, flush=True))
    if os.environ.get("HEADSYNC_TEST_TASKS") == "1":  # tests only: see testing.py
        from . import testing

        testing.install()
    if not _is_loopback(host):
        raise UserError(f"refusing to listen on {host}: the service is for this machine only",
                        "use --host 127.0.0.1 (the default)")
    ws = Path(workspace).expanduser() if workspace else default_workspace()
    try:
        ws.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the workspace {ws}: {e}", "pass a writable --workspace DIR")
    ws = ws.resolve()
    lock = _lock(ws)
    max_jobs = int(max_jobs or os.environ.get("HEADSYNC_MAX_JOBS") or 1)
    grace_s = float(grace_s if grace_s is not None else os.environ.get("HEADSYNC_CANCEL_GRACE_S") or 5.0)

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say so; without it Nagle's algorithm
    # and delayed ACKs add ~40 ms to every response on a kept-alive connection.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, int(port)))
    except OSError as e:
        sock.close()
        lock.close()
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror}", "pass --port 0 for a free port")
    sock.listen(128)
    bound = sock.getsockname()[1]
    url = f"http://{'[' + host + ']' if family == socket.AF_INET6 else host}:{bound}"
    token = secrets.token_urlsafe(32)
    server_json = ws / "server.json"

    def started() -> None:
        write_server_json(server_json, {"url": url, "token": token, "pid": os.getpid()})
        echo(f"headsync: serving on {url} (workspace {ws}; token in {server_json}; "
             f"{max_jobs} job(s) at a time). Stop with Ctrl-C.")

    def stopped() -> None:
        try:
            if json.loads(server_json.read_text()).get("pid") == os.getpid():
                server_json.unlink()
        except (OSError, ValueError):
            pass
        echo("headsync: stopped")

    min_free_mb = float(os.environ.get("HEADSYNC_MIN_FREE_MB") or 64)
    service = Service(ws, token, max_jobs=max_jobs, grace_s=grace_s, min_free_mb=min_free_mb)
    app = create_app(service, on_startup=started, on_shutdown=stopped)
    config = uvicorn.Config(app, log_level=os.environ.get("HEADSYNC_LOG_LEVEL", "warning"), access_log=False,
                            lifespan="on", timeout_graceful_shutdown=5, server_header=False)
    server = uvicorn.Server(config)
    # uvicorn re-raises the signal that stopped it once it is done, with the handlers it found: make
    # those harmless so that a clean shutdown returns (exit code 0) instead of dying of the signal.
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in old:
        signal.signal(s, lambda *_: None)
    try:
        server.run(sockets=[sock])
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        sock.close()
        lock.close()
    return 0 if server.started else 1


def main(argv: list[str] | None = None) -> int:
    """``python -m headsync.service``: the same as ``headsync serve``."""
    import argparse

    ap = argparse.ArgumentParser(prog="headsync serve", description="the local backend service")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--workspace", default=None, help=f"default $HEADSYNC_WORKSPACE or {DEFAULT_WORKSPACE}")
    ap.add_argument("--max-jobs", type=int, default=None, help="jobs at a time (default 1)")
    a = ap.parse_args(argv)
    try:
        return serve(a.host, a.port, a.workspace, max_jobs=a.max_jobs)
    except UserError as e:
        print(f"error: {e.message}\n  hint: {e.hint}", file=sys.stderr)
        return 2
