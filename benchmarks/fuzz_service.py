"""Schema-driven fuzzing of the local service with schemathesis: every endpoint, no 5xx allowed, nothing
written outside the workspace.

    python benchmarks/fuzz_service.py                       # starts its own service in a temporary workspace
    python benchmarks/fuzz_service.py --url URL --token T   # against a running one (status codes only)

It fetches the OpenAPI document (authenticated), widens every string parameter of the job requests with
hostile path-like and name-like values (``../``, absolute paths in and out of the workspace, symbolic links
out of it, newlines, NUL, very long, unicode), runs ``schemathesis run`` with the token on every request,
and counts the status codes of every response it recorded (a HAR report). With its own service it then
checks the REAL file system: a sentinel tree outside the workspace (which links in the workspace point
at) and a subject the fuzzer is never told about must be byte for byte as before (sizes and sha256), and
nothing new may appear beside the workspace. Exit code 0 when no response was a 5xx, schemathesis found
no failure of its checks (see CHECKS), and nothing outside the workspace changed.
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
sys.path.insert(0, str(REPO / "tests"))
from service_harness import changes, tree_digest as digest  # noqa: E402 - the tests' listing of a tree

AUDIO = REPO / "backend" / "headsync" / "sample" / "dub.wav"
# Every check but positive_data_acceptance: a request that matches the schema can still name a file
# that does not exist or a subject nobody prepared, and the service rightly answers 4xx.
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,"
          "response_schema_conformance,negative_data_rejection,missing_required_header,unsupported_method,"
          "use_after_free,ensure_resource_availability,ignored_auth")


def hostile_paths(ws: Path, outside: Path) -> list[str]:
    """Path-like values: escapes, absolute paths in and out of the workspace, links out, the workspace's own
    files, a subject folder, a folder with the user's files, bytes no path may hold, very long, unicode."""
    return ["../../../../etc/passwd", "/etc/passwd", "..", ".", "/", "", "~", "~/x", "subjects", "subjects/fuzz",
            "subjects/fuzz/models", "subjects/fuzz/renders", "subjects/other", "subjects/evil", "subjects/evil/x",
            "subjects/../../outside", "exports/x", "exports", "logs/x", "jobs.db", "server.json", "userstuff",
            str(ws), str(ws / "subjects"), str(ws / "subjects" / "other"), str(outside), str(outside / "loot.txt"),
            str(outside / "new"), str(outside / "target"), "renders/new", "media/clip.wav", str(AUDIO),
            "latest", "a\nb", "x\n", "\n", "a\u0000b", "\u0000", "x" * 5000, "/" + "a/" * 3000,
            "\u00e9/\u00fc/\u65e5\u672c", "\u202e\u0000", "C:\\Windows\\x", "file:///etc/passwd"]


def hostile_names() -> list[str]:
    """Name-like values (never "other": that subject must not change, so no job may name it)."""
    return ["fuzz", "fuzz2", "evil", "a\n", "\n", "..", "a..b", "../x", "x/y", "x" * 65, "\u00e9",
            "default\n", " ", "a\u0000", "-", "."]


