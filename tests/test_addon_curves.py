"""curves.json build/parse/validation and the shot logic of the add-on (pure layer, no bpy)."""

from __future__ import annotations

import json
import math
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from blender_addon import curves_io, shots  # noqa: E402
from blender_addon.curves_io import CORE_NAMES, CurvesError  # noqa: E402
from headsync.core.package_data import sample_dir


def _doc(n=5, pose=True):
    rng = np.random.default_rng(0)
    rows = rng.random((n, 7)).tolist()
    rot = (rng.random((n, 3)) - 0.5).tolist() if pose else None
    trans = rng.random((n, 3)).tolist() if pose else None
    return curves_io.make(rows, 25.0, 10, rot, trans, source="edited")


def test_round_trip(tmp_path):
    doc = _doc()
    p = curves_io.write(tmp_path / "sub" / "curves.json", doc)
    back = curves_io.read(p)
    assert back == doc
    assert back["frame_count"] == 5 and back["frame_start"] == 10 and back["fps"] == 25.0
    assert back["expression"]["names"] == list(CORE_NAMES)
    assert not list((tmp_path / "sub").glob(".curves-*"))  # no temporary left behind


def test_matches_the_design_schema():
    doc = _doc(3)
    assert set(doc) == {"schema", "fps", "frame_start", "frame_count", "expression", "head_pose", "source"}
    assert doc["schema"] == "headsync.curves/1"
    assert set(doc["head_pose"]) == {"rotation_euler_xyz", "translation"}
    assert "head_pose" not in _doc(3, pose=False)


def test_columns_in_any_order_are_reordered():
    doc = json.loads(curves_io.dumps(_doc(4)))
    names = list(reversed(doc["expression"]["names"]))
    vals = [list(reversed(r)) for r in doc["expression"]["values"]]
    shuffled = dict(doc, expression={"names": names, "values": vals})
    assert curves_io.validate(shuffled)["expression"] == doc["expression"]


@pytest.mark.parametrize("mutate, words", [
    (lambda d: d.update(schema="other/1"), "schema"),
    (lambda d: d.update(fps=0), "fps"),
    (lambda d: d.update(fps=float("nan")), "fps"),
    (lambda d: d.update(frame_count=6), "rows but frame_count is 6"),
    (lambda d: d.update(frame_count=0), "frame_count"),
    (lambda d: d.update(frame_start="1"), "frame_start"),
    (lambda d: d["expression"]["names"].__setitem__(0, "jawOpen"), "seven core names"),
    (lambda d: d["expression"]["values"][2].__setitem__(5, 1.5), "outside [0, 1]"),
    (lambda d: d["expression"]["values"][2].__setitem__(5, float("inf")), "not finite"),
    (lambda d: d["expression"]["values"][1].pop(), "list of 7 numbers"),
    (lambda d: d["expression"]["values"][0].__setitem__(0, "x"), "not a number"),
    (lambda d: d["head_pose"].pop("translation"), "both"),
    (lambda d: d["head_pose"]["rotation_euler_xyz"].pop(), "rows but frame_count"),
    (lambda d: d.update(source="invented"), "source"),
    (lambda d: d.pop("expression"), "expression"),
])
def test_validation_names_the_problem(mutate, words):
    d = json.loads(curves_io.dumps(_doc(5)))
    mutate(d)
    with pytest.raises(CurvesError) as e:
        curves_io.validate(d)
    assert words in e.value.message


def test_read_errors_are_clear(tmp_path):
    with pytest.raises(CurvesError) as e:
        curves_io.read(tmp_path / "missing.json")
    assert "does not exist" in e.value.message
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(CurvesError) as e:
        curves_io.read(tmp_path / "bad.json")
    assert "not readable JSON" in e.value.message


def test_clamp01_counts():
    rows, n = curves_io.clamp01([[-0.1, 0.5, 1.2, 0, 1, 0.3, float("nan")]])
    assert rows == [[0.0, 0.5, 1.0, 0.0, 1.0, 0.3, 0.0]] and n == 3


def test_backend_reads_what_the_addon_writes(tmp_path):
    """The backend's own reader (when present) accepts our files, pose included, in the same convention."""
    try:
        from headsync import curves as backend_curves
    except ImportError:
        pytest.skip("the backend's headsync.curves is not importable")
    doc = _doc(6)
    p = curves_io.write(tmp_path / "c.json", doc)
    c = backend_curves.read_curves(p, 6)
    assert np.allclose(c.expression, np.asarray(doc["expression"]["values"]), atol=1e-6)
    R = backend_curves.euler_xyz_to_matrix(np.asarray(doc["head_pose"]["rotation_euler_xyz"]))
    mine = np.asarray([shots.euler_xyz_to_matrix(e) for e in doc["head_pose"]["rotation_euler_xyz"]])
    assert np.allclose(R, mine, atol=1e-9)


# ---- shots ------------------------------------------------------------------------------------
def test_names():
    assert shots.safe_name("My Shot #1.wav") == "My_Shot_1.wav"
    assert shots.safe_name("../..") == "subject"
    assert shots.NAME_RE.match(shots.safe_name("é" * 100 + "x"))
    assert shots.unique_name("a", ["a", "a_002"]) == "a_003"
    assert shots.empty_name("s1") == "HS_s1" and shots.data_path("eyeBlinkLeft") == '["eyeBlinkLeft"]'


