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

from blender_addon import curves_io, keys, shots, ui_text  # noqa: E402
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
    (lambda d: d.update(frame_count=6), "has 5 rows, expected 6"),
    (lambda d: d.update(frame_count=0), "frame_count"),
    (lambda d: d.update(frame_start="1"), "frame_start"),
    (lambda d: d["expression"]["names"].__setitem__(0, "jawOpen"), "seven core names"),
    (lambda d: d["expression"]["values"][2].__setitem__(5, 1.5), "outside [0, 1]"),
    (lambda d: d["expression"]["values"][2].__setitem__(5, float("inf")), "non-finite"),
    (lambda d: d["expression"]["values"][1].pop(), "rows of 7 numbers"),
    (lambda d: d["expression"]["values"][0].__setitem__(0, "x"), "not a number"),
    (lambda d: d["head_pose"].pop("translation"), "both"),
    (lambda d: d["head_pose"]["rotation_euler_xyz"].pop(), "has 4 rows, expected 5"),
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
    assert "not valid JSON" in e.value.message


def test_one_set_of_rules_on_both_sides():
    """The add-on and the backend run the same module: the same defaults, tolerance and verdicts."""
    from headsync import curves as backend_curves
    from headsync import curves_format
    from headsync.core.errors import UserError

    assert curves_io.fmt.__file__ and Path(curves_io.fmt.__file__).read_bytes() == \
        Path(curves_format.__file__).read_bytes()
    d = json.loads(curves_io.dumps(_doc(3, pose=False)))
    del d["frame_start"], d["source"]
    assert curves_io.validate(d)["frame_start"] == backend_curves.validate(d).frame_start == 1
    assert curves_io.validate(d)["source"] == backend_curves.validate(d).source == "edited"
    tol = curves_format.RANGE_TOLERANCE
    d["expression"]["values"][0][0] = 1 + tol / 2   # round-off: accepted and clamped on both sides
    d["expression"]["values"][0][1] = -tol / 2
    assert curves_io.validate(d)["expression"]["values"][0][:2] == [1.0, 0.0]
    assert backend_curves.validate(d).expression[0, :2].tolist() == [1.0, 0.0]
    d["expression"]["values"][0][0] = 1 + 2 * tol   # beyond the tolerance: refused on both sides
    with pytest.raises(CurvesError):
        curves_io.validate(d)
    with pytest.raises(UserError):
        backend_curves.validate(d)
    d["expression"]["values"][0][0] = 0.5
    d["frame_start"] = 5.0  # an integral float is a frame number on both sides; 5.5 is not
    assert curves_io.validate(d)["frame_start"] == backend_curves.validate(d).frame_start == 5
    d["frame_start"] = 5.5
    with pytest.raises(CurvesError):
        curves_io.validate(d)
    with pytest.raises(UserError):
        backend_curves.validate(d)


def test_exact_round_trip_of_float32_keys(tmp_path):
    """Blender stores keys as float32: what it sends comes back bit for bit through the backend's reader."""
    from headsync import curves as backend_curves

    keys = np.random.default_rng(3).random((4, 7)).astype(np.float32)
    p = curves_io.write(tmp_path / "k.json", curves_io.make(keys.astype(np.float64).tolist(), 25.0, 1))
    back = backend_curves.read_curves(p, 4)
    assert np.array_equal(back.expression, keys)
    backend_curves.write_curves(tmp_path / "again.json", back)
    assert np.array_equal(np.asarray(curves_io.read(tmp_path / "again.json")["expression"]["values"], np.float32), keys)


def test_frame_ranges():
    assert curves_io.fmt.parse_frame_range("12-14", 10, 5) == (2, 4)
    assert curves_io.fmt.parse_frame_range("10", 10, 5) == (0, 0)
    for bad in ("9-11", "13-12", "a-b", "15"):
        with pytest.raises(CurvesError):
            curves_io.fmt.parse_frame_range(bad, 10, 5)


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
    assert np.array_equal(c.rotation, np.asarray(doc["head_pose"]["rotation_euler_xyz"]))


