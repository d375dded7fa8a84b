"""The service running the real pipeline: prepare the bundled sample, train it with a tiny preset
(cancelled once and resumed from its checkpoint), render new dialogue, eval, list the subject; and a
schema-driven fuzz run.

Both are ``slow``: minutes on two CPU cores.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from service_harness import REPO, ServiceProc, wait_for
from toml_write import tiny_nerf_preset
from headsync.core.package_data import presets_dir, sample_dir

pytestmark = pytest.mark.slow

SAMPLE = sample_dir()


def tiny_preset(path: Path) -> Path:
    """The ``preview`` preset with a few dozen training iterations of a 64-pixel head (a checkpoint every 10)
    and a few dozen steps of the audio-visual encoder."""
    return tiny_nerf_preset(presets_dir() / "preview.toml", path,
                            train=dict(coarse_iters=30, fine_iters=6, checkpoint_every=10, log_every=5, rays=256,
                                       resolution=64),
                            ave=dict(sync_steps=20, ave_steps=30, sync_batch=16, ave_batch=8))


def test_prepare_and_train_the_sample_through_the_service(tmp_path):
    videos = sorted(SAMPLE.glob("*.mp4"))
    if not videos:
        pytest.skip("the bundled sample video is missing (run sample_projects/make_sample.py)")
    preset = tiny_preset(tmp_path / "tiny.toml")
    # the real device probe (a short-lived Python importing torch), done before server.json appears
    s = ServiceProc(tmp_path / "ws", max_jobs=1, grace_s=5.0, test_tasks=False,
                    extra_env={"HEADSYNC_SERVICE_DEVICE": ""})
    try:
        t0 = time.monotonic()
        h = s.client.get("/api/v1/health").json()
        assert time.monotonic() - t0 < 1.0, "health never waits for the probe"
        assert h["device"] in ("cpu", "cuda") and (h["gpu"] is None) == (h["device"] == "cpu"), h
        # prepare: the sample video -> WORKSPACE/subjects/astro
        pid = s.submit("prepare", "astro", video=str(videos[0]), preset=str(preset), fps=5.0, resolution=128)
        # a train submitted while its subject's prepare is still queued/running is accepted
        early = s.client.post("/api/v1/jobs", json={"kind": "train", "subject": "astro",
                                                    "params": {"preset": str(preset), "run": "tiny"}})
        assert early.status_code == 201, early.text
        j = s.wait(pid, timeout=900)
        assert j["state"] == "succeeded", (j, s.log(pid)[-3000:])
        assert Path(j["params"]["subject"]) == s.workspace / "subjects" / "astro"
        assert (s.workspace / "subjects" / "astro" / "subject.json").is_file()
        log = s.log(pid)
        assert "succeeded" in log and "[landmarks]" in log

        # the early train runs next; cancel it once it saved a checkpoint, then resume it
        tid = early.json()["id"]
        ckpt = s.workspace / "subjects" / "astro" / "models" / "tiny" / "checkpoint.pt"
        wait_for(lambda: ckpt.exists() or s.job(tid)["state"] not in ("queued", "running"), timeout=600,
                 what="the first checkpoint")
        assert s.job(tid)["state"] == "running", s.log(tid)[-3000:]
        r = s.client.post(f"/api/v1/jobs/{tid}/cancel")
        assert r.status_code == 200
        j = s.wait(tid, timeout=30)
        assert j["state"] == "cancelled" and j["resumable"] is True, j
        assert not list(ckpt.parent.glob(".*.tmp-*")), "no half-written checkpoint left"
        r = s.client.post(f"/api/v1/jobs/{tid}/resume")
        assert r.status_code == 201, r.text
        rid = r.json()["id"]
        j = s.wait(rid, timeout=900)
        assert j["state"] == "succeeded", (j, s.log(rid)[-3000:])
        assert j["params"]["resume"] is True
        art = j["artifacts"]
        assert Path(art["checkpoint"]) == ckpt and ckpt.is_file()
        assert art["metrics"].get("resumed_from"), art["metrics"]
        assert j["progress"]["fraction"] == 1.0

        # render the new dialogue into a folder of the workspace, then eval the run
        rj = s.submit("render", "astro", audio=str(SAMPLE / "dub.wav"), run="tiny", out="renders/dub")
        ej = s.submit("eval", "astro", run="tiny")
        j = s.wait(rj, timeout=900)
        assert j["state"] == "succeeded", (j, s.log(rj)[-3000:])
        out = s.workspace / "renders" / "dub"
        assert Path(j["artifacts"]["out"]) == out
        assert Path(j["artifacts"]["video"]).is_file() and Path(j["artifacts"]["curves"]).is_file()
        assert len(list(Path(j["artifacts"]["frames"]).glob("*.png"))) == j["artifacts"]["frame_count"]
        j = s.wait(ej, timeout=900)
        assert j["state"] == "succeeded", (j, s.log(ej)[-3000:])

        subjects = {x["name"]: x for x in s.client.get("/api/v1/subjects").json()}
        assert subjects["astro"]["prepared"] and "tiny" in subjects["astro"]["runs"]
        assert "landmarks" in subjects["astro"]["stages"]
    finally:
        assert s.stop() == 0


def test_fuzz_the_api_with_schemathesis():
    """Schema-driven fuzzing of every endpoint (benchmarks/fuzz_service.py), every string parameter also
    taking hostile paths and names: no 5xx, responses match the schema, nothing queued with an output
    outside the workspace, and nothing outside it (a sentinel tree, an unnamed subject) changed on disk."""
    pytest.importorskip("schemathesis")
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "fuzz_service.py"),
                        "--max-examples", os.environ.get("HEADSYNC_FUZZ_EXAMPLES", "100")],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-5000:] + r.stderr[-3000:]
    assert "5xx: 0" in r.stdout and "outputs outside the workspace: 0" in r.stdout
    assert "writes outside the workspace: 0" in r.stdout  # the real file system, compared byte for byte
    assert int(re.search(r"requests carrying a hostile path or name: (\d+)", r.stdout)[1]) > 0
