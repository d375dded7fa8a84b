"""Schema-driven fuzzing of the local service with schemathesis: every endpoint, no 5xx allowed.

    python benchmarks/fuzz_service.py                       # starts its own service in a temporary workspace
    python benchmarks/fuzz_service.py --url URL --token T   # against a running one

It fetches the OpenAPI document (authenticated), runs ``schemathesis run`` with the token on every
request, and counts the status codes of every response it recorded (a HAR report). Exit code 0 when
no response was a 5xx and schemathesis found no failure of its checks (see CHECKS).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
# Every check but positive_data_acceptance: a request that matches the schema can still name a file
# that does not exist or a subject nobody prepared, and the service rightly answers 4xx.
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,"
          "response_schema_conformance,negative_data_rejection,missing_required_header,unsupported_method,"
          "use_after_free,ensure_resource_availability,ignored_auth")


def start_service(workspace: Path) -> tuple[subprocess.Popen, dict]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "backend"), "HEADSYNC_SERVICE_DEVICE": "cpu"}
    proc = subprocess.Popen([sys.executable, "-m", "headsync.service", "--workspace", str(workspace)], env=env,
                            stdout=subprocess.DEVNULL)
    for _ in range(600):
        try:
            info = json.loads((workspace / "server.json").read_text())
            if info["pid"] == proc.pid:
                return proc, info
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("the service did not start")


def seed(workspace: Path, client: httpx.Client, tmp: Path) -> list[str]:
    """Give the fuzzer something real to find: a prepared-looking subject ``fuzz`` and a few jobs."""
    d = workspace / "subjects" / "fuzz"
    (d / "models" / "default").mkdir(parents=True, exist_ok=True)
    (d / "subject.json").write_text(json.dumps({"schema": "headsync.subject/1", "source": {"frame_count": 1},
                                                "stages": {"crop": {"done": True}}}))
    not_a_video = tmp / "not-a-video.mp4"
    not_a_video.write_bytes(b"\0" * 1000)
    ids = []
    for body in ({"kind": "prepare", "subject": "fuzz2", "params": {"video": str(not_a_video)}},
                 {"kind": "eval", "subject": "fuzz"},
                 {"kind": "train", "subject": "fuzz", "params": {"preset": "preview", "run": "r1"}}):
        r = client.post("/api/v1/jobs", json=body)
        r.raise_for_status()
        ids.append(r.json()["id"])
    client.post(f"/api/v1/jobs/{ids[-1]}/cancel")
    return ids


def config_file(path: Path, job_ids: list[str]) -> Path:
    """Schemathesis settings: real job ids and subject names half of the time."""
    path.write_text(f"""
[dictionaries.jobs]
values = {json.dumps(job_ids)}

[dictionaries.subjects]
values = ["fuzz", "fuzz2"]

[parameters]
"path.job_id" = {{ dictionary = "jobs", probability = 0.5 }}
"body.subject" = {{ dictionary = "subjects", probability = 0.5 }}
""")
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url")
    ap.add_argument("--token")
    ap.add_argument("--max-examples", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="headsync-fuzz-"))
    proc = None
    try:
        if not a.url:
            proc, info = start_service(tmp / "ws")
            a.url, a.token = info["url"], info["token"]
        auth = {"Authorization": f"Bearer {a.token}"}
        client = httpx.Client(base_url=a.url, headers=auth, timeout=30)
        doc = client.get("/api/v1/openapi.json").json()
        job_ids = seed(tmp / "ws", client, tmp) if proc is not None else \
            [j["id"] for j in client.get("/api/v1/jobs", params={"limit": 20}).json()]
        schema = tmp / "openapi.json"
        schema.write_text(json.dumps(doc))
        har = tmp / "report.har"
        exe = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or "schemathesis"
        cmd = [exe, "--config-file", str(config_file(tmp / "schemathesis.toml", job_ids)), "run", str(schema), "--url", a.url, "-H", f"Authorization: Bearer {a.token}",
               "--checks", CHECKS, "--max-examples", str(a.max_examples), "--seed", str(a.seed),
               "--workers", "1", "--continue-on-failure", "--report", "har", "--report-har-path", str(har),
               "--suppress-health-check", "all", "--request-timeout", "30", "--no-color"]
        t0 = time.monotonic()
        r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"})
        seconds = time.monotonic() - t0
        print(r.stdout[-6000:])
        if r.stderr.strip():
            print(r.stderr[-3000:], file=sys.stderr)
        codes: collections.Counter = collections.Counter()
        five = []
        if har.exists():
            for e in json.loads(har.read_text())["log"]["entries"]:
                st = e["response"]["status"]
                codes[st] += 1
                if st >= 500:
                    five.append(f"{e['request']['method']} {e['request']['url']} -> {st}")
        total = sum(codes.values())
        print(f"fuzz: {total} requests in {seconds:.0f} s; status codes {dict(sorted(codes.items()))}")
        print(f"5xx: {len(five)}")
        for f in five[:20]:
            print("  " + f)
        print(f"schemathesis exit code {r.returncode}")
        escaped = []
        if proc is not None:  # nothing a fuzzed request queued writes outside the workspace
            ws = str((tmp / "ws").resolve())
            for j in client.get("/api/v1/jobs", params={"limit": 10000}).json():
                for k in ("subject", "out"):
                    v = j["params"].get(k)
                    if v is not None and not str(v).startswith(ws + os.sep):
                        escaped.append(f"job {j['id']} {k}={v}")
            print(f"jobs queued by the fuzzer: {len(client.get('/api/v1/jobs', params={'limit': 10000}).json())}"
                  f"; outputs outside the workspace: {len(escaped)}")
        return 0 if (not five and not escaped and r.returncode == 0 and total > 0) else 1
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