# ---- shots ------------------------------------------------------------------------------------
def test_names():
    assert shots.safe_name("My Shot #1.wav") == "My_Shot_1.wav"
    assert shots.safe_name("../..") == "subject"
    assert shots.is_name(shots.safe_name("é" * 100 + "x"))
    assert shots.unique_name("a", ["a", "a_002"]) == "a_003"
    assert shots.empty_name("s1") == "HS_s1" and shots.data_path("eyeBlinkLeft") == '["eyeBlinkLeft"]'


def test_the_addon_names_things_by_the_services_rule():
    """The add-on keeps its own copy of the name rule (it does not import the backend): the same pattern,
    and every name safe_name makes from an odd file name is one the service accepts."""
    from headsync.core import names
    assert shots.NAME_PATTERN == names.NAME_PATTERN and shots.NAME_MAX == names.NAME_MAX
    odd = ["a...b", "x....y", "..hidden", "shot 1 (final).wav", "-_-", "a" * 80 + ".wav", "é/../ü", "a.-.b",
           "take..2..", "x" * 63 + "..y", "  ", "Ω"]
    for text in odd:
        made = shots.safe_name(text)
        assert names.is_name(made), (text, made)
        assert shots.is_name(made) and ".." not in made
    for bad in ("a..b", ".a", "a" * 65, "a/b", 3):
        assert not shots.is_name(bad) and not names.is_name(bad), bad


def test_keyframe_co_is_flat():
    assert shots.keyframe_co(10, [0.1, 0.2]) == [10.0, 0.1, 11.0, 0.2]
    assert shots.keyframe_co(10, [0.1, 0.2, 0.3], [0, 2]) == [10.0, 0.1, 12.0, 0.3]
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


def test_captured_rows_from_a_document():
    doc = _doc(4)
    cap = shots.captured_rows(doc)
    assert cap["fps"] == 25.0 and cap["frame_count"] == 4 and cap["values"] == doc["expression"]["values"]
    assert cap["rotation"] == doc["head_pose"]["rotation_euler_xyz"]
    assert shots.captured_rows(_doc(4, pose=False))["rotation"] is None


# ---- sparse keys --------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
def test_sparse_keys_stay_within_the_tolerance(seed):
    rng = np.random.default_rng(seed)
    t = np.arange(2000)
    y = 0.5 + 0.3 * np.sin(t / (7 + seed)) + rng.normal(0, 0.004, t.size)
    y[500:504] = [0.2, 0.9, 0.95, 0.2]  # a blink
    for tol in (0.002, 0.01, 0.05):
        k = keys.sparse_keys(y.tolist(), tol)
        assert k[0] == 0 and k[-1] == len(y) - 1 and k == sorted(set(k))
        assert keys.max_deviation(y, k) <= tol + 1e-12
        lin = np.interp(t, k, y[k])  # the same curve Blender draws with linear keys
        assert np.abs(lin - y).max() <= tol + 1e-12
    n = [len(keys.sparse_keys(y.tolist(), tol)) for tol in (0.05, 0.01, 0.002)]
    assert n[0] < n[1] < n[2] and n[1] < len(y) / 2
    assert {500, 501, 502, 503} <= set(keys.sparse_keys(y.tolist(), 0.01))  # the blink's frames are keys


def test_pose_tolerance_follows_the_head_distance():
    t = keys.Tolerance()
    assert t.translation_units([[0.0, 0.0, 100.0], [0.0, 0.0, 98.0]]) == pytest.approx(5e-4 * 99)
    assert t.translation_units([]) == t.translation


