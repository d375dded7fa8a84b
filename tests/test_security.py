"""Issue 9: no request may run code, destroy a subject or write outside the workspace.

Over real HTTP against a service in a subprocess (``service_harness.py``). Every refusal is checked twice:
the status (or exit code) and message, and the disk: a listing with sizes and sha256 of every file of the
workspace's subjects and of a sentinel folder OUTSIDE the workspace, before and after, must not differ.
Items of the issue: 1 code execution, 2 render output, 3 symbolic links, 4 names, 5 eval's sync, 6 the
schema, 7 the Host header, 8 a damaged jobs.db, 9 a read-only workspace, 10 serve's flags and docs; and
the test hooks living in tests/, not in the package.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from service_harness import BACKEND, REPO, ServiceProc, changes, run_serve, tree_digest, wait_for

SAMPLE = REPO / "backend" / "headsync" / "sample"  # the bundled sample (package data)
AUDIO = str(SAMPLE / "dub.wav")


# ---- the stage: a workspace with subjects, and a sentinel folder outside it ---------------------------
def fake_subject(root: Path, checkpoint: bytes | None = b"weights") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "subject.json").write_text(json.dumps({"schema": "headsync.subject/1", "stages": {"crop": {"done": True}},
                                                   "source": {"frame_count": 10, "path": str(root / "v.mp4")}}))
    (root / "models" / "default").mkdir(parents=True, exist_ok=True)
    if checkpoint is not None:
        (root / "models" / "default" / "checkpoint.pt").write_bytes(checkpoint)
    return root


def render_folder(folder: Path, subject: Path, shot: str) -> Path:
    (folder / "frames").mkdir(parents=True, exist_ok=True)
    (folder / "frames" / "000000.png").write_bytes(b"png")
    (folder / "render.json").write_text(json.dumps({"schema": "headsync.render/1", "subject": str(subject.resolve()),
                                                    "shot": shot}))
    return folder


class Stage:
    """``root/ws`` (the workspace) and ``root/outside`` (the sentinel) and a running service."""

    def __init__(self, root: Path, **service_kw):
        self.root = root
        self.ws = root / "ws"
        self.outside = root / "outside"
        subjects = self.ws / "subjects"
        self.victim = fake_subject(subjects / "victim", b"the victim's weights")
        render_folder(self.victim / "renders" / "r1", self.victim, "take1")
        self.mine = fake_subject(subjects / "mine")
        render_folder(self.mine / "renders" / "old", self.mine, "take1")
        (self.ws / "userstuff").mkdir()
        (self.ws / "userstuff" / "notes.txt").write_text("the user's own notes")
        # outside the workspace: a folder that looks like a subject, and loot
        fake_subject(self.outside / "target", b"outside weights")
        (self.outside / "loot.txt").write_text("must never change")
        (self.outside / "exports").mkdir()
        (self.outside / "models").mkdir()
        # links from the workspace to the outside
        (subjects / "evil").symlink_to(self.outside / "target", target_is_directory=True)
        half = fake_subject(subjects / "half", checkpoint=None)
        shutil.rmtree(half / "models")
        (half / "models").symlink_to(self.outside / "models", target_is_directory=True)
        deep = fake_subject(subjects / "deep")  # a run folder (models/RUN) that leads out
        (deep / "models" / "linked").symlink_to(self.outside / "models", target_is_directory=True)
        (self.ws / "exports").symlink_to(self.outside / "exports", target_is_directory=True)
        self.svc = ServiceProc(self.ws, max_jobs=2, grace_s=2.0, **service_kw)

    def digest(self) -> dict:
        return tree_digest(self.ws / "subjects", self.ws / "userstuff", self.outside)

    def jobs(self) -> set[str]:
        return {j["id"] for j in self.svc.client.get("/api/v1/jobs", params={"limit": 10000}).json()}

    def refused(self, body, status: int = 422, words: str = "", headers: dict | None = None) -> dict:
        """POST ``body`` (dict, or raw bytes) and assert the refusal: the status, the message, no job queued,
        nothing changed on the disk (the subjects, the user's folder, the sentinel outside)."""
        before, jobs = self.digest(), self.jobs()
        kw = {"content": body, "headers": {"Content-Type": "application/json", **(headers or {})}} \
            if isinstance(body, bytes) else {"json": body, "headers": headers}
        r = self.svc.client.post("/api/v1/jobs", **kw)
        assert r.status_code == status, r.text
        err = r.json()
        assert set(err) == {"message", "hint"} and words.lower() in err["message"].lower(), err
        assert err["hint"], err
        time.sleep(0.05)
        assert self.jobs() == jobs, "no job was queued"
        assert changes(before, self.digest()) == []
        return err


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    s = Stage(tmp_path_factory.mktemp("security"))
    yield s
    s.svc.stop()


# ---- 1. no code from user media runs ------------------------------------------------------------------
EXEC_RE = re.compile(r"exec_module|spec_from_file_location|run_path|run_module|(?<![.\w])(exec|eval|compile)\s*\(")


def test_1_no_code_execution_in_the_backend():
    """No builtin exec/eval/compile, importlib file loaders or runpy anywhere in the package (the
    ``.eval()`` of torch modules, which switches them to inference, is not Python's eval)."""
    hits = []
    for f in sorted((BACKEND / "headsync").rglob("*.py")):
        for i, line in enumerate(f.read_text().splitlines(), 1):
            if EXEC_RE.search(line):
                hits.append(f"{f.relative_to(REPO)}:{i}: {line.strip()}")
    assert hits == []


def hostile_sample(folder: Path, sentinel: Path, frames: int) -> Path:
    """A downloaded "sample": ground truth beside the video and a make_sample.py that would write
    ``sentinel`` if anything ran it. Returns the video's path."""
    clips = folder / "clips"
    clips.mkdir(parents=True)
    (folder / "make_sample.py").write_text(
        f"from pathlib import Path\nPath({str(sentinel)!r}).write_text('pwned')\n"
        "def mouth_opening(audio, n):\n    Path({0!r}).write_text('pwned')\n".format(str(sentinel)))
    (clips / "video.mp4").write_bytes(b"")
    shutil.copy(AUDIO, clips / "dub.wav")
    gt = dict(np.load(SAMPLE / "ground_truth.npz"))
    gt["mouth_open"] = np.linspace(0, 1, frames, dtype=np.float32)
    np.savez(clips / "ground_truth.npz", **gt)
    return clips / "video.mp4"


def test_1_eval_reads_the_samples_truth_as_data_only(tmp_path):
    from headsync.evaluation.evaluate import dub_truth, sample_truth
    from headsync.subject.folder import Subject

    sentinel = tmp_path / "pwned.txt"
    video = hostile_sample(tmp_path / "download", sentinel, 10)
    subj = fake_subject(tmp_path / "s")
    m = json.loads((subj / "subject.json").read_text())
    m["source"]["path"] = str(video)
    (subj / "subject.json").write_text(json.dumps(m))
    gt, folder = sample_truth(Subject(subj))
    assert folder == video.parent and gt["mouth_open"].shape == (10,)
    assert dub_truth(gt, video.parent / "dub.wav", 25.0, 100) is not None
    assert not sentinel.exists(), "make_sample.py ran"


def test_1_dub_truth_is_the_generators_own(tmp_path):
    """The data that replaced running the generator gives eval the same truth it computed before (25 fps:
    identical), and resamples it for other frame rates; a different dub.wav has no truth."""
    sys.path.insert(0, str(REPO / "sample_projects"))
    try:
        import make_sample
    finally:
        sys.path.pop(0)
    from headsync.core import media
    from headsync.evaluation.evaluate import dub_truth

    dub = Path(AUDIO)
    gt = dict(np.load(SAMPLE / "ground_truth.npz"))
    audio = media.read_audio(dub)
    n = int(round(audio.size / media.AUDIO_RATE * 25))
    for n_out in (n, 10):  # eval caps the dub at max(max_frames, 10) frames
        np.testing.assert_array_equal(dub_truth(gt, dub, 25.0, n_out), make_sample.mouth_opening(audio, n)[:n_out])
    at10 = dub_truth(gt, dub, 10.0, 40)
    nearest = np.round((np.arange(40) + 0.5) / 10 * 25 - 0.5).astype(int)  # the 25 fps frame at each centre
    assert at10.shape == (40,) and np.corrcoef(at10, make_sample.mouth_opening(audio, n)[nearest])[0, 1] > 0.9
    other = tmp_path / "other.wav"
    media.write_wav(other, audio[::-1].copy())
    assert dub_truth(gt, other, 25.0, n) is None


@pytest.mark.slow
def test_1_eval_job_on_a_hostile_sample_runs_no_code(tmp_path):
    """A real eval job over HTTP on a subject whose source folder holds ground truth and a make_sample.py:
    the metrics against the truth come out, the script never runs."""
    from synthetic_head import trained_subject

    ws = tmp_path / "ws"
    subj = trained_subject(ws / "subjects" / "hostile", coarse_iters=8, fine_iters=2, checkpoint_every=5,
                           log_every=5)
    sentinel = tmp_path / "pwned.txt"
    video = hostile_sample(tmp_path / "download", sentinel, 40)
    m = json.loads((subj / "subject.json").read_text())
    m["source"]["path"] = str(video)
    (subj / "subject.json").write_text(json.dumps(m))
    before = tree_digest(tmp_path / "download")
    s = ServiceProc(ws)
    try:
        j = s.wait(s.submit("eval", "hostile"), timeout=600)
        assert j["state"] == "succeeded", (j, s.log(j["id"])[-3000:])
        metrics = j["artifacts"]["metrics"]
        assert "mouth_corr_vs_ground_truth" in metrics and "dub_mouth_corr_vs_ground_truth" in metrics, metrics
    finally:
        s.stop()
    assert not sentinel.exists(), "make_sample.py ran"
    assert changes(before, tree_digest(tmp_path / "download")) == []


# ---- 2. a render replaces nothing but an earlier render of its shot ----------------------------------------
@pytest.mark.parametrize("out,words", [
    ("subjects", "inside the subjects folder"),
    ("subjects/victim", "inside the subjects folder"),
    ("subjects/victim/models", "inside the subjects folder"),
    ("subjects/victim/renders/r1", "inside the subjects folder"),
    ("subjects/victim/renders/new", "inside the subjects folder"),
    (".", "the workspace itself"),
    ("{ws}", "the workspace itself"),
    ("subjects/../", "the workspace itself"),
    ("subjects/mine", "inside the subject folder"),
    ("subjects/mine/renders", "inside the subject folder"),
    ("subjects/mine/models/default", "inside the subject folder"),
    ("subjects/mine/renders/old", "a render of another shot"),
    ("subjects/mine/renders/old/frames", "inside another render"),
    ("userstuff", "folder with files in it"),
    ("logs", "reserved"),
    ("jobs.db", "reserved"),
    ("../outside", "outside the workspace"),
    ("{outside}/new", "outside the workspace"),
    ("exports/new", "outside the workspace"),
    ("subjects/evil", "outside the workspace"),
])
def test_2_render_output_that_would_replace_data_is_refused(stage, out, words):
    out = out.format(ws=stage.ws, outside=stage.outside)
    stage.refused({"kind": "render", "subject": "mine", "params": {"audio": AUDIO, "out": out}}, 422, words)


def test_2_the_command_line_refuses_the_same_outputs(stage, capsys):
    from headsync import cli

    before = stage.digest()
    for out in (stage.ws / "subjects", stage.victim, stage.ws, stage.mine, stage.mine / "renders",
                stage.mine / "renders" / "old", stage.ws / "userstuff", stage.victim / "renders" / "new"):
        rc = cli.main(["render", "--subject", str(stage.mine), "--audio", AUDIO, "--out", str(out)])
        err = capsys.readouterr().err
        assert rc == 2 and "error: render output" in err and "hint:" in err, (out, err)
    assert changes(before, stage.digest()) == []


def test_2_render_folder_rule(tmp_path):
    """What may be written (a new or empty folder, the subject's renders/NAME, an earlier render of the same
    shot) and what not, on the rule itself."""
    from headsync.core.errors import UserError
    from headsync.render.folder import check_render_folder

    subj = fake_subject(tmp_path / "ws" / "subjects" / "a")
    other = fake_subject(tmp_path / "ws" / "subjects" / "b")
    prev = render_folder(subj / "renders" / "take", subj, "take")
    (tmp_path / "empty").mkdir()
    for ok, shot in [(subj / "renders" / "new", "x"), (tmp_path / "fresh" / "deep", "x"), (tmp_path / "empty", "x"),
                     (prev, "take")]:
        assert check_render_folder(ok, subj, shot) == ok.resolve()
    for bad, shot, words in [(prev, "other", "another shot"), (subj, "x", "inside the subject"),
                             (subj / "renders", "x", "inside the subject"), (other, "x", "is a subject folder"),
                             (other / "renders" / "n", "x", "inside another subject"),
                             (tmp_path / "ws" / "subjects", "x", "holds the subject"), (tmp_path, "x", "holds"),
                             (prev / "frames", "take", "inside another render"),
                             (subj / "subject.json", "x", "inside the subject")]:
        with pytest.raises(UserError, match=words):
            check_render_folder(bad, subj, shot)
    # a render of the same shot by ANOTHER subject is not this subject's to replace
    theirs = render_folder(tmp_path / "theirs", other, "take")
    with pytest.raises(UserError, match="another shot"):
        check_render_folder(theirs, subj, "take")
    link = tmp_path / "link"
    link.symlink_to(subj, target_is_directory=True)
    with pytest.raises(UserError, match="inside the subject"):
        check_render_folder(link / "models", subj, "x")


# ---- 3. every path a job writes is resolved and stays inside the workspace ------------------------------
@pytest.mark.parametrize("body,words", [
    ({"kind": "test_sleep", "subject": "evil"}, "symbolic link out of the workspace"),
    ({"kind": "train", "subject": "evil"}, "symbolic link out of the workspace"),
    ({"kind": "render", "subject": "evil", "params": {"audio": AUDIO}}, "symbolic link out of the workspace"),
    ({"kind": "eval", "subject": "evil"}, "symbolic link out of the workspace"),
    ({"kind": "train", "subject": "half"}, "symbolic link out of the workspace"),
    ({"kind": "train", "subject": "deep", "params": {"run": "linked"}}, "symbolic link out of the workspace"),
    ({"kind": "test_sleep", "subject": "ok", "params": {"out": "exports/x"}}, "outside the workspace"),
    ({"kind": "test_sleep", "subject": "ok", "params": {"out": "subjects/evil/x"}}, "outside the workspace"),
])
def test_3_links_out_of_the_workspace_are_refused(stage, body, words):
    stage.refused(body, 422, words)


def test_3_a_subject_turned_into_a_link_after_submission_is_refused_by_the_worker(stage):
    """A job queued on a real folder that becomes a link out before the job starts: the worker checks again."""
    swap = stage.ws / "subjects" / "swap"
    swap.mkdir()
    busy = [stage.svc.submit(subject=f"busy{i}", seconds=60.0, steps=60) for i in range(2)]  # both slots
    for jid in busy:
        stage.svc.wait(jid, states=("running",))
    b = stage.svc.submit(subject="swap", seconds=0.2, steps=2)
    assert stage.svc.job(b)["state"] == "queued"
    before = tree_digest(stage.outside)
    swap.rmdir()
    swap.symlink_to(stage.outside, target_is_directory=True)
    for jid in busy:
        stage.svc.client.post(f"/api/v1/jobs/{jid}/cancel")
    j = stage.svc.wait(b)
    assert j["state"] == "failed" and "symbolic link out of the workspace" in j["error"]["message"], j
    assert "not swept" in stage.svc.log(b)  # its cleanup does not follow the link either
    for jid in busy:
        assert stage.svc.wait(jid)["state"] == "cancelled"
    assert changes(before, tree_digest(stage.outside)) == []
    r = stage.svc.client.post(f"/api/v1/jobs/{b}/resume")  # a resume is checked again too
    assert r.status_code == 422 and "symbolic link" in r.json()["message"], r.text
    swap.unlink()


# ---- 4. names are matched whole ------------------------------------------------------------------------
@pytest.mark.parametrize("body", [
    {"kind": "test_sleep", "subject": "name\n"},
    {"kind": "test_sleep", "subject": "a\nb"},
    {"kind": "test_sleep", "subject": "\nname"},
    {"kind": "test_sleep", "subject": "a..b"},
    {"kind": "test_sleep", "subject": "x" * 65},
    {"kind": "train", "subject": "mine", "params": {"run": "default\n"}},
    {"kind": "train", "subject": "mine", "params": {"run": "de..fault"}},
    {"kind": "render", "subject": "mine", "params": {"audio": AUDIO, "shot": "take1\n"}},
    {"kind": "render", "subject": "mine", "params": {"audio": AUDIO, "shot": "../take1"}},
])
def test_4_names_with_a_newline_or_dots_are_refused(stage, body):
    stage.refused(body, 422, "must be a name")


# ---- 5. eval's sync is a path like the others ----------------------------------------------------------------
@pytest.mark.parametrize("sync,words", [
    ("../../../etc/passwd", "escapes the workspace"),
    ("../outside/loot.txt", "escapes the workspace"),
    ("/no/such/video.mp4", "no such file"),
    ("/tmp", "no such file"),
    ("a\u0000b", "not a usable path"),
    ("", "at least 1 character"),
    (5, "valid string"),
    ("x" * 5000, "at most 4096 characters"),
])
def test_5_eval_sync_is_validated_as_a_path(stage, sync, words):
    stage.refused({"kind": "eval", "subject": "mine", "params": {"sync": sync}}, 422, words)


def test_5_sync_latest_and_real_files_pass(stage):
    from headsync.service import jobspec

    p = jobspec.resolve_params(stage.ws, "eval", {"sync": "latest", "audio": AUDIO}, stage.mine)
    assert p == {"sync": "latest", "audio": str(Path(AUDIO).resolve())}
    p = jobspec.resolve_params(stage.ws, "eval", {"sync": "userstuff/notes.txt"}, stage.mine)
    assert p["sync"] == str(stage.ws / "userstuff" / "notes.txt")


# ---- 6. one schema per kind, checked at submission ------------------------------------------------------------
@pytest.mark.parametrize("raw,words", [
    (b'{"kind":"prepare","subject":"p","params":{"video":"%s","fps":1e999}}', "finite number"),
    (b'{"kind":"prepare","subject":"p","params":{"video":"%s","fps":-1e999}}', "finite number"),
    (b'{"kind":"prepare","subject":"p","params":{"video":"%s","resolution":100000}}', "less than or equal to 2048"),
    (b'{"kind":"prepare","subject":"p","params":{"video":"%s","resolution":63}}', "greater than or equal to 64"),
    (b'{"kind":"prepare","subject":"p","params":{"video":"%s","resolution":1e3}}', "valid integer"),
    (b'{"kind":"prepare","subject":"p","params":{"video":"%s","fps":0}}', "greater than or equal to 1"),
    (b'{"kind":"prepare","subject":"p","params":{"video":"%s","fps":121}}', "less than or equal to 120"),
    (b'{"kind":"prepare","subject":"p","params":{"video":"%s","fps":"25"}}', "valid number"),
    (b'{"kind":"prepare","subject":"p","params":{"video":"%s","fps":true}}', "valid number"),
    (b'{"kind":"test_sleep","subject":"p","params":{"seconds":1e999}}', "finite number"),
    (b'{"kind":"test_sleep","subject":"p","params":{"steps":1e999}}', "finite number"),
    (b'{"kind":"test_sleep","subject":"p","params":{"steps":2.5}}', "valid integer"),
    (b'{"kind":"test_sleep","subject":"p","params":{"steps":0}}', "greater than or equal to 1"),
    (b'{"kind":"train","subject":"mine","params":{"resume":1}}', "valid boolean"),
    (b'{"kind":"render","subject":"mine","params":{"audio":"%s","portrait":"no"}}', "valid boolean"),
])
def test_6_types_and_ranges_are_checked_at_submission(stage, raw, words):
    stage.refused(raw.replace(b"%s", AUDIO.encode()), 422, words)


def test_6_the_openapi_document_shows_the_schemas(stage):
    doc = stage.svc.client.get("/api/v1/openapi.json").json()
    comp = doc["components"]["schemas"]
    fps = comp["PrepareParams"]["properties"]["fps"]["anyOf"][0]
    assert fps["type"] == "number" and fps["minimum"] == 1 and fps["maximum"] == 120
    res = comp["PrepareParams"]["properties"]["resolution"]["anyOf"][0]
    assert res["type"] == "integer" and res["minimum"] == 64 and res["maximum"] == 2048
    assert "nerf" in comp["TrainParams"]["properties"]["renderer"]["enum"]  # the registered renderers
    assert comp["TrainParams"]["properties"]["run"]["pattern"] == comp["RenderParams"]["properties"]["shot"]["anyOf"][0]["pattern"]
    assert "subject" not in comp["RenderParams"]["properties"] and comp["RenderParams"]["required"] == ["audio"]
    alts = doc["paths"]["/api/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]["oneOf"]
    refs = {a["properties"]["kind"]["enum"][0]: a["properties"]["params"]["$ref"] for a in alts}
    assert refs["render"] == "#/components/schemas/RenderParams" and "test_sleep" in refs


def test_6_one_declaration_adds_a_kind_to_the_cli_and_the_api(monkeypatch):
    """A kind declared once (the tests' plugin) is in the command line's parser and the API schema."""
    from headsync import cli, tasks
    from headsync.service import jobspec
    from service_harness import PLUGINS

    monkeypatch.syspath_prepend(str(PLUGINS))
    monkeypatch.setattr(tasks, "TASKS", dict(tasks.TASKS))
    monkeypatch.setattr(tasks, "_plugins_loaded", False)
    sys.modules.pop("headsync_test_tasks", None)
    tasks.load_plugins()
    assert "test_sleep" in tasks.TASKS
    args = cli._parser().parse_args(["test_sleep", "--subject", "s", "--seconds", "2", "--mode", "user"])
    assert cli._params(args) == {"subject": "s", "seconds": 2.0, "mode": "user"}
    schema, comp = jobspec.json_schema_for_requests()
    assert comp["SleepParams"]["properties"]["steps"]["minimum"] == 1


# ---- 7. only loopback Host headers ---------------------------------------------------------------------------
@pytest.mark.parametrize("host,ok", [
    ("127.0.0.1:{port}", True), ("localhost:{port}", True), ("LOCALHOST", True), ("127.5.6.7:80", True),
    ("[::1]:{port}", True), ("[::1]", True),
    ("evil.example.com", False), ("evil.example.com:{port}", False), ("127.0.0.1.evil.com", False),
    ("localhost.evil.com:{port}", False), ("[::2]:{port}", False), ("10.0.0.1", False), ("0.0.0.0", False),
    ("127.0.0.1:port", False), ("", False), ("[::1]x", False),
])
def test_7_only_loopback_hosts_are_served(stage, host, ok):
    host = host.format(port=stage.svc.url.rsplit(":", 1)[1])
    r = stage.svc.client.get("/api/v1/health", headers={"Host": host})
    if ok:
        assert r.status_code == 200, r.text
    else:
        assert r.status_code == 400 and "host header" in r.json()["message"].lower(), r.text
        stage.refused({"kind": "test_sleep", "subject": "rebound"}, 400, "Host header", headers={"Host": host})


def test_7_a_request_without_host_is_refused(stage):
    host, port = stage.svc.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as c:
        c.sendall(f"GET /api/v1/health HTTP/1.0\r\nAuthorization: Bearer {stage.svc.token}\r\n\r\n".encode())
        data = b""
        while chunk := c.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 400") and b"Host header" in data, data[:300]


# ---- 8. a damaged jobs.db is refused, kept, and set aside only on request ---------------------------------------
@pytest.fixture(scope="module")
def job_store(tmp_path_factory):
    """A jobs.db with a few finished jobs (the service stopped cleanly, so it is whole)."""
    ws = tmp_path_factory.mktemp("store") / "ws"
    s = ServiceProc(ws)
    ids = [s.wait(s.submit(subject=f"j{i}", seconds=0.05, steps=1))["id"] for i in range(3)]
    assert s.stop() == 0
    with sqlite3.connect(ws / "jobs.db") as c:  # everything into the main file: the tests damage only that
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return ws, ids


@pytest.mark.parametrize("damage", ["truncated-half", "truncated-empty", "garbage", "other-database", "deleted"])
def test_8_a_damaged_job_store_is_refused_and_kept(job_store, tmp_path, damage):
    src, _ = job_store
    ws = tmp_path / "ws"
    shutil.copytree(src, ws)
    db = ws / "jobs.db"
    for side in ("jobs.db-wal", "jobs.db-shm"):
        (ws / side).unlink(missing_ok=True)
    data = db.read_bytes()
    if damage == "truncated-half":
        db.write_bytes(data[: len(data) // 2])
    elif damage == "truncated-empty":
        db.write_bytes(b"")
    elif damage == "garbage":
        db.write_bytes(data[:100] + os.urandom(len(data) - 100))
    elif damage == "other-database":
        db.unlink()
        sqlite3.connect(db).execute("CREATE TABLE notes (x)").connection.commit()
    else:
        db.unlink()  # gone, while logs/ still holds the jobs' logs
    before = tree_digest(ws)
    r = run_serve(["--workspace", str(ws)])
    assert r.returncode == 2, r.stdout + r.stderr
    assert "error: the job store" in r.stderr and "--reset-jobs" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    after = tree_digest(ws)
    assert after.get(str(db)) == before.get(str(db)), "the damaged file is kept as it was"
    assert not (ws / "server.json").exists()


def test_8_reset_jobs_moves_the_old_store_aside(job_store, tmp_path):
    src, ids = job_store
    ws = tmp_path / "ws"
    shutil.copytree(src, ws)
    (ws / "jobs.db").write_bytes((ws / "jobs.db").read_bytes()[:1000])
    damaged = tree_digest(ws / "jobs.db")[str(ws / "jobs.db")]
    s = ServiceProc(ws, command=["-m", "headsync.cli", "serve", "--workspace", str(ws), "--reset-jobs"])
    try:
        assert s.client.get("/api/v1/jobs").json() == []
        aside = sorted(ws.glob("jobs-set-aside-*.db"))
        assert len(aside) == 1 and tree_digest(aside[0])[str(aside[0])][1:] == damaged[1:]
        assert "moved the old job store aside to" in s.output()
    finally:
        assert s.stop() == 0


def test_8_a_sound_store_keeps_its_history_across_restarts(job_store, tmp_path):
    src, ids = job_store
    ws = tmp_path / "ws"
    shutil.copytree(src, ws)
    s = ServiceProc(ws)
    try:
        assert {j["id"] for j in s.client.get("/api/v1/jobs").json()} == set(ids)
    finally:
        s.stop()


# ---- 9. a read-only workspace: say what happened ---------------------------------------------------------------
def _works(cmd: list[str]) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def unprivileged() -> list[str]:
    """A command prefix under which file permissions apply (root ignores them): ``unshare --user``."""
    if os.geteuid() != 0:
        return []
    if not _works(["unshare", "--user", "true"]):
        pytest.skip("running as root and `unshare --user` is not available: permissions cannot be tested")
    return ["unshare", "--user"]


def read_only_mount(folder: Path) -> list[str]:
    """A command prefix that runs the command with ``folder`` mounted read-only (a private mount namespace)."""
    prefix = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
              'mount --bind -o ro "$0" "$0" && exec "$@"', str(folder)]
    if not _works([*prefix, "true"]):
        pytest.skip("`unshare --mount` with a read-only bind mount is not available here")
    return prefix


@pytest.fixture
def open_tmp():
    """A temporary folder anyone may enter (the unprivileged service must reach it)."""
    d = Path(tempfile.mkdtemp(prefix="headsync-ro-"))
    d.chmod(0o777)
    yield d
    for p in [d, *d.rglob("*")]:
        if p.is_dir() and not p.is_symlink():
            p.chmod(0o777)
    shutil.rmtree(d, ignore_errors=True)


def test_9_serve_on_a_workspace_it_cannot_write_says_so(open_tmp):
    prefix = unprivileged()
    ws = open_tmp / "ws"
    ws.mkdir()
    ws.chmod(0o555)
    r = run_serve(["--workspace", str(ws)], prefix=prefix)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "is not writable (permission denied" in r.stderr and "hint:" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert list(ws.iterdir()) == []


def test_9_serve_on_a_read_only_disk_says_so(open_tmp):
    ws = open_tmp / "ws"
    ws.mkdir()
    r = run_serve(["--workspace", str(ws)], prefix=read_only_mount(ws))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "read-only file system" in r.stderr and "hint:" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_9_job_errors_and_cleanup_name_the_real_cause(open_tmp):
    prefix = unprivileged()
    ws = open_tmp / "ws"
    ws.mkdir(mode=0o777)
    ws.chmod(0o777)
    s = ServiceProc(ws, prefix=prefix)
    try:
        # a subject folder the service may not write: permission denied, not "disk full"
        ro = ws / "subjects" / "locked"
        ro.mkdir(mode=0o555)
        ro.chmod(0o555)
        if prefix == [] and os.access(ro, os.W_OK):
            pytest.skip("permissions do not apply here")
        j = s.wait(s.submit(subject="locked", seconds=0.2, steps=2))
        assert j["state"] == "failed", j
        assert j["error"]["message"].startswith(f"permission denied: cannot write {ro}"), j["error"]
        assert "writable" in j["error"]["hint"] and "disk" not in j["error"]["message"], j["error"]
        # a job whose half-written file cannot be removed: the log says so, it does not claim "removed"
        jid = s.submit(subject="stuck", seconds=60.0, steps=60)
        s.wait(jid, states=("running",))
        root = ws / "subjects" / "stuck"
        partial = wait_for(lambda: list(root.glob(".partial.tmp-*")), what="the half-written file")[0]
        root.chmod(0o555)
        s.client.post(f"/api/v1/jobs/{jid}/cancel")
        assert s.wait(jid)["state"] == "cancelled"
        log = wait_for(lambda: (lambda t: t if "could not remove" in t else None)(s.log(jid)), what="the cleanup")
        assert f"could not remove {partial}" in log and f"removed {partial}" not in log, log
        assert partial.exists()
    finally:
        for p in ws.rglob("*"):
            if p.is_dir() and not p.is_symlink():
                p.chmod(0o777)
        s.stop()


def test_9_a_job_on_a_read_only_disk_says_so(open_tmp):
    ws = open_tmp / "ws"
    ro = ws / "subjects" / "ro"
    ro.mkdir(parents=True)
    s = ServiceProc(ws, prefix=read_only_mount(ro))
    try:
        j = s.wait(s.submit(subject="ro", seconds=0.2, steps=2))
        assert j["state"] == "failed", j
        assert j["error"]["message"].startswith(f"read-only file system: cannot write {ro}"), j["error"]
        assert "read-only disk" in j["error"]["hint"]
        assert s.wait(s.submit(subject="rw", seconds=0.1, steps=1))["state"] == "succeeded"  # the rest works
    finally:
        s.stop()


def test_9_cleanup_reports_what_it_removed(tmp_path):
    from headsync.service import cleanup

    root = tmp_path / "s"
    (root / ".frames.tmp-4242").mkdir(parents=True)
    (root / ".frames.tmp-4242" / "a.png").write_bytes(b"x")
    (root / ".x.npy.tmp-4242").write_bytes(b"x")
    (root / ".y.npy.tmp-999").write_bytes(b"other pid")
    lines = cleanup.sweep_temp([root], 4242)
    assert sorted(lines) == sorted([f"removed {root / '.frames.tmp-4242'}", f"removed {root / '.x.npy.tmp-4242'}"])
    assert sorted(p.name for p in root.iterdir()) == [".y.npy.tmp-999"]


# ---- 10. serve's flags, the workspace's environment variable, and the docs agree --------------------------------
def test_10_serve_takes_max_jobs_and_the_workspace_from_the_environment(tmp_path):
    env_ws, flag_ws = tmp_path / "from-env", tmp_path / "from-flag"
    s = ServiceProc(env_ws, command=["-m", "headsync.cli", "serve", "--max-jobs", "3"],
                    extra_env={"HEADSYNC_WORKSPACE": str(env_ws), "HEADSYNC_MAX_JOBS": ""})
    try:
        h = s.client.get("/api/v1/health").json()
        assert h["max_jobs"] == 3 and h["workspace"] == str(env_ws.resolve())
    finally:
        assert s.stop() == 0
    s = ServiceProc(flag_ws, command=["-m", "headsync.cli", "serve", "--workspace", str(flag_ws)],
                    extra_env={"HEADSYNC_WORKSPACE": str(env_ws)})
    try:
        assert s.client.get("/api/v1/health").json()["workspace"] == str(flag_ws.resolve())  # the flag wins
    finally:
        assert s.stop() == 0
    r = run_serve(["--workspace", str(tmp_path / "x"), "--max-jobs", "0"])
    assert r.returncode == 2 and "--max-jobs 0" in r.stderr


def test_10_docs_and_cli_agree():
    from headsync import cli

    import argparse

    sub = next(a for a in cli._parser()._actions if isinstance(a, argparse._SubParsersAction))
    serve = sub.choices["serve"]
    flags = {o for a in serve._actions for o in a.option_strings}
    for doc in (REPO / "README.md", REPO / "docs" / "service.md"):
        text = doc.read_text()
        assert "HEADSYNC_WORKSPACE" in text, doc
        for line in re.findall(r"headsync serve[^\n`]*", text):
            for flag in re.findall(r"--[a-z][a-z-]+", line):
                assert flag in flags, f"{doc.name}: {flag} in {line!r} is not a flag of headsync serve"
    assert {"--max-jobs", "--workspace", "--reset-jobs"} <= flags


# ---- the test hooks live in tests/ ---------------------------------------------------------------------------
def test_test_hooks_are_not_in_the_package(tmp_path):
    assert not (BACKEND / "headsync" / "service" / "testing.py").exists()
    for f in (BACKEND / "headsync").rglob("*.py"):
        assert "HEADSYNC_TEST_TASKS" not in f.read_text() and "test_sleep" not in f.read_text(), f
    s = ServiceProc(tmp_path / "ws", test_tasks=False)  # without the plugin on the path: no test kind
    try:
        r = s.client.post("/api/v1/jobs", json={"kind": "test_sleep", "subject": "x"})
        assert r.status_code == 422 and "unknown job kind" in r.json()["message"]
        assert not (tmp_path / "ws" / "subjects" / "x").exists()
    finally:
        s.stop()
