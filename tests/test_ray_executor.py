"""The Ray executor on a real Ray cluster on this machine (a head and two one-CPU worker nodes on
127.0.0.1), one cluster and one service (``--executor ray``) for the whole module, jobs ending as
docs/cluster.md says:

- a batch of renders of the trained sample (``headsync batch``) with one Ray worker process SIGKILLed
  mid-render: the killed attempt is retried (once) on a worker that lives, so all four succeed with all
  their frames and nothing half-written left;
- a render cancelled (it stops at its next frame) and a hung one (SIGSTOPped) force-cancelled after the
  grace period: both ``cancelled``, their workers gone, no output folder, nothing half-written;
- a job whose worker dies twice: ``failed`` with the reason;
- every TCP listener of the namespace (Ray's, the service's) on loopback.

``slow`` (a few minutes on two cores). Skipped without Ray (the optional extra), and outside a network
namespace with only loopback: ``make test-ray`` installs Ray into .venv-ray and runs this under
``unshare -rn``.
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

from ray_cluster import RayCluster, ray_cluster_or_skip, tcp_listeners
from service_harness import ServiceProc, pid_alive, service_env, wait_for
from test_service_slow import tiny_preset
from headsync.core.package_data import sample_dir

pytestmark = pytest.mark.slow

SAMPLE = sample_dir()
SHOTS = 4
GRACE_S = 5.0  # the service's cancel grace period: a force-cancel comes this long after the cancel


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A workspace with the sample prepared and trained (tiny preset), made with the local executor."""
    ray_cluster_or_skip()  # before minutes of training
    videos = sorted(SAMPLE.glob("*.mp4"))
    if not videos:
        pytest.skip("the bundled sample video is missing (run sample_projects/make_sample.py)")
    root = tmp_path_factory.mktemp("ray")
    ws = root / "ws"
    preset = tiny_preset(root / "tiny.toml")
    s = ServiceProc(ws, max_jobs=1, test_tasks=False)
    try:
        pid = s.submit("prepare", "astro", video=str(videos[0]), preset=str(preset), fps=5.0, resolution=128)
        tid = s.submit("train", "astro", preset=str(preset), run="tiny")
        for j in (pid, tid):
            job = s.wait(j, timeout=900)
            assert job["state"] == "succeeded", (job, s.log(j)[-3000:])
    finally:
        assert s.stop() == 0
    return ws


@pytest.fixture(scope="module")
def service(trained):
    """The service on the Ray executor (two jobs at once; the test-only kind ``test_sleep`` too), over a
    cluster of two one-CPU worker nodes, both stopped at the end."""
    cluster = RayCluster(service_env(test_tasks=False), workers=2)
    try:
        cluster.wait_for_nodes(2)
        s = ServiceProc(trained, max_jobs=2, grace_s=GRACE_S, test_tasks=True,
                        command=["-m", "headsync.service", "--workspace", str(trained), "--executor", "ray",
                                 "--ray-address", cluster.address])
        try:
            yield s
            assert s.client.get("/api/v1/health").json()["running"] == 0
        finally:
            assert s.stop() == 0
    finally:
        cluster.stop()
    assert not cluster.pids(), "the cluster's processes are gone"


def row(workspace: Path, job_id: str) -> dict:
    from headsync.service.store import Store

    store = Store(workspace)
    try:
        return store.get(job_id) or {}
    finally:
        store.close()


def render(s: ServiceProc, out: str) -> str:
    return s.submit("render", "astro", audio=str(SAMPLE / "dub.wav"), run="tiny", out=out, shot=Path(out).name,
                    portrait=False)


def worker_at_work(s: ServiceProc, job_id: str, previous: int | None = None) -> int:
    """The PID of the Ray worker process running ``job_id`` once it has reported progress (another than
    ``previous``: a retry's)."""
    def ready():
        job = s.job(job_id)
        if job["state"] == "queued":
            return None
        assert job["state"] == "running", (job, s.log(job_id)[-3000:])
        pid = row(s.workspace, job_id).get("pid")
        return pid if pid and pid != previous and (job["progress"].get("fraction") or 0) > 0 else None

    return wait_for(ready, timeout=600, what=f"job {job_id} at work")


def leftovers(folder: Path) -> list[Path]:
    return list(folder.glob(".*.tmp-*")) if folder.is_dir() else []