def test_sparse_keys_special_cases():
    assert keys.sparse_keys([], 0.1) == [] and keys.sparse_keys([0.3], 0.1) == [0]
    assert keys.sparse_keys([0.2] * 100, 0.0) == [0, 99]            # a constant: two keys
    assert keys.sparse_keys([i / 10 for i in range(50)], 1e-12) == [0, 49]  # a straight line: two keys
    zig = [0.0, 1.0] * 10
    assert keys.sparse_keys(zig, 0.1) == list(range(20))           # nothing to drop
    assert keys.dense_keys([1, 2, 3]) == [0, 1, 2]


def test_sparse_keys_are_fast():
    """New Shot of 10,000 frames keys 13 curves: the simplification must not dominate it."""
    import time

    y = (0.5 + 0.4 * np.sin(np.arange(10000) / 9)).tolist()
    t0 = time.perf_counter()
    keys.sparse_keys(y, 0.01)
    assert time.perf_counter() - t0 < 1.0  # a generous bound for a loaded machine (typically ~0.02 s)


# ---- re-attaching jobs, notices, wording --------------------------------------------------------
def _job(jid, kind, subject, created, curves=None, frames=None):
    params = {"curves": curves} if curves else {}
    if frames:
        params["frames"] = frames
    return {"id": jid, "kind": kind, "subject": subject, "created": created, "params": params}


def test_shots_reattach_to_their_newest_job(tmp_path):
    uid = shots.new_uid()
    assert shots.UID_RE.match(uid) and shots.new_uid() != uid
    p = shots.curves_path(tmp_path, "film", uid, "20260101-000000-000")
    assert p.parent.name == uid and p.name.endswith(".curves.json")
    jobs = [_job("j1", "render", "astro", "2026-01-01T00:00:01Z", str(p)),
            _job("j2", "render", "astro", "2026-01-01T00:00:03Z", str(p)),
            _job("j3", "render", "astro", "2026-01-01T00:00:04Z", str(p), frames="5-5"),
            _job("j4", "render", "astro", "2026-01-01T00:00:05Z", str(tmp_path / "elsewhere.json")),
            _job("j5", "train", "astro", "2026-01-01T00:00:06Z")]
    assert [shots.uid_of_job(j) for j in jobs] == [uid, uid, uid, "", ""]
    assert shots.is_preview(jobs[2]) and not shots.is_preview(jobs[1])
    plan = shots.reattach_shots([("s", uid, "j1", ""), ("other", "0123456789ab", "", "")], jobs)
    assert {k: [(f, j["id"]) for f, j in v] for k, v in plan.items()} == \
        {"s": [("render_job", "j2"), ("preview_job", "j3")]}
    assert shots.reattach_shots([("s", uid, "j2", "j3")], jobs) == {}  # up to date: nothing to do
    splan = shots.reattach_subjects([("astro", "", "j0")], jobs)
    assert {k: [(f, j["id"]) for f, j in v] for k, v in splan.items()} == {"astro": [("train_job", "j5")]}


def test_notices_and_words():
    assert ui_text.notice("render", "astro", "dub", "succeeded") == ("INFO", "HeadSync: Render of shot dub finished")
    assert ui_text.notice("render", "astro", "dub", "succeeded", preview=True)[1].startswith("HeadSync: Preview")
    level, text = ui_text.notice("train", "astro", "", "failed", "CUDA out of memory", "use a smaller preset")
    assert level == "ERROR" and text == "HeadSync: Training astro failed: CUDA out of memory (use a smaller preset)"
    assert ui_text.notice("prepare", "astro", "", "cancelled")[0] == "WARNING"
    assert ui_text.words(ui_text.SHOT_WORDS, "keyed") == "Keyed, not rendered"
    assert ui_text.words(ui_text.SUBJECT_WORDS, "weird") == "Weird"
    for table in (ui_text.SHOT_WORDS, ui_text.SUBJECT_WORDS):
        assert all(w[0].isupper() and "_" not in w for w in table.values())


