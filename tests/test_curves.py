"""curves.json: round trip, every validation error, Euler conversions, ping-pong, captured curves."""

import json

import numpy as np
import pytest

from headsync.curves import (Curves, captured_curves, euler_xyz_to_matrix, matrix_to_euler_xyz, ping_pong,
                             read_curves, validate, write_curves)
from headsync.core.errors import UserError
from headsync.subject.folder import CORE_EXPRESSIONS, Subject
from synthetic_head import make_subject


def good(n=5, pose=True):
    obj = {"schema": "headsync.curves/1", "fps": 25.0, "frame_start": 1, "frame_count": n,
           "expression": {"names": list(CORE_EXPRESSIONS), "values": np.full((n, 7), 0.25).tolist()},
           "source": "edited"}
    if pose:
        obj["head_pose"] = {"rotation_euler_xyz": np.zeros((n, 3)).tolist(), "translation": np.ones((n, 3)).tolist()}
    return obj


def test_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    c = Curves(25.0, 1, rng.random((6, 7)).astype(np.float32), rng.normal(size=(6, 3)) * 0.1, rng.normal(size=(6, 3)))
    write_curves(tmp_path / "c.json", c)
    back = read_curves(tmp_path / "c.json", 6)
    np.testing.assert_allclose(back.expression, c.expression, atol=1e-6)
    np.testing.assert_allclose(back.rotation, c.rotation, atol=1e-6)
    assert json.loads((tmp_path / "c.json").read_text())["schema"] == "headsync.curves/1"


def test_names_in_any_order_are_reordered():
    obj = good(pose=False)
    obj["expression"]["names"] = list(reversed(CORE_EXPRESSIONS))
    obj["expression"]["values"] = [[0, 0, 0, 0, 0, 0, 1.0]] * 5  # last listed = browDownLeft
    c = validate(obj, 5)
    assert c.expression[0, 0] == 1.0 and c.expression[0, 1:].sum() == 0 and not c.has_pose


@pytest.mark.parametrize("mutate, words", [
    (lambda o: o.update(schema="other/2"), "schema"),
    (lambda o: o.update(frame_count=4), "frame_count is 4"),
    (lambda o: o["expression"].update(names=list(CORE_EXPRESSIONS[:6]) + ["jawOpen"]), "unknown: ['jawOpen']"),
    (lambda o: o["expression"]["values"].pop(), "has 4 rows, expected 5"),
    (lambda o: o["expression"]["values"][2].__setitem__(3, float("nan")), "non-finite value (NaN or infinity) in row 2"),
    (lambda o: o["expression"]["values"][1].__setitem__(0, 3.0), "[0, 1]"),
    (lambda o: o["head_pose"].pop("translation"), "head_pose"),
    (lambda o: o["head_pose"]["rotation_euler_xyz"][0].append(1.0), "rows of 3"),
    (lambda o: o.update(fps=-1), "fps"),
    (lambda o: o.update(source="magic"), "source"),
])
def test_validation_errors_say_what_is_wrong(mutate, words):
    obj = good()
    mutate(obj)
    with pytest.raises(UserError) as e:
        validate(obj, 5)
    assert words in e.value.message


def test_unreadable_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_curves(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        read_curves(tmp_path / "bad.json")


def test_euler_round_trip_and_blender_order():
    e = np.random.default_rng(1).uniform(-1.2, 1.2, (50, 3))
    R = euler_xyz_to_matrix(e)
    np.testing.assert_allclose(matrix_to_euler_xyz(R), e, atol=1e-9)
    rx = euler_xyz_to_matrix(np.array([0.3, 0.0, 0.0]))
    rz = euler_xyz_to_matrix(np.array([0.0, 0.0, 0.5]))
    np.testing.assert_allclose(euler_xyz_to_matrix(np.array([0.3, 0.0, 0.5])), rz @ rx, atol=1e-12)


def test_ping_pong():
    assert ping_pong(4, 10).tolist() == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3]
    assert ping_pong(1, 3).tolist() == [0, 0, 0]
    assert ping_pong(5, 3).tolist() == [0, 1, 2]


def test_captured_curves_reproduce_the_subject(tmp_path):
    root = make_subject(tmp_path / "s", n_frames=12, size=24)
    c = captured_curves(Subject(root), 30)
    assert c.frame_count == 30 and c.source == "captured"
    pose = np.load(root / "pose.npz")
    expr = np.load(root / "expression.npy")
    idx = ping_pong(12, 30)
    np.testing.assert_allclose(c.expression, expr[idx])
    np.testing.assert_allclose(euler_xyz_to_matrix(c.rotation), pose["R"][idx], atol=1e-6)
    np.testing.assert_allclose(c.translation, pose["T"][idx], atol=1e-6)
    validate(c.to_json(), 30)  # what we write, we accept
