"""Latency of ``GET /api/v1/jobs/ID`` while a training job runs (the add-on polls it from Blender's UI thread).

    python benchmarks/bench_service.py [--requests 500] [--workspace DIR] [--preset preview]

Starts the service (``python -m headsync.service``) on a workspace, prepares the bundled sample into the
subject ``bench`` unless it is prepared already, starts a ``train`` job, waits until it is training
(progress past iteration 0), then times ``--requests`` polls of its job over loopback two ways: one
kept-alive connection (httpx) and a new connection per request (urllib, as the add-on does),
``--interval`` seconds apart. Prints
p50/p90/p99/max in milliseconds and the train job's progress before and after, then cancels the job.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import httpx
from headsync.core.package_data import sample_dir

REPO = Path(__file__).resolve().parents[1]
SAMPLE = sample_dir()


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(q / 100 * len(xs) + 0.5)) - 1))]


def summary(name: str, xs: list[float]) -> dict:
    ms = [x * 1000 for x in xs]
    d = {"n": len(ms), "p50_ms": round(statistics.median(ms), 2), "p90_ms": round(pct(ms, 90), 2),
         "p99_ms": round(pct(ms, 99), 2), "max_ms": round(max(ms), 2), "mean_ms": round(statistics.fmean(ms), 2)}
    print(f"{name:>28}: n={d['n']} p50={d['p50_ms']:.2f} ms p90={d['p90_ms']:.2f} ms "
          f"p99={d['p99_ms']:.2f} ms max={d['max_ms']:.2f} ms")
    return d


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--workspace", type=Path, default=None, help="default: a temporary folder")
    ap.add_argument("--preset", default="preview", help="preset of prepare and train")
    ap.add_argument("--subject", default="bench", help="subject name (prepared from the sample if missing)")
    ap.add_argument("--interval", type=float, default=0.02, help="seconds between polls (the add-on: 0.25-0.5)")
    ap.add_argument("--json", type=Path, help="also write the figures to this file")
    a = ap.parse_args()
    ws = (a.workspace or Path(tempfile.mkdtemp(prefix="headsync-bench-")) / "ws").resolve()
    ws.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO / "backend")}
    proc = subprocess.Popen([sys.executable, "-m", "headsync.service", "--workspace", str(ws)], env=env)
    try:
        for _ in range(600):
            try:
                info = json.loads((ws / "server.json").read_text())
                if info["pid"] == proc.pid:
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.1)
        else:
            raise SystemExit("the service did not start")
        url, token = info["url"], info["token"]
        c = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)

        def wait(jid: str, until, timeout: float) -> dict:
            t_end = time.monotonic() + timeout
            while time.monotonic() < t_end:
                j = c.get(f"/api/v1/jobs/{jid}").json()
                if until(j):
                    return j
                time.sleep(0.5)
            raise SystemExit(f"timed out: {j}")

        if not (ws / "subjects" / a.subject / "subject.json").exists():
            video = sorted(SAMPLE.glob("*.mp4"))[0]
            r = c.post("/api/v1/jobs", json={"kind": "prepare", "subject": a.subject,
                                             "params": {"video": str(video), "preset": a.preset}})
            r.raise_for_status()
            t0 = time.monotonic()
            j = wait(r.json()["id"], lambda j: j["state"] not in ("queued", "running"), 1800)
            print(f"prepare: {j['state']} in {time.monotonic() - t0:.0f} s")
            if j["state"] != "succeeded":
                print(j["error"])
                return 1
        r = c.post("/api/v1/jobs", json={"kind": "train", "subject": a.subject,
                                         "params": {"preset": a.preset, "run": f"bench{int(time.time())}"}})
        r.raise_for_status()
        jid = r.json()["id"]
        before = wait(jid, lambda j: (j["progress"]["stage"] == "train" and (j["progress"]["done"] or 0) > 0)
                      or j["state"] not in ("queued", "running"), 900)
        if before["state"] != "running":
            print(f"the train job is {before['state']}: {before['error']}")
            return 1
        print(f"train running: stage {before['progress']['stage']} {before['progress']['done']}/"
              f"{before['progress']['total']}")
        path = f"/api/v1/jobs/{jid}"
        for _ in range(20):  # warm-up
            c.get(path)
        keep = []
        for _ in range(a.requests):
            t = time.perf_counter()
            r = c.get(path)
            keep.append(time.perf_counter() - t)
            assert r.status_code == 200 and r.json()["state"] == "running"
            time.sleep(a.interval)
        fresh = []
        req = urllib.request.Request(url + path, headers={"Authorization": f"Bearer {token}"})
        for _ in range(a.requests):
            t = time.perf_counter()
            with urllib.request.urlopen(req, timeout=30) as resp:
                body = resp.read()
            fresh.append(time.perf_counter() - t)
            assert json.loads(body)["state"] == "running"
            time.sleep(a.interval)
        after = c.get(path).json()
        print(f"train still running: stage {after['progress']['stage']} {after['progress']['done']}/"
              f"{after['progress']['total']}")
        res = {"keep_alive": summary("GET /jobs/ID, keep-alive", keep),
               "new_connection": summary("GET /jobs/ID, new connection", fresh),
               "during": {"kind": "train", "before": before["progress"], "after": after["progress"]},
               "cpus": os.cpu_count(), "load_avg": os.getloadavg()}
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        if a.json:
            a.json.write_text(json.dumps(res, indent=1))
        c.post(f"/api/v1/jobs/{jid}/cancel")
        wait(jid, lambda j: j["state"] != "running", 60)
        return 0
    finally:
        proc.terminate()
        proc.wait(timeout=60)


if __name__ == "__main__":
    sys.exit(main())
