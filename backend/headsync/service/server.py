"""Starting the service: ``headsync serve [--host 127.0.0.1] [--port 0] [--workspace DIR] [--max-jobs N]
[--reset-jobs] [--executor local|ray] [--ray-address HOST:PORT]``.

:func:`serve` binds 127.0.0.1 (a random free port by default), makes a random token, and, once the
queue is recovered and the socket listens, writes ``WORKSPACE/server.json`` = ``{"url", "token", "pid"}``
atomically with mode 0600 and prints where it listens. SIGINT/SIGTERM stop it cleanly: no new
connections, running workers stopped (their jobs failed, resumable for train), ``server.json`` removed,
exit code 0. One service per workspace (a lock file says so).

The workspace is ``--workspace``, else ``$HEADSYNC_WORKSPACE``, else ``~/HeadSync``. Before serving it checks
that the workspace is writable and that its job store is sound (``PRAGMA quick_check``); it refuses with a
message and a hint (exit code 2) otherwise, and keeps the damaged file: ``--reset-jobs`` moves it aside.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import secrets
import signal
import socket
import sqlite3
import sys
from pathlib import Path
from typing import Callable

from ..core.atomic import write_json_atomic
from ..core.errors import UserError

DEFAULT_WORKSPACE = "~/HeadSync"


def default_workspace() -> Path:
    return Path(os.environ.get("HEADSYNC_WORKSPACE") or DEFAULT_WORKSPACE).expanduser()


def is_loopback(host: str) -> bool:
    """True for a name or address of this machine: ``localhost``, 127.0.0.0/8, ``::1``."""
    if host in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def write_server_json(path: Path, info: dict) -> None:
    """Write ``info`` to ``path`` atomically, readable by the owner only (mode 0600) from the first byte."""
    write_json_atomic(path, info, mode=0o600)


def _writable_workspace(ws: Path) -> None:
    """Raise :class:`UserError` unless ``ws`` exists (or can be made) and can be written, and the service's
    own files in it do not lead out of it."""
    from .jobspec import RESERVED, SUBJECTS
    from .worker import os_error

    def refuse(e: OSError, what: str) -> UserError:
        known = os_error(e)
        why = known["message"] if known else f"{e.strerror or e}"
        return UserError(f"cannot use the workspace {ws}: {what} ({why})",
                         "pass a writable folder: --workspace DIR or $HEADSYNC_WORKSPACE")

    try:
        ws.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise refuse(e, "it cannot be created") from None
    probe = ws / f".write-test-{os.getpid()}"
    try:
        with open(probe, "w") as f:
            f.write("ok")
        probe.unlink()
    except OSError as e:
        raise refuse(e, "it is not writable") from None
    real = ws.resolve()
    for name in (*RESERVED, SUBJECTS):
        p = ws / name
        if p.is_symlink() and real not in p.resolve().parents:
            raise UserError(f"cannot use the workspace {ws}: {p} is a symbolic link out of it (to {p.resolve()})",
                            "replace the link by a folder (or file) inside the workspace")


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
          max_jobs: int | None = None, grace_s: float | None = None, reset_jobs: bool = False,
          executor: str = "local", ray_address: str | None = None,
          echo: Callable[[str], None] | None = None) -> int:
    """Run the service until SIGINT/SIGTERM; returns 0 after a clean shutdown.

    ``workspace`` (default ``$HEADSYNC_WORKSPACE`` or ``~/HeadSync``). ``max_jobs`` (default
    ``$HEADSYNC_MAX_JOBS`` or 1): jobs running at once. ``grace_s`` (default ``$HEADSYNC_CANCEL_GRACE_S``
    or 5): seconds a worker gets to stop before SIGKILL. ``reset_jobs``: move the job store aside first
    (an empty history). ``executor``: where jobs run, ``local`` subprocesses or ``ray`` tasks on the cluster
    at ``ray_address`` (docs/cluster.md); with ``ray`` ``max_jobs`` defaults to the cluster's GPUs (or CPUs). Raises :class:`UserError` for a non-loopback host, a busy port, a workspace already
    served or not writable, or a damaged job store.
    """
    import uvicorn

    from .. import tasks
    from .app import Service, create_app
    from .store import Store, set_aside

    echo = echo or (lambda s: print(s, flush=True))
    tasks.load_plugins()
    if not is_loopback(host):
        raise UserError(f"refusing to listen on {host}: the service is for this machine only",
                        "use --host 127.0.0.1 (the default)")
    if max_jobs is not None and max_jobs < 1:
        raise UserError(f"--max-jobs {max_jobs}: at least one job must be able to run", "pass --max-jobs 1 or more")
    ws = Path(workspace).expanduser() if workspace else default_workspace()
    _writable_workspace(ws)
    ws = ws.resolve()
    lock = _lock(ws)
    if reset_jobs:
        for moved in set_aside(ws):
            echo(f"headsync: moved the old job store aside to {moved}")
        try:
            Store(ws).close()  # the new, empty history asked for (the start's check then finds it sound)
        except (OSError, sqlite3.Error) as e:
            lock.close()
            raise UserError(f"cannot create a new job store in {ws}: {e}", "check the workspace folder") from None
    from .executors import make_executor

    try:
        runner = make_executor(executor, ray_address)
    except UserError:
        lock.close()
        raise
    max_jobs = int(max_jobs or os.environ.get("HEADSYNC_MAX_JOBS") or runner.capacity() or 1)
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
        runner.close()
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror}", "pass --port 0 for a free port")
    sock.listen(128)
    bound = sock.getsockname()[1]
    url = f"http://{'[' + host + ']' if family == socket.AF_INET6 else host}:{bound}"
    token = secrets.token_urlsafe(32)
    server_json = ws / "server.json"

    def started() -> None:
        write_server_json(server_json, {"url": url, "token": token, "pid": os.getpid()})
        echo(f"headsync: serving on {url} (workspace {ws}; token in {server_json}; "
             f"{max_jobs} job(s) at a time on the {runner.name} executor). Stop with Ctrl-C.")

    def stopped() -> None:
        try:
            if json.loads(server_json.read_text()).get("pid") == os.getpid():
                server_json.unlink()
        except (OSError, ValueError):
            pass
        echo("headsync: stopped")

    min_free_mb = float(os.environ.get("HEADSYNC_MIN_FREE_MB") or 64)
    try:
        service = Service(ws, token, max_jobs=max_jobs, grace_s=grace_s, min_free_mb=min_free_mb,
                          executor=runner)
    except (UserError, OSError, sqlite3.Error) as e:
        sock.close()
        lock.close()
        runner.close()
        if isinstance(e, UserError):
            raise
        from .worker import os_error

        known = os_error(e) if isinstance(e, OSError) else None
        raise UserError(f"cannot open the workspace {ws}: {known['message'] if known else e}",
                        known["hint"] if known else "check the workspace folder (or pass another --workspace)")
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


def add_arguments(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of ``headsync serve`` (also ``python -m headsync.service``)."""
    ap.add_argument("--host", default="127.0.0.1", help="loopback only (default 127.0.0.1)")
    ap.add_argument("--port", type=int, default=0, help="default 0: a free port (written to server.json)")
    ap.add_argument("--workspace", default=None, help=f"default $HEADSYNC_WORKSPACE or {DEFAULT_WORKSPACE}")
    ap.add_argument("--max-jobs", type=int, default=None, help="jobs at a time (default $HEADSYNC_MAX_JOBS or 1)")
    ap.add_argument("--reset-jobs", action="store_true",
                    help="start with an empty job history: the old jobs.db is moved aside, not deleted")
    ap.add_argument("--executor", choices=("local", "ray"), default="local",
                    help="where jobs run: local subprocesses (default) or tasks on a Ray cluster (docs/cluster.md)")
    ap.add_argument("--ray-address", default=None, metavar="HOST:PORT",
                    help="the Ray cluster's head (--executor ray; default: RAY_ADDRESS or a cluster on this machine)")
    return ap


def run(args: argparse.Namespace) -> int:
    """``serve`` with parsed :func:`add_arguments` flags; exit code 2 (message and hint) on bad input."""
    try:
        return serve(args.host, args.port, args.workspace, max_jobs=args.max_jobs, reset_jobs=args.reset_jobs,
                     executor=args.executor, ray_address=args.ray_address)
    except UserError as e:
        print(f"error: {e.message}", file=sys.stderr)
        if e.hint:
            print(f"hint: {e.hint}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    """``python -m headsync.service``: the same as ``headsync serve``."""
    ap = add_arguments(argparse.ArgumentParser(prog="headsync serve", description="the local backend service"))
    return run(ap.parse_args(argv))
