"""``headsync batch``: the shots file's checks, a refused shot reported while the batch goes on, the
service found through server.json, and the executors' selection (``--executor ray`` without Ray installed).
Fast: no shot here needs a trained model (the full batch on a Ray cluster is test_ray_executor.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from service_harness import ServiceProc, run_serve, service_env
from ray_cluster import ray_available
from headsync.core.package_data import sample_dir

SAMPLE = sample_dir()


def batch(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "headsync.cli", "batch", *args], env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("text, what", [("not json", "cannot read"), ("[]", "non-empty JSON list"),
                                        ('[{"audio": "a.wav"}]', "shot 0 is not an object")])
def test_a_bad_shots_file_is_refused_with_a_hint(tmp_path, text, what):
    (tmp_path / "shots.json").write_text(text)
    r = batch([str(tmp_path / "shots.json"), "--workspace", str(tmp_path / "ws")], service_env(False))
    assert r.returncode == 2, r
    assert what in r.stderr and "hint:" in r.stderr


def shots(tmp_path: Path) -> Path:
    p = tmp_path / "shots.json"
    p.write_text(json.dumps([{"subject": "nobody", "audio": str(SAMPLE / "dub.wav"), "out": "renders/a"},
                             {"subject": "nobody", "audio": str(tmp_path / "gone.wav"), "out": "renders/b"}]))
    return p


def test_refused_shots_are_reported_and_the_batch_goes_on_in_process(tmp_path):
    r = batch([str(shots(tmp_path)), "--workspace", str(tmp_path / "ws")], service_env(False))
    assert r.returncode == 1, r
    assert "no service serves" in r.stdout and "0 of 2 shot(s) succeeded" in r.stdout, r.stdout
    assert "FAILED shot 0 (nobody, renders/a)" in r.stdout and "FAILED shot 1 (nobody, renders/b)" in r.stdout
    assert "gone.wav" in r.stdout  # each with its own reason
    assert not (tmp_path / "ws" / "server.json").exists()


def test_the_batch_goes_to_the_running_service(tmp_path):
    s = ServiceProc(tmp_path / "ws", test_tasks=False)
    try:
        r = batch([str(shots(tmp_path)), "--workspace", str(s.workspace)], s.env)
        assert r.returncode == 1, r
        assert f"to the service at {s.url}" in r.stdout and "FAILED shot 1" in r.stdout, r.stdout
    finally:
        assert s.stop() == 0


@pytest.mark.skipif(ray_available(), reason="Ray is installed: this checks the message without it")
def test_ray_executor_without_ray_says_how_to_install_it(tmp_path):
    r = run_serve(["--workspace", str(tmp_path / "ws"), "--executor", "ray"])
    assert r.returncode == 2
    assert "needs Ray" in r.stderr and "headsync[ray]" in r.stderr


def test_ray_address_needs_the_ray_executor(tmp_path):
    r = run_serve(["--workspace", str(tmp_path / "ws"), "--ray-address", "127.0.0.1:6379"])
    assert r.returncode == 2 and "--executor ray" in r.stderr
