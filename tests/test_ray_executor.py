"""The Ray executor on a real Ray cluster on this machine (a head and two one-CPU worker nodes on
127.0.0.1): a batch of renders of the trained sample (``headsync batch``) runs through the service, one Ray worker process is
SIGKILLed mid-render, and every job ends as docs/cluster.md says: the killed attempt is retried (once) on
a worker that lives, so all four succeed with all their frames and nothing half-written left.

``slow`` (a few minutes on two cores); skipped without Ray (the optional extra ``ray``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ray_cluster import RayCluster, ray_or_skip
from service_harness import ServiceProc, service_env, wait_for
from test_service_slow import tiny_preset
from headsync.core.package_data import sample_dir

pytestmark = pytest.mark.slow

SAMPLE = sample_dir()
SHOTS = 4


def ray_service(workspace: Path, cluster: RayCluster, max_jobs: int) -> ServiceProc:
    return ServiceProc(workspace, max_jobs=max_jobs, grace_s=5.0, test_tasks=False,
                       command=["-m", "headsync.service", "--workspace", str(workspace), "--executor", "ray",
                                "--ray-address", cluster.address])


def row(workspace: Path, job_id: str) -> dict:
    from headsync.service.store import Store

    store = Store(workspace)
    try:
        return store.get(job_id) or {}
    finally:
        store.close()


def test_a_batch_of_renders_survives_a_killed_ray_worker(tmp_path):
    ray_or_skip()
    videos = sorted(SAMPLE.glob("*.mp4"))
    if not videos:
        pytest.skip("the bundled sample video is missing (run sample_projects/make_sample.py)")
    ws = tmp_path / "ws"
    preset = tiny_preset(tmp_path / "tiny.toml")
    # the trained sample, made once with the local executor
    s = ServiceProc(ws, max_jobs=1, test_tasks=False)
    try:
        pid = s.submit("prepare", "astro", video=str(videos[0]), preset=str(preset), fps=5.0, resolution=128)
        tid = s.submit("train", "astro", preset=str(preset), run="tiny")
        for j in (pid, tid):
            job = s.wait(j, timeout=900)
            assert job["state"] == "succeeded", (job, s.log(j)[-3000:])
    finally:
        assert s.stop() == 0

    cluster = RayCluster(service_env(test_tasks=False), workers=2)
    try:
        cluster.wait_for_nodes(2)
        s = ray_service(ws, cluster, max_jobs=2)
        try:
            # the batch, through `headsync batch` (it finds the service through server.json); the last shot
            # names curves that do not exist: refused, reported, and the others go on
            shots = [{"subject": "astro", "audio": str(SAMPLE / "dub.wav"), "run": "tiny", "out": f"renders/shot{i}",
                      "shot": f"shot{i}", "portrait": False} for i in range(SHOTS)]
            shots.append({"subject": "astro", "audio": str(SAMPLE / "dub.wav"), "run": "tiny",
                          "curves": str(tmp_path / "missing.json"), "out": "renders/bad"})
            (tmp_path / "shots.json").write_text(json.dumps(shots))
            batch = subprocess.Popen([sys.executable, "-m", "headsync.cli", "batch", str(tmp_path / "shots.json"),
                                      "--workspace", str(ws)], env=s.env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
            def renders() -> list[str] | None:
                jobs = [j for j in s.client.get("/api/v1/jobs").json() if j["kind"] == "render"]
                return [j["id"] for j in sorted(jobs, key=lambda j: j["created"])] if len(jobs) == SHOTS else None

            ids = wait_for(renders, timeout=60, what="the batch's jobs")
            # SIGKILL the Ray worker process of the first render once it is rendering frames
            victim = ids[0]
            wait_for(lambda: (s.job(victim)["progress"].get("fraction") or 0) > 0 and row(ws, victim).get("pid")
                     or s.job(victim)["state"] != "running", timeout=600, what="the first render's frames")
            assert s.job(victim)["state"] == "running", s.log(victim)[-3000:]
            killed = row(ws, victim)["pid"]
            os.kill(killed, signal.SIGKILL)
            report, _ = batch.communicate(timeout=900)
            assert batch.returncode == 1, report
            assert f"{SHOTS} of {SHOTS + 1} shot(s) succeeded" in report, report
            assert re.search(rf"FAILED shot {SHOTS} \(astro, renders/bad\): .*missing\.json", report), report
            jobs = {j: s.wait(j, timeout=60) for j in ids}
            assert len(jobs) == SHOTS
            for j, job in jobs.items():
                assert job["state"] == "succeeded", (job, s.log(j)[-3000:])
                art = job["artifacts"]
                frames = sorted(Path(art["frames"]).glob("*.png"))
                assert art["frame_count"] > 0 and len(frames) == art["frame_count"], (j, art)
                assert Path(art["video"]).is_file()
                assert not list(Path(art["out"]).parent.glob(".*.tmp-*")), "nothing half-written left"
            log = s.log(victim)
            assert f"the worker of the previous attempt (pid {killed}) died" in log, log[-3000:]
            assert row(ws, victim)["pid"] != killed
            assert s.client.get("/api/v1/health").json()["running"] == 0
        finally:
            assert s.stop() == 0
    finally:
        cluster.stop()
