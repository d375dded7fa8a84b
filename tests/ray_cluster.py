"""A real Ray cluster on this machine for the Ray executor's tests and benchmarks: a head with no CPUs of
its own (it only schedules) and N worker nodes of one CPU each, all on 127.0.0.1, each ``ray start`` a
separate node with its own raylet and worker processes. Always stopped (``ray stop --force``), also at exit.

Ray is an optional extra (``pip install 'headsync[ray]'``): :func:`ray_or_skip` skips without it.
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import time

import pytest



def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def ray_or_skip() -> None:
    if not ray_available():
        pytest.skip("Ray is not installed (the optional extra: pip install 'headsync[ray]')")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayCluster:
    """``ray start --head`` + ``workers`` × ``ray start --address``; ``env`` is every node's environment
    (the PYTHONPATH that finds headsync, as on a real cluster's nodes)."""

    def __init__(self, env: dict[str, str], workers: int = 2, cpus_per_worker: int = 1):
        self.env = dict(env)
        self.env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.temp_dir = f"/tmp/rayh16-{os.getpid()}"  # short: Ray's socket paths must fit in 107 bytes
        atexit.register(self.stop)
        self._ray("start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(self.port),
                  "--num-cpus", "0", "--num-gpus", "0", "--include-dashboard", "false",
                  "--temp-dir", self.temp_dir, "--disable-usage-stats")
        for _ in range(workers):
            self.add_worker(cpus_per_worker)

    def _ray(self, *args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess:
        r = subprocess.run([sys.executable, "-m", "ray.scripts.scripts", *args], env=self.env,
                           capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
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

    def stop(self) -> None:
        try:
            self._ray("stop", "--force", check=False, timeout=120)
        except (OSError, subprocess.TimeoutExpired):
            pass
