"""The local service over real HTTP on loopback, started in a subprocess as a user would start it.

Most tests use the test-only job kind ``test_sleep`` (``tests/plugins/headsync_test_tasks.py``, a plugin
the harness puts on the service's path) so that cancel, SIGKILL and restart need no minutes of real work;
the real ``prepare`` and ``train`` run in ``test_service_slow.py``. The harness is ``service_harness.py``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from headsync.core.package_data import sample_dir

from service_harness import BACKEND, REPO, ServiceProc, pid_alive, wait_for, worker_pid  # noqa: F401


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    s = ServiceProc(tmp_path_factory.mktemp("svc") / "ws", max_jobs=2, grace_s=2.0)
    yield s
    s.stop()


# ---- server.json and auth --------------------------------------------------------------------
def test_server_json_is_private_and_points_at_loopback(svc):
    sj = svc.workspace / "server.json"
    assert stat.S_IMODE(sj.stat().st_mode) == 0o600
    assert set(svc.info) == {"url", "token", "pid"}
    assert svc.url.startswith("http://127.0.0.1:") and not svc.url.endswith(":0")
    assert len(svc.token) >= 32
    assert "serving on http://127.0.0.1:" in svc.output()


@pytest.mark.parametrize("path", ["/api/v1/health", "/api/v1/jobs", "/api/v1/subjects", "/api/v1/openapi.json",
                                  "/api/v1/jobs/0123456789abcdef", "/api/v1/nowhere", "/docs"])
@pytest.mark.parametrize("auth", [None, "Bearer wrong-token", "Basic Zm9vOmJhcg==", "Bearer", ""])
def test_every_request_needs_the_token(svc, path, auth):
    headers = {} if auth is None else {"Authorization": auth}
    r = httpx.get(svc.url + path, headers=headers)
    assert r.status_code == 401
    assert r.json()["message"] == "missing or wrong token"
    assert r.headers["www-authenticate"] == "Bearer"


def test_post_without_token_is_refused_before_anything_happens(svc):
    r = httpx.post(svc.url + "/api/v1/jobs", json={"kind": "test_sleep", "subject": "intruder"})
    assert r.status_code == 401
    assert not (svc.workspace / "subjects" / "intruder").exists()
    assert all(j["subject"] != "intruder" for j in svc.client.get("/api/v1/jobs").json())


def test_health_and_openapi(svc):
    h = svc.client.get("/api/v1/health").json()
    assert h["version"] and h["device"] in ("cpu", "cuda") and "gpu" in h
    assert h["renderers"][:2] == ["nerf", "gaussian"]  # what a train job's "renderer" takes
    assert h["torso_modes"] == ["source", "restorer", "field", "field+restorer"]  # a torso job's "mode"
    doc = svc.client.get("/api/v1/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    for p in ["/api/v1/health", "/api/v1/jobs", "/api/v1/jobs/{job_id}", "/api/v1/jobs/{job_id}/cancel",
              "/api/v1/jobs/{job_id}/resume", "/api/v1/jobs/{job_id}/log", "/api/v1/subjects"]:
        assert p in doc["paths"], p
    kinds = {alt["properties"]["kind"]["enum"][0]
             for alt in doc["paths"]["/api/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]
             ["schema"]["oneOf"]}
    assert {"prepare", "train", "render", "eval"} <= kinds
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


# ---- the life of a job ---------------------------------------------------------------------------
def test_life_of_a_job(svc):
    jid = svc.submit(subject="life", seconds=1.0, steps=10)
    j = svc.job(jid)
    assert j["state"] in ("queued", "running") and j["error"] is None and j["finished"] is None
    assert j["created"].endswith("Z") and "T" in j["created"]
    running = svc.wait(jid, states=("running", "succeeded"))
    seen_fraction = set()
    while running["state"] == "running":
        if running["progress"]["fraction"] is not None:
            seen_fraction.add(running["progress"]["fraction"])
        time.sleep(0.05)
        running = svc.job(jid)
    j = running
    assert j["state"] == "succeeded", j
    assert any(0 < f < 1 for f in seen_fraction), seen_fraction
    assert j["progress"]["fraction"] == 1.0 and j["progress"]["stage"] == "sleep"
    assert "sleeping" in j["progress"]["message"]
    assert j["created"] <= j["started"] <= j["finished"]
    result = Path(j["artifacts"]["result"])
    assert result == svc.workspace / "subjects" / "life" / "result.json" and result.is_file()
    assert j["params"]["subject"] == str(svc.workspace / "subjects" / "life")
    assert j["artifacts"]["psnr"] is None  # a NaN metric comes out as null, not as invalid JSON
    assert j["progress"]["extra"]["loss"] == 0.1
    assert not list(result.parent.glob(".*tmp*"))
    # the log, whole and from an offset
    full = svc.client.get(f"/api/v1/jobs/{jid}/log")
    assert full.status_code == 200 and full.headers["content-type"].startswith("text/plain")
    text = full.text
    assert "succeeded" in text and "[sleep] 10/10" in text
    assert int(full.headers["x-log-size"]) == len(text.encode())
    tail = svc.client.get(f"/api/v1/jobs/{jid}/log", params={"offset": 10})
    assert tail.text == text.encode()[10:].decode()
    assert svc.client.get(f"/api/v1/jobs/{jid}/log", params={"offset": 10**12}).text == ""
    # lists
    assert jid in [x["id"] for x in svc.client.get("/api/v1/jobs", params={"state": "succeeded"}).json()]
    assert jid not in [x["id"] for x in svc.client.get("/api/v1/jobs", params={"state": "running"}).json()]
    names = [s["name"] for s in svc.client.get("/api/v1/subjects").json()]
    assert "life" in names


def test_queued_jobs_of_one_subject_run_one_after_the_other_and_cancel(svc):
    a = svc.submit(subject="same", seconds=3.0, steps=30)
    b = svc.submit(subject="same", seconds=0.2, steps=2)
    svc.wait(a, states=("running",))
    wait_for(lambda: svc.job(a)["progress"]["done"] >= 1, what="a step (a checkpoint to resume from)")
    time.sleep(0.3)
    assert svc.job(b)["state"] == "queued"  # max_jobs=2, but never two jobs of one subject at once
    r = svc.client.post(f"/api/v1/jobs/{b}/cancel")
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    assert svc.client.post(f"/api/v1/jobs/{b}/cancel").json()["state"] == "cancelled"  # idempotent
    t0 = time.monotonic()
    r = svc.client.post(f"/api/v1/jobs/{a}/cancel")
    assert r.status_code == 200
    j = svc.wait(a, timeout=10)
    assert j["state"] == "cancelled" and time.monotonic() - t0 < 2.0, j
    assert j["error"]["message"].startswith("cancelled")
    root = svc.workspace / "subjects" / "same"
    assert not list(root.glob(".partial.tmp-*")) and not (root / "result.json").exists()
    assert "cancel requested" in svc.log(a)
    r = svc.client.post(f"/api/v1/jobs/{a}/resume")
    assert r.status_code == 201, r.text  # test_sleep has resume=


def test_a_worker_that_ignores_cancel_is_killed_after_the_grace_period(svc):
    jid = svc.submit(subject="stubborn", seconds=60.0, steps=60, mode="stubborn")
    svc.wait(jid, states=("running",))
    wait_for(lambda: list((svc.workspace / "subjects" / "stubborn").glob(".partial.tmp-*")), what="partial")
    pid = wait_for(lambda: worker_pid(jid), what="worker")
    t0 = time.monotonic()
    svc.client.post(f"/api/v1/jobs/{jid}/cancel")
    j = svc.wait(jid, timeout=15)
    assert j["state"] == "cancelled"
    assert 1.5 < time.monotonic() - t0 < 6, "SIGKILL after the 2 s grace period"
    assert "killed by signal 9" in j["error"]["message"]
    assert j["resumable"] is False  # it never saved a checkpoint
    r = svc.client.post(f"/api/v1/jobs/{jid}/resume")
    assert r.status_code == 409 and "no checkpoint" in r.json()["message"]
    assert not pid_alive(pid)
    assert not list((svc.workspace / "subjects" / "stubborn").glob(".partial.tmp-*")), "partial output swept"


def test_finished_job_cannot_be_cancelled(svc):
    jid = svc.submit(subject="quick", seconds=0.1, steps=1)
    svc.wait(jid)
    r = svc.client.post(f"/api/v1/jobs/{jid}/cancel")
    assert r.status_code == 409 and "already succeeded" in r.json()["message"]
    r = svc.client.post(f"/api/v1/jobs/{jid}/resume")
    assert r.status_code == 409


# ---- the warm worker (Preview Frame) -------------------------------------------------------------
def _worker_pid_in_log(svc, jid: str) -> int:
    return int(re.search(r"\(worker pid (\d+)\)", svc.log(jid))[1])


def warm_worker_pids(workspace: Path) -> list[int]:
    """The warm workers serving ``workspace`` (found through /proc)."""
    found = []
    for d in Path("/proc").iterdir():
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0") if d.name.isdigit() else []
        except OSError:
            continue
        if b"headsync.service.warm" in cmd and str(workspace).encode() in cmd and pid_alive(int(d.name)):
            found.append(int(d.name))
    return found


def test_warm_jobs_share_one_process_and_behave_like_the_others(svc):
    """Jobs whose kind runs warm (a Preview Frame's render) go to the service's long-lived warm worker: one
    process for job after job, each with its own log, progress and outcome; a cancel stops the job and
    keeps the process; one that ignores the cancel is killed with it, and the next warm job gets a new one."""
    a = svc.submit(subject="warm", seconds=0.2, steps=2, warm=True)
    ja = svc.wait(a, timeout=120)  # the first one waits for the warm worker's imports
    assert ja["state"] == "succeeded" and ja["progress"]["fraction"] == 1.0, ja
    b = svc.submit(subject="warm", seconds=0.2, steps=2, warm=True)
    assert svc.wait(b)["state"] == "succeeded"
    pid = _worker_pid_in_log(svc, a)
    assert _worker_pid_in_log(svc, b) == pid and warm_worker_pids(svc.workspace) == [pid]
    log_a, log_b = svc.log(a), svc.log(b)
    assert "[sleep] 2/2" in log_a and f"job {a}: succeeded" in log_a and b not in log_a
    assert f"job {b}: succeeded" in log_b and a not in log_b
    assert (svc.workspace / "logs" / "warm-worker.log").is_file()
    cold = svc.submit(subject="warm", seconds=0.1, steps=1)  # a job that does not run warm: its own process
    assert svc.wait(cold)["state"] == "succeeded" and _worker_pid_in_log(svc, cold) != pid
    # cancel: the job stops, the process stays warm
    c = svc.submit(subject="warm", seconds=30.0, steps=30, warm=True)
    svc.wait(c, states=("running",))
    wait_for(lambda: svc.job(c)["progress"]["done"] >= 1, what="a step")
    t0 = time.monotonic()
    svc.client.post(f"/api/v1/jobs/{c}/cancel")
    jc = svc.wait(c, timeout=10)
    assert jc["state"] == "cancelled" and time.monotonic() - t0 < 2.0, jc
    assert "cancel requested" in svc.log(c) and pid_alive(pid)
    assert not list((svc.workspace / "subjects" / "warm").glob(".partial.tmp-*"))
    d = svc.submit(subject="warm", seconds=0.1, steps=1, warm=True)
    assert svc.wait(d)["state"] == "succeeded" and _worker_pid_in_log(svc, d) == pid
    # a warm job that ignores the cancel: killed after the grace period, with the warm worker
    e = svc.submit(subject="warm", seconds=60.0, steps=60, mode="stubborn", warm=True)
    svc.wait(e, states=("running",))
    wait_for(lambda: list((svc.workspace / "subjects" / "warm").glob(".partial.tmp-*")), what="partial")
    svc.client.post(f"/api/v1/jobs/{e}/cancel")
    je = svc.wait(e, timeout=15)
    assert je["state"] == "cancelled" and "killed by signal 9" in je["error"]["message"], je
    assert not pid_alive(pid)
    assert not list((svc.workspace / "subjects" / "warm").glob(".partial.tmp-*")), "partial output swept"
    f = svc.submit(subject="warm", seconds=0.1, steps=1, warm=True)
    assert svc.wait(f, timeout=120)["state"] == "succeeded" and _worker_pid_in_log(svc, f) != pid


def test_the_warm_worker_leaves_when_idle_and_with_the_service(tmp_path):
    """New Shot of a trained subject (its captured curves asked for) starts the warm worker ahead of the
    Preview Frame; it leaves when idle (even before it finished loading), a job starts it again, and it
    leaves with the service."""
    from synthetic_head import make_subject

    ws = tmp_path / "ws"
    make_subject(ws / "subjects" / "trained", n_frames=12)
    (ws / "subjects" / "trained" / "models" / "run").mkdir(parents=True)
    (ws / "subjects" / "trained" / "models" / "run" / "checkpoint.pt").write_bytes(b"")
    make_subject(ws / "subjects" / "untrained", n_frames=12)
    s = ServiceProc(ws, extra_env={"HEADSYNC_WARM_IDLE_S": "1"})
    assert s.client.get("/api/v1/subjects/untrained/curves").status_code == 200
    time.sleep(0.5)
    assert not warm_worker_pids(ws)
    assert s.client.get("/api/v1/subjects/trained/curves").status_code == 200
    early = wait_for(lambda: warm_worker_pids(ws), what="the warm worker started for the shot")[0]
    wait_for(lambda: not pid_alive(early), timeout=60, what="the idle warm worker to exit")
    a = s.submit(subject="w", seconds=0.1, steps=1, warm=True)
    assert s.wait(a, timeout=120)["state"] == "succeeded"
    first = _worker_pid_in_log(s, a)
    wait_for(lambda: not pid_alive(first), timeout=10, what="the idle warm worker to exit")
    b = s.submit(subject="w", seconds=5.0, steps=50, warm=True)
    s.wait(b, states=("running",))
    wait_for(lambda: s.job(b)["progress"]["done"] >= 1, timeout=120, what="a step")
    second = _worker_pid_in_log(s, b)
    assert second != first and pid_alive(second)
    assert s.stop(signal.SIGTERM) == 0
    assert not pid_alive(second) and not warm_worker_pids(ws)
    import sqlite3

    row = sqlite3.connect(ws / "jobs.db").execute("SELECT state, error FROM jobs WHERE id=?", (b,)).fetchone()
    assert row[0] == "failed" and "interrupted" in row[1]


# ---- faults --------------------------------------------------------------------------------------
def test_sigkill_of_a_worker_fails_the_job_with_the_reason(svc):
    jid = svc.submit(subject="victim", seconds=60.0, steps=60)
    svc.wait(jid, states=("running",))
    wait_for(lambda: list((svc.workspace / "subjects" / "victim").glob(".partial.tmp-*")), what="partial")
    wait_for(lambda: svc.job(jid)["progress"]["done"] >= 1, what="a step")
    pid = wait_for(lambda: worker_pid(jid), what="worker")
    os.kill(pid, signal.SIGKILL)
    j = svc.wait(jid, timeout=10)
    assert j["state"] == "failed"
    assert j["error"]["message"] == "worker died: killed by signal 9 (SIGKILL)"
    assert j["resumable"] is True  # test_sleep takes resume=, like train
    assert j["finished"] is not None
    assert not list((svc.workspace / "subjects" / "victim").glob(".partial.tmp-*"))
    assert "killed by signal 9" in svc.log(jid)
    # the service goes on: the next job runs
    nxt = svc.submit(subject="victim", seconds=0.1, steps=1)
    assert svc.wait(nxt)["state"] == "succeeded"
    # and the interrupted one is resumed with resume=true
    killed_at = j["progress"]["done"]
    assert killed_at >= 1
    r = svc.client.post(f"/api/v1/jobs/{jid}/resume")
    assert r.status_code == 201 and r.json()["resumed_from"] == jid
    assert_resumes_from_checkpoint(svc, r.json()["id"], killed_at)


def assert_resumes_from_checkpoint(svc, jid, step):
    """The resumed job starts at the step its predecessor had reached (then we stop it)."""
    j = svc.wait(jid, states=("running",))
    assert j["params"]["resume"] is True
    m = wait_for(lambda: re.search(r"resuming at step (\d+)", svc.log(jid)), what="the resume from the checkpoint")
    assert int(m[1]) >= step
    wait_for(lambda: svc.job(jid)["progress"]["done"] >= step, timeout=5, what="progress past the checkpoint")
    svc.client.post(f"/api/v1/jobs/{jid}/cancel")
    assert svc.wait(jid, timeout=10)["state"] == "cancelled"


def test_an_output_folder_the_job_created_is_removed_when_it_fails(svc):
    kept = svc.workspace / "renders" / "kept"
    kept.mkdir(parents=True)
    (kept / "mine.txt").write_text("the user's")
    a = svc.submit(subject="outs", seconds=60.0, steps=60, out="renders/new")
    b = svc.submit(subject="outs2", seconds=60.0, steps=60, out=str(kept))
    for jid in (a, b):
        svc.wait(jid, states=("running",))
        wait_for(lambda: svc.job(jid)["progress"]["done"] >= 1, what="a step")
    assert (svc.workspace / "renders" / "new" / "000000.txt").exists()
    os.kill(wait_for(lambda: worker_pid(a), what="worker"), signal.SIGKILL)
    svc.client.post(f"/api/v1/jobs/{b}/cancel")
    assert svc.wait(a)["state"] == "failed" and svc.wait(b)["state"] == "cancelled"
    assert not (svc.workspace / "renders" / "new").exists(), "the unfinished output folder is removed"
    assert (kept / "mine.txt").read_text() == "the user's", "a folder that existed before is kept"


@pytest.mark.parametrize("mode,message,hint", [
    ("user", "the test job was told to fail", "do not pass mode=user"),
    ("enospc", "disk full: [Errno 28] No space left on device", "free some space"),
    ("crash", "internal error in test_sleep: RuntimeError: boom", "see the job log"),
    ("cuda", "cuda requested but not available", "CUDA build of PyTorch"),
])
def test_job_errors_are_clear(svc, mode, message, hint):
    jid = svc.submit(subject=f"err-{mode}", seconds=0.2, steps=4, mode=mode)
    j = svc.wait(jid, timeout=60)
    assert j["state"] == "failed", j
    assert j["error"]["message"].startswith(message), j["error"]
    assert hint in j["error"]["hint"], j["error"]
    root = svc.workspace / "subjects" / f"err-{mode}"
    assert not list(root.glob(".partial.tmp-*"))


# ---- bad requests ----------------------------------------------------------------------------------
def _prepared_fake_subject(ws: Path, name: str) -> None:
    d = ws / "subjects" / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "subject.json").write_text(json.dumps({"schema": "headsync.subject/1", "stages": {
        "crop": {"done": True}}, "source": {"frame_count": 10}}))
    (d / "models" / "default").mkdir(parents=True, exist_ok=True)


AUDIO = str(sample_dir() / "dub.wav")
OUTSIDE = "/tmp/headsync-escape-test"

BAD = [
    # (id, method, path, body (dict -> JSON, bytes -> raw), expected status, words in the message)
    ("malformed-json", "POST", "/api/v1/jobs", b'{"kind": "prepare",', 400, "not valid JSON"),
    ("not-utf8", "POST", "/api/v1/jobs", b'{"kind": "\xff"}', 400, "not valid JSON"),
    ("nan", "POST", "/api/v1/jobs", b'{"kind":"test_sleep","subject":"n","params":{"seconds":NaN}}', 400, "NaN"),
    ("deep-nesting", "POST", "/api/v1/jobs", b"[" * 100000 + b"]" * 100000, 400, "not valid JSON"),
    ("empty-body", "POST", "/api/v1/jobs", b"", 400, "not valid JSON"),
    ("array-body", "POST", "/api/v1/jobs", [1, 2], 422, "JSON object"),
    ("unknown-kind", "POST", "/api/v1/jobs", {"kind": "explode", "subject": "s"}, 422, "unknown job kind"),
    ("kind-not-string", "POST", "/api/v1/jobs", {"kind": 5, "subject": "s"}, 422, "unknown job kind"),
    ("missing-kind", "POST", "/api/v1/jobs", {"subject": "s"}, 422, "missing field 'kind'"),
    ("missing-subject", "POST", "/api/v1/jobs", {"kind": "train"}, 422, "missing field 'subject'"),
    ("extra-field", "POST", "/api/v1/jobs", {"kind": "train", "subject": "s", "x": 1}, 422, "unknown field"),
    ("subject-slash", "POST", "/api/v1/jobs", {"kind": "test_sleep", "subject": "a/b"}, 422, "subject must be a name"),
    ("subject-dotdot", "POST", "/api/v1/jobs", {"kind": "test_sleep", "subject": ".."}, 422, "subject must be a name"),
    ("subject-dots", "POST", "/api/v1/jobs", {"kind": "test_sleep", "subject": "a..b"}, 422, "subject must be a name"),
    ("subject-absolute", "POST", "/api/v1/jobs", {"kind": "prepare", "subject": "/etc",
                                                  "params": {"video": AUDIO}}, 422, "subject must be a name"),
    ("subject-not-string", "POST", "/api/v1/jobs", {"kind": "train", "subject": ["x"]}, 422, "subject must be a name"),
    ("subject-in-params", "POST", "/api/v1/jobs", {"kind": "train", "subject": "fake",
                                                   "params": {"subject": "/tmp"}}, 422, "top level"),
    ("params-not-object", "POST", "/api/v1/jobs", {"kind": "train", "subject": "fake", "params": "x"}, 422,
     "params must be a JSON object"),
    ("unknown-param", "POST", "/api/v1/jobs", {"kind": "train", "subject": "fake", "params": {"lr": 1}}, 422,
     "unknown parameter"),
    ("wrong-type-bool", "POST", "/api/v1/jobs", {"kind": "train", "subject": "fake",
                                                 "params": {"resume": "yes"}}, 422, "must be a valid boolean"),
    ("wrong-type-int", "POST", "/api/v1/jobs", {"kind": "prepare", "subject": "p",
                                                "params": {"video": AUDIO, "resolution": 2.5}}, 422, "must be a valid integer"),
    ("negative", "POST", "/api/v1/jobs", {"kind": "prepare", "subject": "p",
                                          "params": {"video": AUDIO, "fps": -1}}, 422, "must be greater than or equal to 1"),
    ("bad-choice", "POST", "/api/v1/jobs", {"kind": "train", "subject": "fake",
                                            "params": {"renderer": "raytracer"}}, 422, "must be a registered renderer: nerf"),
    ("missing-param", "POST", "/api/v1/jobs", {"kind": "prepare", "subject": "p"}, 422, "needs the parameter 'video'"),
    ("unknown-subject", "POST", "/api/v1/jobs", {"kind": "train", "subject": "nobody"}, 404, "unknown subject"),
    ("unknown-subject-render", "POST", "/api/v1/jobs", {"kind": "render", "subject": "nobody",
                                                        "params": {"audio": AUDIO}}, 404, "unknown subject"),
    ("missing-file", "POST", "/api/v1/jobs", {"kind": "prepare", "subject": "p",
                                              "params": {"video": "/no/such/video.mp4"}}, 422, "no such file"),
    ("relative-escape", "POST", "/api/v1/jobs", {"kind": "prepare", "subject": "p",
                                                 "params": {"video": "../../../../etc/passwd"}}, 422,
     "escapes the workspace"),
    ("nul-byte", "POST", "/api/v1/jobs", {"kind": "prepare", "subject": "p",
                                          "params": {"video": "/tmp/a\u0000b"}}, 422, "not a usable path"),
    ("lone-surrogate", "POST", "/api/v1/jobs", b'{"kind":"prepare","subject":"p","params":{"video":"/x\\ud800"}}',
     422, "video"),
    ("folder-not-file", "POST", "/api/v1/jobs", {"kind": "prepare", "subject": "p", "params": {"video": "/tmp"}},
     422, "no such file"),
    ("out-absolute-outside", "POST", "/api/v1/jobs", {"kind": "render", "subject": "fake",
                                                      "params": {"audio": AUDIO, "out": OUTSIDE}}, 422,
     "outside the workspace"),
    ("out-relative-escape", "POST", "/api/v1/jobs", {"kind": "render", "subject": "fake",
                                                     "params": {"audio": AUDIO, "out": "../../escape"}}, 422,
     "outside the workspace"),
    ("out-reserved", "POST", "/api/v1/jobs", {"kind": "render", "subject": "fake",
                                              "params": {"audio": AUDIO, "out": "logs/x"}}, 422, "reserved"),
    ("run-escape", "POST", "/api/v1/jobs", {"kind": "train", "subject": "fake",
                                            "params": {"run": "../../../tmp/x"}}, 422, "must be a name"),
    ("preset-escape", "POST", "/api/v1/jobs", {"kind": "train", "subject": "fake",
                                               "params": {"preset": "../../etc/x"}}, 422, "unknown preset"),
    ("huge-body", "POST", "/api/v1/jobs", b"{" + b" " * (2 << 20) + b"}", 413, "too large"),
    ("bad-state", "GET", "/api/v1/jobs?state=exploded", None, 422, "state"),
    ("bad-limit", "GET", "/api/v1/jobs?limit=0", None, 422, "limit"),
    ("negative-offset", "GET", "/api/v1/jobs/{job}/log?offset=-1", None, 422, "offset"),
    ("offset-not-int", "GET", "/api/v1/jobs/{job}/log?offset=abc", None, 422, "offset"),
    ("unknown-job", "GET", "/api/v1/jobs/0123456789abcdef", None, 404, "no job"),
    ("weird-job-id", "GET", "/api/v1/jobs/..%2F..%2Fetc", None, 404, ""),
    ("unknown-job-cancel", "POST", "/api/v1/jobs/nope/cancel", None, 404, "no job"),
    ("unknown-job-log", "GET", "/api/v1/jobs/nope/log", None, 404, "no job"),
    ("resume-not-train", "POST", "/api/v1/jobs/{job}/resume", None, 409, "cannot be resumed"),
    ("unknown-route", "GET", "/api/v2/jobs", None, 404, "not found"),
    ("wrong-method", "DELETE", "/api/v1/jobs", None, 405, "method not allowed"),
]


@pytest.fixture(scope="module")
def bad_env(svc):
    _prepared_fake_subject(svc.workspace, "fake")
    # a finished job of a kind that cannot be resumed: a prepare that fails at once (not a video)
    r = svc.client.post("/api/v1/jobs", json={"kind": "prepare", "subject": "notavideo",
                                              "params": {"video": str(REPO / "pyproject.toml")}})
    assert r.status_code == 201, r.text
    return {"job": r.json()["id"]}


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_requests_get_a_4xx_with_a_message(svc, bad_env, case):
    _, method, path, body, status, words = case
    path = path.replace("{job}", bad_env["job"])
    kw = {}
    if isinstance(body, bytes):
        kw = {"content": body, "headers": {"Content-Type": "application/json"}}
    elif body is not None:
        kw = {"json": body}
    before = {j["id"] for j in svc.client.get("/api/v1/jobs").json()}
    r = svc.client.request(method, path, **kw)
    assert r.status_code == status, r.text
    err = r.json()
    assert set(err) == {"message", "hint"} and words.lower() in err["message"].lower(), err
    assert {j["id"] for j in svc.client.get("/api/v1/jobs").json()} == before, "no job was queued"
    assert not Path(OUTSIDE).exists() and not (svc.workspace.parent / "escape").exists()


def test_chunked_huge_body_is_refused(svc):
    def gen():
        for _ in range(40):
            yield b" " * 65536

    r = svc.client.post("/api/v1/jobs", content=gen(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "too large" in r.json()["message"]


def test_a_real_prepare_on_bad_input_fails_cleanly(svc, bad_env):
    j = svc.wait(bad_env["job"], timeout=120)
    assert j["state"] == "failed" and j["error"]["message"], j
    assert not j["error"]["message"].startswith("worker died")


# ---- restart and shutdown ---------------------------------------------------------------------------
def test_restart_marks_running_jobs_failed_resumable_and_keeps_the_rest(tmp_path):
    ws = tmp_path / "ws"
    s = ServiceProc(ws, max_jobs=1)
    done = s.submit(subject="done", seconds=0.1, steps=1)
    s.wait(done)
    running = s.submit(subject="run", seconds=60.0, steps=60)
    queued = s.submit(subject="later", seconds=0.2, steps=2)
    s.wait(running, states=("running",))
    wait_for(lambda: list((ws / "subjects" / "run").glob(".partial.tmp-*")), what="partial")
    wait_for(lambda: s.job(running)["progress"]["done"] >= 2, what="two steps")
    wpid = wait_for(lambda: worker_pid(running), what="worker")
    s.stop(signal.SIGKILL)  # the service dies without a word
    assert (ws / "server.json").exists()  # stale: the next service replaces it
    wait_for(lambda: not pid_alive(wpid), timeout=10, what="the orphaned worker to stop")
    s.start()
    j = s.job(running)
    assert j["state"] == "failed" and j["resumable"] is True, j
    assert "interrupted" in j["error"]["message"] and "resume" in j["error"]["hint"]
    assert s.job(done)["state"] == "succeeded"
    assert s.wait(queued)["state"] == "succeeded"  # the queue survived the restart
    assert not list((ws / "subjects" / "run").glob(".partial.tmp-*"))
    r = s.client.post(f"/api/v1/jobs/{running}/resume")
    assert r.status_code == 201
    assert_resumes_from_checkpoint(s, r.json()["id"], 2)
    assert s.stop() == 0


def test_restart_kills_a_worker_that_outlived_its_service(tmp_path):
    ws = tmp_path / "ws"
    s = ServiceProc(ws, max_jobs=1)
    jid = s.submit(subject="orphan", seconds=120.0, steps=120, mode="stubborn")  # never checks for a stop
    s.wait(jid, states=("running",))
    wait_for(lambda: list((ws / "subjects" / "orphan").glob(".partial.tmp-*")), what="the job at work")
    wpid = wait_for(lambda: worker_pid(jid), what="worker")
    s.stop(signal.SIGKILL)
    time.sleep(0.5)
    assert pid_alive(wpid), "the stubborn worker ignores its parent's death"
    s.start()
    assert not pid_alive(wpid), "the new service killed the orphan before failing its job"
    j = s.job(jid)
    assert j["state"] == "failed" and "interrupted" in j["error"]["message"]
    assert j["resumable"] is False and j["error"]["hint"] == "submit the job again"  # no checkpoint
    assert not list((ws / "subjects" / "orphan").glob(".partial.tmp-*"))
    assert s.stop() == 0


def test_sigterm_shuts_down_cleanly(tmp_path):
    ws = tmp_path / "ws"
    s = ServiceProc(ws, max_jobs=1)
    jid = s.submit(subject="long", seconds=60.0, steps=60)
    s.wait(jid, states=("running",))
    wpid = wait_for(lambda: worker_pid(jid), what="worker")
    # a second service on the same workspace is refused
    other = subprocess.run([sys.executable, "-m", "headsync.service", "--workspace", str(ws)], env=s.env,
                           capture_output=True, text=True, timeout=60)
    assert other.returncode == 2 and "already running" in other.stderr
    t0 = time.monotonic()
    assert s.stop(signal.SIGTERM) == 0
    assert time.monotonic() - t0 < 10
    assert not (ws / "server.json").exists()
    assert not pid_alive(wpid)
    assert "headsync: stopped" in s.output()
    with pytest.raises(httpx.TransportError):
        httpx.get(s.url + "/api/v1/health", timeout=2)
    import sqlite3

    row = sqlite3.connect(ws / "jobs.db").execute("SELECT state, resumable, error FROM jobs WHERE id=?",
                                                  (jid,)).fetchone()
    assert row[0] == "failed" and row[1] == 1 and "interrupted" in row[2]
    assert not list((ws / "subjects" / "long").glob(".partial.tmp-*"))


def test_too_little_free_disk_is_a_clear_job_error(tmp_path):
    s = ServiceProc(tmp_path / "ws", extra_env={"HEADSYNC_MIN_FREE_MB": str(2**40)})
    try:
        j = s.wait(s.submit(subject="full", seconds=0.1, steps=1))
        assert j["state"] == "failed" and j["error"]["message"].startswith("disk full: only"), j
        assert "free some space" in j["error"]["hint"]
    finally:
        assert s.stop() == 0


def test_sigint_shuts_down_cleanly(tmp_path):
    s = ServiceProc(tmp_path / "ws")
    assert s.client.get("/api/v1/health").status_code == 200
    assert s.stop(signal.SIGINT) == 0
    assert not (tmp_path / "ws" / "server.json").exists()
    assert "Traceback" not in s.output() and "headsync: stopped" in s.output()


def test_refuses_a_non_loopback_host(tmp_path):
    r = subprocess.run([sys.executable, "-m", "headsync.service", "--workspace", str(tmp_path),
                        "--host", "0.0.0.0"], env={**os.environ, "PYTHONPATH": str(BACKEND)},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "refusing to listen on 0.0.0.0" in r.stderr
