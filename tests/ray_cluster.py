"""A real Ray cluster on this machine for the Ray executor's tests and benchmarks: a head with no CPUs of
its own (it only schedules) and N worker nodes of one CPU each, all on 127.0.0.1, each ``ray start`` a
separate node with its own raylet and worker processes.

Ray registers its nodes on the machine's network address whatever ``--node-ip-address`` says, so a cluster
starts only inside a network namespace whose sole interface is loopback (``make test-ray`` runs the tests
under ``unshare -rn``): :func:`ray_cluster_or_skip` skips elsewhere, and without Ray (the optional extra).

Stopping stops this cluster only: every process it started carries a marker in its environment
(:data:`MARKER`), and those are the ones signalled. Never ``ray stop``: it ends every Ray process of the user.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

MARKER = "HEADSYNC_TEST_RAY_CLUSTER"  # env var whose value names one cluster's processes
SIOCGIFFLAGS, IFF_UP, IFF_LOOPBACK = 0x8913, 0x1, 0x8


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def interfaces_up() -> dict[str, bool]:
    """The network interfaces of this process's namespace that are up: name -> is loopback. (Not
    /sys/class/net: it shows the namespace that mounted /sys, not this one.)"""
    up = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            req = struct.pack("16sH", name.encode()[:15], 0)
            flags = struct.unpack("16sH", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, req)[:18])[1]
            if flags & IFF_UP:
                up[name] = bool(flags & IFF_LOOPBACK)
    return up


def loopback_only_problem() -> str | None:
    """Why a cluster must not start here (an interface other than loopback is up, or loopback is down),
    or None."""
    up = interfaces_up()
    others = sorted(n for n, lo in up.items() if not lo)
    if others:
        return (f"network interface(s) {', '.join(others)} up: Ray would listen on them; run the Ray tests in "
                f"a network namespace with only loopback (make test-ray, which uses unshare -rn)")
    if not any(up.values()):
        return "the loopback interface is down in this network namespace (ip link set lo up)"
    return None


def ray_cluster_or_skip() -> None:
    if not ray_available():
        pytest.skip("Ray is not installed (the optional extra: make test-ray installs it into .venv-ray)")
    problem = loopback_only_problem()
    if problem:
        pytest.skip(problem)


def tcp_listeners() -> list[tuple[str, int]]:
    """Every listening TCP socket of this network namespace: (address, port), from /proc/net/tcp{,6}."""
    out = []
    for name, width in (("tcp", 8), ("tcp6", 32)):
        try:
            lines = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            if state != "0A":  # LISTEN
                continue
            addr, port = local.split(":")
            raw = bytes.fromhex(addr)
            # the kernel writes each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            out.append((socket.inet_ntop(socket.AF_INET if width == 8 else socket.AF_INET6, raw), int(port, 16)))
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time in clock ticks) of ``pid``, or None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[1]), int(fields[19])


def cluster_processes(tag: str, temp_dir: str, known: set[tuple[int, int]]) -> set[tuple[int, int]]:
    """One cluster's live processes as (pid, start time): those with ``MARKER=tag`` in their environment or
    ``temp_dir`` in their command line (the nodes), their descendants (Ray's agents and workers, which
    overwrite both with their process titles), and those of ``known`` still alive (reparented to init)."""
    tag_b, dir_b = f"{MARKER}={tag}".encode(), temp_dir.encode()
    procs: dict[int, tuple[int, int]] = {}  # pid -> (parent, start)
    found: set[tuple[int, int]] = set()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        pid, st = int(d.name), _stat(int(d.name))
        if st is None or st[0] == "Z":
            continue
        procs[pid] = (st[1], st[2])
        try:
            if tag_b in (d / "environ").read_bytes().split(b"\0") or dir_b in (d / "cmdline").read_bytes():
                found.add((pid, st[2]))
        except OSError:
            pass
    found |= {k for k in known if procs.get(k[0], (0, -1))[1] == k[1]}
    grew = True
    while grew:
        ours = {p for p, _ in found}
        more = {(p, start) for p, (parent, start) in procs.items() if parent in ours} - found
        found |= more
        grew = bool(more)
    return found


class RayCluster:
    """``ray start --head`` + ``workers`` × ``ray start --address``; ``env`` is every node's environment
    (the PYTHONPATH that finds headsync, as on a real cluster's nodes)."""

    def __init__(self, env: dict[str, str], workers: int = 2, cpus_per_worker: int = 1):
        self.env = dict(env)
        self.env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        self.tag = uuid.uuid4().hex[:12]
        self.env[MARKER] = self.tag
        self.known: set[tuple[int, int]] = set()
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.temp_dir = f"/tmp/hsray-{self.tag}"  # short: Ray's socket paths must fit in 107 bytes
        atexit.register(self.stop)
        self._ray("start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(self.port),
                  "--num-cpus", "0", "--num-gpus", "0", "--include-dashboard", "false",
                  "--temp-dir", self.temp_dir, "--disable-usage-stats")
        for _ in range(workers):
            self.add_worker(cpus_per_worker)

    def _ray(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        r = subprocess.run([sys.executable, "-m", "ray.scripts.scripts", *args], env=self.env,
                           capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"ray {' '.join(args)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
        return r

    def add_worker(self, cpus: int = 1) -> None:
        self._ray("start", "--address", self.address, "--node-ip-address", "127.0.0.1", "--num-cpus", str(cpus),
                  "--num-gpus", "0", "--disable-usage-stats")

    def wait_for_nodes(self, n: int, timeout: float = 60) -> None:
        """Until ``n`` worker nodes (CPU > 0) are alive."""
        code = ("import ray,sys; ray.init(address=sys.argv[1], log_to_driver=False); "
                "print(sum(1 for x in ray.nodes() if x['Alive'] and x['Resources'].get('CPU', 0) > 0))")
        deadline = time.monotonic() + timeout
        while True:
            r = subprocess.run([sys.executable, "-c", code, self.address], env=self.env, capture_output=True,
                               text=True, timeout=120)
            if r.returncode == 0 and r.stdout.strip().splitlines()[-1:] == [str(n)]:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{n} Ray worker nodes not up after {timeout}s: {r.stdout} {r.stderr[-2000:]}")
            time.sleep(1)

    def pids(self) -> list[int]:
        """The live processes of this cluster."""
        self.known = cluster_processes(self.tag, self.temp_dir, self.known)
        return sorted(p for p, _ in self.known)

    def _gone_within(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while self.pids():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True

    def _signal(self, sig: int) -> None:
        for p in self.pids():
            try:
                os.kill(p, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def stop(self, grace_s: float = 5) -> None:
        """End this cluster's processes (SIGTERM; SIGKILL to those left after ``grace_s``: Ray's agents
        ignore SIGTERM), nothing else, and remove its temporary folder."""
        self._signal(signal.SIGTERM)
        if not self._gone_within(grace_s):
            self._signal(signal.SIGKILL)
            if not self._gone_within(10):
                raise RuntimeError(f"Ray processes {self.pids()} outlived SIGKILL")
        shutil.rmtree(self.temp_dir, ignore_errors=True)