def test_ping_pong_matches_the_backend():
    rows = [[float(i)] * 7 for i in range(4)]
    out = shots.fit_to_length(rows, 25, 25, 10)
    assert [r[0] for r in out] == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3]
    try:
        from headsync.curves import ping_pong
    except ImportError:
        return
    assert [r[0] for r in out] == ping_pong(4, 10).tolist()


def test_resampling_between_rates():
    rows = [[float(i)] * 7 for i in range(11)]
    out = shots.fit_to_length(rows, 25, 50, 5)
    assert [r[0] for r in out] == [0, 0.5, 1.0, 1.5, 2.0]
    assert shots.fit_to_length([[0.3] * 7], 25, 25, 3) == [[0.3] * 7] * 3


def test_euler_round_trip():
    rng = np.random.default_rng(1)
    for e in (rng.random((20, 3)) - 0.5) * 2:
        m = shots.euler_xyz_to_matrix(e)
        assert np.allclose(shots.matrix_to_euler_xyz(m), e, atol=1e-9)


def test_keyframe_co_is_flat():
    assert shots.keyframe_co(10, [0.1, 0.2]) == [10.0, 0.1, 11.0, 0.2]
    assert shots.columns([[1, 2], [3, 4]], 2) == [[1, 3], [2, 4]]


def test_free_channel():
    occ = [(2, 0, 100), (3, 50, 60), (4, 200, 300)]
    assert shots.free_channel(occ, 0, 100, above=2) == 4
    assert shots.free_channel(occ, 0, 40, above=2) == 3


def test_job_fields_and_frames_dir(tmp_path):
    f = shots.job_fields({"state": "running", "progress": {"fraction": 0.25, "stage": "train", "eta_s": 125},
                          "error": None})
    assert f["fraction"] == 0.25 and f["stage"] == "train" and f["eta"] == "2m05s" and f["error"] == ""
    f = shots.job_fields({"state": "failed", "error": {"message": "boom", "hint": "do x"}})
    assert (f["error"], f["hint"]) == ("boom", "do x")
    (tmp_path / "frames").mkdir()
    for i in (1, 0, 2):
        (tmp_path / "frames" / f"{i:06d}.png").write_bytes(b"")
    assert shots.find_frames_dir({"frames": str(tmp_path / "frames")}) == str(tmp_path / "frames")
    assert shots.find_frames_dir({"out": str(tmp_path)}) == str(tmp_path / "frames")
    assert shots.frame_files(tmp_path / "frames") == ["000000.png", "000001.png", "000002.png"]
    assert shots.frame_files(tmp_path / "nope") == []


def test_load_captured(tmp_path):
    with pytest.raises(shots.ShotError) as e:
        shots.load_captured(tmp_path, "ghost")
    assert "not in the workspace" in e.value.message
    sd = tmp_path / "subjects" / "astro"
    sd.mkdir(parents=True)
    with pytest.raises(shots.ShotError) as e:
        shots.load_captured(tmp_path, "astro")
    assert "prepare" in e.value.hint
    vals = np.random.default_rng(2).random((8, 7)).astype(np.float32)
    np.save(sd / "expression.npy", vals)
    eul = (np.random.default_rng(3).random((8, 3)) - 0.5)
    R = np.stack([shots.euler_xyz_to_matrix(e) for e in eul])
    np.savez(sd / "pose.npz", R=R, T=np.ones((8, 3)))
    (sd / "subject.json").write_text(json.dumps({"source": {"fps": 30.0}}))
    cap = shots.load_captured(tmp_path, "astro")
    assert cap["fps"] == 30.0 and len(cap["values"]) == 8
    assert np.allclose(cap["values"], vals, atol=1e-6)
    assert np.allclose(cap["rotation"], eul, atol=1e-9) and cap["translation"][0] == [1.0, 1.0, 1.0]


def test_audio_frame_count(tmp_path):
    p = tmp_path / "a.wav"
    with wave.open(str(p), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\0\0" * 64000)
    assert shots.audio_seconds(p) == 4.0
    assert shots.render_frame_count(4.0, 25.0) == 100
    assert shots.audio_seconds(tmp_path / "none.wav") is None
    assert math.isclose(shots.audio_seconds(sample_dir() / "dub.wav") or 4.0, 4.0)


def test_subject_names_never_overwrite_another_video(tmp_path):
    sd = tmp_path / "subjects" / "astro"
    sd.mkdir(parents=True)
    (sd / "subject.json").write_text(json.dumps({"source": {"path": "/videos/a.mp4"}}))
    assert shots.free_subject_name("astro", tmp_path, "/videos/a.mp4", []) == "astro"      # same video: reuse
    assert shots.free_subject_name("astro", tmp_path, "/videos/b.mp4", []) == "astro_002"  # another video
    assert shots.free_subject_name("astro", tmp_path, "/videos/a.mp4", ["astro"]) == "astro_002"
    assert shots.free_subject_name("new", tmp_path, "/videos/b.mp4", []) == "new"
    assert shots.free_subject_name("astro", None, "/videos/b.mp4", []) == "astro"


def test_addon_and_backend_agree_on_the_seven_names():
    """The add-on may not import the backend (bpy + stdlib only), so the names live twice: keep them equal."""
    from headsync.subject.folder import CORE_EXPRESSIONS

    assert tuple(CORE_NAMES) == tuple(CORE_EXPRESSIONS)