def widen(doc: dict, paths: list[str], names: list[str]) -> dict:
    """``doc`` with every string parameter of the job requests (and the top-level subject) also taking the
    hostile values, so the fuzzer tries them often alongside what the schema allows."""
    def wide(prop: dict, values: list[str]) -> dict:
        keep = {k: prop[k] for k in ("description", "title", "default") if k in prop}
        inner = {k: v for k, v in prop.items() if k not in keep}
        return {**keep, "anyOf": [inner, {"enum": values}]}

    def is_string(prop: dict) -> bool:
        return prop.get("type") == "string" or any(a.get("type") == "string" for a in prop.get("anyOf", []))

    doc = json.loads(json.dumps(doc))
    for name, schema in doc.get("components", {}).get("schemas", {}).items():
        if name.endswith("Params"):
            for k, prop in schema.get("properties", {}).items():
                if is_string(prop) and "enum" not in prop:
                    schema["properties"][k] = wide(prop, paths + names)
    body = doc["paths"]["/api/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    for alt in body["oneOf"]:
        alt["properties"]["subject"] = wide(alt["properties"]["subject"], names + paths[:12])
    return doc


def stage(root: Path) -> tuple[Path, Path]:
    """``root/ws`` (the workspace, with links out) and ``root/outside`` (the sentinel tree)."""
    ws, outside = root / "ws", root / "outside"
    (outside / "target" / "models" / "default").mkdir(parents=True)
    (outside / "target" / "subject.json").write_text(json.dumps({"schema": "headsync.subject/1",
                                                                 "source": {"frame_count": 1}}))
    (outside / "target" / "models" / "default" / "checkpoint.pt").write_bytes(b"outside weights")
    (outside / "loot.txt").write_text("must never change")
    (outside / "exports").mkdir()
    (ws / "subjects").mkdir(parents=True)
    (ws / "subjects" / "evil").symlink_to(outside / "target", target_is_directory=True)
    (ws / "exports").symlink_to(outside / "exports", target_is_directory=True)
    (ws / "userstuff").mkdir()
    (ws / "userstuff" / "notes.txt").write_text("the user's own notes")
    (ws / "media").mkdir()
    shutil.copy(AUDIO, ws / "media" / "clip.wav")
    other = ws / "subjects" / "other"  # never named to the fuzzer: it must not change
    (other / "models" / "default").mkdir(parents=True)
    (other / "subject.json").write_text(json.dumps({"schema": "headsync.subject/1", "source": {"frame_count": 1},
                                                    "stages": {"crop": {"done": True}}}))
    (other / "models" / "default" / "checkpoint.pt").write_bytes(b"other weights")
    return ws, outside


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
values = ["fuzz", "fuzz2", "evil", "a\\n", ".."]

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
    tool = tmp / "tool"  # the fuzzer's own files: everything else beside the workspace must stay as it was
    tool.mkdir()
    proc = None
    ws = outside = None
    try:
        if not a.url:
            ws, outside = stage(tmp)
            proc, info = start_service(ws)
            a.url, a.token = info["url"], info["token"]
        auth = {"Authorization": f"Bearer {a.token}"}
        client = httpx.Client(base_url=a.url, headers=auth, timeout=30)
        doc = client.get("/api/v1/openapi.json").json()
        job_ids = seed(ws, client, tool) if proc is not None else \
            [j["id"] for j in client.get("/api/v1/jobs", params={"limit": 20}).json()]
        before = digest(outside, ws / "subjects" / "other", ws / "userstuff", AUDIO) \
            if proc is not None else {}
        beside = sorted(p.name for p in tmp.iterdir())
        if proc is not None:
            doc = widen(doc, hostile_paths(ws, outside), hostile_names())
        schema = tool / "openapi.json"
        schema.write_text(json.dumps(doc))
        har = tool / "report.har"
        exe = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or "schemathesis"
        cmd = [exe, "--config-file", str(config_file(tool / "schemathesis.toml", job_ids)), "run", str(schema),
               "--url", a.url, "-H", f"Authorization: Bearer {a.token}",
               "--checks", CHECKS, "--max-examples", str(a.max_examples), "--seed", str(a.seed),
               "--workers", "1", "--continue-on-failure", "--report", "har", "--report-har-path", str(har),
               "--suppress-health-check", "all", "--request-timeout", "30", "--no-color"]
        t0 = time.monotonic()
        r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"}, cwd=tool)
        seconds = time.monotonic() - t0
        print(r.stdout[-6000:])
        if r.stderr.strip():
            print(r.stderr[-3000:], file=sys.stderr)
        codes: collections.Counter = collections.Counter()
        five = []
        marks = [json.dumps(v)[1:-1] for v in (hostile_paths(ws, outside) + hostile_names() if ws else [])
                 if len(v) > 2 and v not in ("fuzz", "fuzz2", "latest")]
        hostile = 0
        if har.exists():
            for e in json.loads(har.read_text())["log"]["entries"]:
                st = e["response"]["status"]
                codes[st] += 1
                text = (e["request"].get("postData") or {}).get("text") or ""
                hostile += any(m in text for m in marks)
                if st >= 500:
                    five.append(f"{e['request']['method']} {e['request']['url']} -> {st}")
        total = sum(codes.values())
        print(f"fuzz: {total} requests in {seconds:.0f} s; status codes {dict(sorted(codes.items()))}")
        if marks:
            print(f"requests carrying a hostile path or name: {hostile}")
        print(f"5xx: {len(five)}")
        for f in five[:20]:
            print("  " + f)
        print(f"schemathesis exit code {r.returncode}")
        escaped, written = [], []
        if proc is not None:  # nothing a fuzzed request queued writes outside the workspace
            wsr = str(ws.resolve())
            jobs = client.get("/api/v1/jobs", params={"limit": 10000}).json()
            for j in jobs:
                for k in ("subject", "out"):
                    v = j["params"].get(k)
                    if v is not None and not str(v).startswith(wsr + os.sep):
                        escaped.append(f"job {j['id']} {k}={v}")
            # ... and on the disk: stop the service (and its workers) first, then compare
            proc.terminate()
            proc.wait(timeout=60)
            proc = None
            after = digest(outside, ws / "subjects" / "other", ws / "userstuff", AUDIO)
            written = changes(before, after)
            new_beside = sorted(set(p.name for p in tmp.iterdir()) - set(beside))
            written += [f"added {tmp / n} (beside the workspace)" for n in new_beside]
            print(f"jobs queued by the fuzzer: {len(jobs)}; outputs outside the workspace: {len(escaped)}")
            print(f"writes outside the workspace: {len(written)} (sentinel tree, the unnamed subject, the user's "
                  f"folder, the sample audio; {len(before)} entries compared)")
            for w in (escaped + written)[:20]:
                print("  " + w)
        return 0 if (not five and not escaped and not written and r.returncode == 0 and total > 0) else 1
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