def test_a_batch_of_renders_survives_a_killed_ray_worker(service, tmp_path):
    s, ws = service, service.workspace
    # the batch, through `headsync batch` (it finds the service through server.json); the last shot names
    # curves that do not exist: refused, reported, and the others go on
    shots = [{"subject": "astro", "audio": str(SAMPLE / "dub.wav"), "run": "tiny", "out": f"renders/shot{i}",
              "shot": f"shot{i}", "portrait": False} for i in range(SHOTS)]
    shots.append({"subject": "astro", "audio": str(SAMPLE / "dub.wav"), "run": "tiny",
                  "curves": str(tmp_path / "missing.json"), "out": "renders/bad"})
    (tmp_path / "shots.json").write_text(json.dumps(shots))
    batch = subprocess.Popen([sys.executable, "-m", "headsync.cli", "batch", str(tmp_path / "shots.json"),
                              "--workspace", str(ws)], env=s.env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        def renders() -> list[str] | None:
            jobs = [j for j in s.client.get("/api/v1/jobs").json()
                    if j["kind"] == "render" and Path(j["params"]["out"]).name.startswith("shot")]
            return [j["id"] for j in sorted(jobs, key=lambda j: j["created"])] if len(jobs) == SHOTS else None

        ids = wait_for(renders, timeout=60, what="the batch's jobs")
        # SIGKILL the Ray worker process of the first render once it is rendering frames
        victim = ids[0]
        killed = worker_at_work(s, victim)
        os.kill(killed, signal.SIGKILL)
        report, _ = batch.communicate(timeout=900)
    finally:
        if batch.poll() is None:
            batch.kill()
    assert batch.returncode == 1, report
    assert f"{SHOTS} of {SHOTS + 1} shot(s) succeeded" in report, report
    assert re.search(rf"FAILED shot {SHOTS} \(astro, renders/bad\): .*missing\.json", report), report
    for j in ids:
        job = s.wait(j, timeout=60)
        assert job["state"] == "succeeded", (job, s.log(j)[-3000:])
        art = job["artifacts"]
        frames = sorted(Path(art["frames"]).glob("*.png"))
        assert art["frame_count"] > 0 and len(frames) == art["frame_count"], (j, art)
        assert Path(art["video"]).is_file()
        assert not leftovers(Path(art["out"]).parent), "nothing half-written left"
    log = s.log(victim)
    assert f"the worker of the previous attempt (pid {killed}) died" in log, log[-3000:]
    assert row(ws, victim)["pid"] != killed
    assert not pid_alive(killed)


def test_cancel_and_force_cancel_of_renders_on_ray(service):
    """A render cancelled mid-frames stops at its next frame; one whose worker hangs (SIGSTOP: it reads
    no stop request) is force-cancelled (``ray.cancel(force=True)``) after the grace period. Both end
    ``cancelled`` with their worker gone and nothing that looks like a render left."""
    s, renders = service, service.workspace / "renders"

    def half_written(name: str) -> tuple[str, int]:
        """A render of ``name`` submitted, and its worker's PID once it has written frames."""
        j = render(s, f"renders/{name}")
        pid = worker_at_work(s, j)
        wait_for(lambda: list(renders.glob(f".{name}.tmp-{pid}/frames/*.png")), timeout=300,
                 what=f"the frames of {name}")
        return j, pid

    def cancel(j: str) -> None:
        r = s.client.post(f"/api/v1/jobs/{j}/cancel")
        assert r.status_code == 200, r.text

    polite, polite_pid = half_written("cancelled")
    cancel(polite)
    job = s.wait(polite, timeout=GRACE_S)  # before any force: it stopped by itself
    assert job["state"] == "cancelled", (job, s.log(polite)[-3000:])
    assert job["error"]["message"] == "cancelled by request", job
    hung, hung_pid = half_written("hung")
    os.kill(hung_pid, signal.SIGSTOP)
    try:
        cancel(hung)
        job = s.wait(hung, timeout=GRACE_S + 60)
        assert job["state"] == "cancelled", (job, s.log(hung)[-3000:])
        assert "ray.cancel" in job["error"]["message"], job  # "cancelled by request (worker stopped by force ...)"
        assert f"did not stop within {GRACE_S:g}s: killed" in s.log(hung)
        for pid in (polite_pid, hung_pid):
            wait_for(lambda: not pid_alive(pid), timeout=10, what=f"the cancelled job's worker {pid} gone")
    finally:
        if pid_alive(hung_pid):
            os.kill(hung_pid, signal.SIGKILL)
    assert "killed" not in s.log(polite)
    # nothing that looks like a finished render: no output folder, and the half-written ones swept
    assert not (renders / "cancelled").exists() and not (renders / "hung").exists()
    assert not leftovers(renders), leftovers(renders)
    assert f"cleanup: removed {renders / f'.hung.tmp-{hung_pid}'}" in s.log(hung)


def test_a_job_whose_worker_dies_twice_fails_with_the_reason(service):
    s = service
    jid = s.submit(subject="dies_twice", seconds=300.0, steps=300)
    first = worker_at_work(s, jid)
    os.kill(first, signal.SIGKILL)
    second = worker_at_work(s, jid, previous=first)  # Ray's one retry
    assert f"the worker of the previous attempt (pid {first}) died" in s.log(jid)
    os.kill(second, signal.SIGKILL)
    job = s.wait(jid, timeout=120)
    assert job["state"] == "failed", (job, s.log(jid)[-3000:])
    assert job["error"]["message"].startswith("ray worker died (WorkerCrashedError) after 2 attempt(s): "), job
    assert job["error"]["hint"], job
    subject = s.workspace / "subjects" / "dies_twice"
    assert not list(subject.glob(".partial.tmp-*")), "both attempts' half-written files swept"
    assert not (subject / "result.json").exists()
    assert not pid_alive(second)


def test_every_listener_is_on_loopback(service):
    """Ray's nodes, agents and workers and the service listen on 127.0.0.1 only (this namespace's sockets)."""
    listeners = tcp_listeners()
    assert len(listeners) >= 4, listeners  # the GCS, two ports per raylet, the service at least
    assert service.url.startswith("http://127.0.0.1:")
    off = [(a, p) for a, p in listeners if a not in ("127.0.0.1", "::ffff:127.0.0.1", "::1")]
    assert not off, f"listeners off loopback: {off}"
