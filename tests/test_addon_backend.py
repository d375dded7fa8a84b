"""What the backend serves the add-on: the captured curves of a subject (``GET /subjects/NAME/curves``)
and frame-range renders (``render --frames A-B``, Preview Frame). No bpy; the service runs in-process."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from blender_addon import curves_io  # noqa: E402
from synthetic_head import make_subject  # noqa: E402


@pytest.fixture
def api(tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    from headsync.service.app import Service, create_app

    monkeypatch.setenv("HEADSYNC_SERVICE_DEVICE", "cpu")
    ws = tmp_path / "ws"
    make_subject(ws / "subjects" / "synth", n_frames=12)
    # The service serves loopback Host headers only (issue 9): TestClient would send "testserver".
    with TestClient(create_app(Service(ws, "tok")), base_url="http://127.0.0.1") as c:
        c.headers["Authorization"] = "Bearer tok"
        yield c, ws


def test_captured_curves_endpoint_is_the_backends_loop(api):
    from headsync.curves import captured_curves
    from headsync.subject.folder import Subject

    c, ws = api
    r = c.get("/api/v1/subjects/synth/curves", params={"frames": 30})
    assert r.status_code == 200, r.text
    doc = curves_io.validate(r.json(), 30)  # the add-on's own validator accepts it
    want = captured_curves(Subject(ws / "subjects" / "synth"), 30)
    assert doc["source"] == "captured" and doc["frame_count"] == 30 and doc["frame_start"] == 1
    assert np.array_equal(np.asarray(doc["expression"]["values"], np.float32), want.expression)  # exact
    assert np.allclose(doc["head_pose"]["rotation_euler_xyz"], want.rotation, atol=0)
    own = c.get("/api/v1/subjects/synth/curves")
    assert own.json()["frame_count"] == 12  # default: its own frames
    # Blender fetches those once and loops them itself, by the shared rule: the same document, exactly
    assert curves_io.looped(curves_io.validate(own.json()), 30) == doc


def test_captured_curves_carry_an_etag_that_changes_with_the_capture(api):
    c, ws = api
    r = c.get("/api/v1/subjects/synth/curves")
    tag = r.headers["etag"]
    assert tag.startswith('"') and c.get("/api/v1/subjects/synth/curves", params={"frames": 30}).headers["etag"] != tag
    again = c.get("/api/v1/subjects/synth/curves", headers={"If-None-Match": tag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == tag
    assert c.get("/api/v1/subjects/synth/curves", headers={"If-None-Match": '"other"'}).status_code == 200
    expr = ws / "subjects" / "synth" / "expression.npy"
    st = expr.stat()
    os.utime(expr, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # prepared again
    changed = c.get("/api/v1/subjects/synth/curves", headers={"If-None-Match": tag})
    assert changed.status_code == 200 and changed.headers["etag"] != tag


@pytest.mark.parametrize("path, status, words", [
    ("/api/v1/subjects/nobody/curves", 404, "prepare it first"),
    ("/api/v1/subjects/..%2Fx/curves", 404, ""),
    ("/api/v1/subjects/synth/curves?frames=0", 422, ""),
    ("/api/v1/subjects/synth/curves?frames=abc", 422, ""),
])
def test_captured_curves_errors(api, path, status, words):
    c, _ = api
    r = c.get(path)
    assert r.status_code in (status, 422 if status == 404 else status), r.text
    assert words in r.json().get("hint", "") + r.json().get("message", "")
    assert c.get("/api/v1/subjects/synth/curves", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_frames_is_a_render_parameter_of_the_cli_and_the_service():
    from headsync import cli, tasks
    from headsync.core.errors import UserError

    field = tasks.TASKS["render"].model.model_fields["frames"]
    assert not field.is_required()
    args = cli._parser().parse_args(["render", "--subject", "s", "--audio", "a.wav", "--frames", "3-5"])
    assert cli._params(args)["frames"] == "3-5"
    assert tasks.validate("render", {"subject": "s", "audio": "a.wav", "frames": "3-5"})["frames"] == "3-5"
    with pytest.raises(UserError):
        tasks.validate("render", {"subject": "s", "audio": "a.wav", "frames": "3-x"})


def test_frame_rows_name_the_curves_frames():
    from headsync.curves import Curves
    from headsync.core.errors import UserError
    from headsync.render.dub import curves_rows, frame_rows

    c = Curves(25.0, 101, np.arange(70, dtype=np.float32).reshape(10, 7) / 70, np.zeros((10, 3)), np.ones((10, 3)))
    assert frame_rows(None, c) == (0, 9) and frame_rows("103-104", c) == (2, 3)
    part = curves_rows(c, np.arange(2, 4))
    assert part.frame_start == 103 and part.frame_count == 2 and np.array_equal(part.expression, c.expression[2:4])
    with pytest.raises(UserError, match="outside the shot's frames 101-110"):
        frame_rows("1-2", c)


def test_subject_record_warnings_runs_and_torso(api):
    """``GET /subjects/NAME`` (and the listing): what the add-on shows beside a subject, read from its
    folder as untrusted data (issue 11's warnings, issue 12's renderer, issue 15's torso mode)."""
    import json

    c, ws = api
    sd = ws / "subjects" / "synth"
    man = json.loads((sd / "subject.json").read_text())
    blink = "the footage shows no full blink (the eyes never close), so blink edits will be weak"
    man["warnings"] = [blink, "x" * 5000, 42, "bell\x07 and\nnewline"]
    (sd / "subject.json").write_text(json.dumps(man))
    r = c.get("/api/v1/subjects/synth")
    assert r.status_code == 200, r.text
    rec = r.json()
    assert rec["name"] == "synth" and rec["prepared"] and rec["runs"] == [] and rec["models"] == []
    assert rec["warnings"][0] == blink and rec["warnings"][2] == "bell and newline"  # text only, one paragraph
    assert len(rec["warnings"]) == 3 and len(rec["warnings"][1]) == 1000
    assert rec["torso"] == {"mode": "source", "trained": ["source"]}
    # a trained run (the trainer's metrics.json) and a torso job's record with the restorer trained
    (sd / "models" / "default").mkdir(parents=True)
    (sd / "models" / "default" / "metrics.json").write_text(json.dumps(
        {"renderer": "gaussian", "heldout_psnr": 25.4, "weak_expressions": ["eyeBlinkLeft", "../etc", 3],
         "checkpoint": str(sd / "models" / "default" / "checkpoint.pt")}))
    (sd / "models" / "half").mkdir()
    (sd / "torso").mkdir()
    (sd / "torso" / "torso.json").write_text(json.dumps({"mode": "restorer", "config": {}}))
    (sd / "torso" / "restorer.pt").write_bytes(b"weights")
    rec = c.get("/api/v1/subjects/synth").json()
    assert rec["runs"] == ["default", "half"]
    assert rec["models"] == [
        {"name": "default", "trained": True, "renderer": "gaussian", "heldout_psnr": 25.4,
         "weak_expressions": ["eyeBlinkLeft"]},
        {"name": "half", "trained": False, "renderer": None, "heldout_psnr": None, "weak_expressions": None}]
    assert rec["torso"] == {"mode": "restorer", "trained": ["source", "restorer"]}
    assert str(ws) not in r.text and str(ws) not in json.dumps(rec)  # no path of the folder is passed on
    assert c.get("/api/v1/subjects").json() == [rec]
    for path, status in (("/api/v1/subjects/nobody", 404), ("/api/v1/subjects/..%2Fx", 404),
                         ("/api/v1/subjects/bad%20name", 422)):
        r = c.get(path)
        assert r.status_code == status, (path, r.text)
    assert "known subjects: synth" in c.get("/api/v1/subjects/nobody").json()["hint"]


def test_render_takes_a_torso_mode():
    from headsync import tasks
    from headsync.core.errors import UserError

    assert tasks.validate("render", {"subject": "s", "audio": "a.wav", "torso": "field+restorer"})["torso"] == \
        "field+restorer"
    with pytest.raises(UserError, match="torso"):
        tasks.validate("render", {"subject": "s", "audio": "a.wav", "torso": "statue"})