def test_long_messages_wrap_to_the_region():
    msg = "the subject's source video /very/long/path/to/a/video/file/that/does/not/fit.mp4 is missing " * 2
    lines = ui_text.wrap(msg, 300)
    assert len(lines) > 3 and all(len(line) <= (300 - ui_text.MARGIN_PX) / ui_text.CHAR_PX for line in lines)
    assert " ".join(lines).split() == msg.split() or "".join(lines).replace(" ", "") == msg.replace(" ", "")
    assert len(ui_text.wrap(msg, 300, ui_scale=2.0)) > len(lines)  # a larger interface: fewer characters a line
    assert ui_text.wrap("", 300) == [""] and ui_text.wrap("short", 50) == ["short"]


# ---- a subject's record from the service (blender_addon/subjects.py) -------------------------------------
def test_subject_fields_keep_what_they_expect():
    from blender_addon import subjects

    rec = {"name": "astro", "warnings": ["the footage shows no full blink\x07", 3, "x" * 5000, ""],
           "models": [{"name": "old", "trained": True, "renderer": "nerf", "heldout_psnr": 21.0,
                       "weak_expressions": None},
                      {"name": "default", "trained": True, "renderer": "gaussian", "heldout_psnr": 25.43,
                       "weak_expressions": ["eyeBlinkLeft", "rm -rf", "eyeBlinkRight"]}],
           "torso": {"mode": "restorer", "trained": ["source", "restorer", 7]}}
    f = subjects.subject_fields(rec, "default")
    assert f["warnings"][0] == "the footage shows no full blink" and len(f["warnings"]) == 2
    assert len(f["warnings"][1]) == subjects.MAX_CHARS
    assert f["renderer"] == "gaussian" and f["heldout_psnr"] == 25.43
    assert f["weak_expressions"] == ["eyeBlinkLeft", "eyeBlinkRight"]
    assert f["torso_mode"] == "restorer" and f["torso_trained"] == ["source", "restorer"]
    assert subjects.subject_fields(rec, "old")["weak_expressions"] == []  # not checked
    assert subjects.subject_fields(rec, "missing")["renderer"] == "gaussian"  # the last trained run
    empty = subjects.subject_fields("not a record")
    assert empty["warnings"] == [] and empty["renderer"] == "" and math.isnan(empty["heldout_psnr"])
    assert subjects.choice_items(["nerf", "gaussian", 5], "Preset's", "d")[0][0] == subjects.PRESET
    assert [i[0] for i in subjects.choice_items(["nerf", "gaussian"], "Preset's", "d")] == \
        [subjects.PRESET, "nerf", "gaussian"]
    assert subjects.model_line("gaussian", "default", 25.43) == "Model run default: gaussian, held-out 25.4 dB"
    assert subjects.torso_line("restorer", ["source", "restorer"]) == "Torso: restorer (a render may also use: source)"
    assert "eyeBlinkLeft" in subjects.weak_line(["eyeBlinkLeft"]) and subjects.weak_line([]) == ""


def test_express_jobs_belong_to_their_shot():
    uid = "0123456789ab"
    out = str(shots.curves_path("/ws", "film", uid, "20260101-000000-000", "expressions"))
    assert out.endswith(f"/shots/{uid}/20260101-000000-000.expressions.json")
    jobs = [{"id": "e1", "kind": "express", "params": {"out": out}, "created": "2026-01-01T00:00:01Z"},
            {"id": "e2", "kind": "express", "params": {"out": out}, "created": "2026-01-01T00:00:02Z"},
            {"id": "r1", "kind": "render", "params": {"curves": out.replace("expressions", "curves")},
             "created": "2026-01-01T00:00:03Z"},
            {"id": "t1", "kind": "torso", "subject": "astro", "params": {}, "created": "2026-01-01T00:00:04Z"}]
    assert [shots.uid_of_job(j) for j in jobs] == [uid, uid, uid, ""]
    plan = shots.reattach_shots([("s", uid, "r1", "", "e1")], jobs)
    assert plan == {"s": [("expression_job", jobs[1])]}
    assert shots.reattach_subjects([("astro", "", "", "")], jobs) == {"astro": [("torso_job", jobs[3])]}
