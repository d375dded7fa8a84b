"""The Ray executor: throughput of a batch of renders with one vs two Ray worker nodes, and the overhead of
one job on Ray against the local executor.

    make .venv-ray/.installed    # Ray, as for the tests (make test-ray)
    PYTHONPATH=$PWD/.venv-ray:$PWD/backend unshare -rn sh -c \
        'ip link set lo up; .venv/bin/python benchmarks/bench_ray.py [--shots 4] [--workspace DIR]'

It runs only in a network namespace whose sole interface is loopback (as the tests: Ray would listen on
the machine's network address otherwise). It prepares and trains the bundled sample once with the tiny
test preset (``--workspace`` keeps it for a rerun), then, on a real Ray cluster on 127.0.0.1 (a head without CPUs and N one-CPU worker nodes, stopped
at the end whatever happens):
- batch: ``--shots`` renders submitted at once, wall time from the first submission to the last finish,
  with 1 and with 2 worker nodes (``max_jobs`` = the nodes);
- overhead: a job of the test-only kind ``test_sleep`` (0.5 s of sleep), its created-to-finished time on
  the local executor and on Ray (the Ray one includes starting a fresh worker process: ``max_calls=1``).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from ray_cluster import RayCluster, loopback_only_problem  # noqa: E402
from service_harness import ServiceProc, service_env  # noqa: E402
from test_service_slow import tiny_preset  # noqa: E402
from headsync.core.package_data import sample_dir  # noqa: E402

SAMPLE = sample_dir()


def seconds(job: dict) -> float:
    f = "%Y-%m-%dT%H:%M:%S.%fZ"
    return (dt.datetime.strptime(job["finished"], f) - dt.datetime.strptime(job["created"], f)).total_seconds()


def trained(ws: Path, preset: Path) -> None:
    if (ws / "subjects" / "astro" / "models" / "tiny" / "checkpoint.pt").is_file():
        return
    s = ServiceProc(ws, test_tasks=False)
    try:
        for kind, params in (("prepare", dict(video=str(next(SAMPLE.glob("*.mp4"))), preset=str(preset), fps=5.0,
                                              resolution=128)), ("train", dict(preset=str(preset), run="tiny"))):
            job = s.wait(s.submit(kind, "astro", **params), timeout=1800)
            assert job["state"] == "succeeded", job
    finally:
        s.stop()


def serve(ws: Path, executor: list[str], max_jobs: int) -> ServiceProc:
    return ServiceProc(ws, max_jobs=max_jobs, command=["-m", "headsync.service", "--workspace", str(ws), *executor])


def batch(s: ServiceProc, shots: int, tag: str) -> float:
    t0 = time.monotonic()
    ids = [s.submit("render", "astro", audio=str(SAMPLE / "dub.wav"), run="tiny", out=f"renders/{tag}{i}",
                    shot=f"{tag}{i}", portrait=False) for i in range(shots)]
    for j in ids:
        job = s.wait(j, timeout=1800)
        assert job["state"] == "succeeded", (job, s.log(j)[-2000:])
    return time.monotonic() - t0


def overhead(s: ServiceProc, n: int = 3) -> float:
    times = []
    for i in range(n):
        job = s.wait(s.submit(subject=f"sleep{i}", seconds=0.5, steps=1), timeout=300)
        assert job["state"] == "succeeded", job
        times.append(seconds(job))
    return sorted(times)[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shots", type=int, default=4)
    ap.add_argument("--workspace")
    args = ap.parse_args()
    problem = loopback_only_problem()
    if problem:
        sys.exit(f"bench_ray: {problem}")
    root = Path(args.workspace or tempfile.mkdtemp(prefix="bench-ray-"))
    root.mkdir(parents=True, exist_ok=True)
    ws = root / "ws"
    trained(ws, tiny_preset(root / "tiny.toml"))
    out: dict = {"shots": args.shots}
    s = serve(ws, [], 1)
    try:
        out["job_local_s"] = overhead(s)
    finally:
        s.stop()
    cluster = RayCluster(service_env(), workers=1)
    try:
        cluster.wait_for_nodes(1)
        s = serve(ws, ["--executor", "ray", "--ray-address", cluster.address], 1)
        try:
            out["job_ray_s"] = overhead(s)
            out["batch_1_worker_s"] = batch(s, args.shots, "one")
        finally:
            s.stop()
        cluster.add_worker()
        cluster.wait_for_nodes(2)
        s = serve(ws, ["--executor", "ray", "--ray-address", cluster.address], 2)
        try:
            out["batch_2_workers_s"] = batch(s, args.shots, "two")
        finally:
            s.stop()
    finally:
        cluster.stop()
    out["throughput_ratio_2_vs_1"] = out["batch_1_worker_s"] / out["batch_2_workers_s"]
    out["ray_overhead_s"] = out["job_ray_s"] - out["job_local_s"]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
