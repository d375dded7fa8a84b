"""The ``masks`` stage: label geometry on a real face mesh, temporal smoothing, the background plate,
the stage's files, and (slow) flicker on the prepared sample."""

from __future__ import annotations

import functools
import json

import cv2
import numpy as np
import pytest

from headsync.prepare import masks as mk
from headsync.core.errors import UserError
from headsync.core.progress import silent
from headsync.subject.folder import Subject

S = 256


@functools.lru_cache(maxsize=1)
def astronaut() -> tuple[np.ndarray, np.ndarray]:
    """(crop (256, 256, 3) BGR, its face mesh (478, 3) in crop pixels) from skimage's astronaut."""
    import mediapipe as mp
    import skimage.data

    rgb = cv2.resize(skimage.data.astronaut()[0:240, 105:345], (S, S), interpolation=cv2.INTER_AREA)
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True) as fm:
        res = fm.process(rgb)
    mesh = np.array([[p.x, p.y, p.z] for p in res.multi_face_landmarks[0].landmark]) * S
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), mesh


def at(labels: np.ndarray, xy) -> int:
    return int(labels[int(round(xy[1])), int(round(xy[0]))])


def face_point(fr: mk.FaceFrame, u: float, v: float) -> np.ndarray:
    """Image px of face-frame (u, v) given in face widths / heights from the oval's centre."""
    return fr.to_image(np.array([[u * fr.width, v * fr.height]]))[0]


def rotated(mesh: np.ndarray, degrees: float) -> np.ndarray:
    c = mesh[:, :2].mean(axis=0)
    r = np.radians(degrees)
    rot = np.array([[np.cos(r), -np.sin(r)], [np.sin(r), np.cos(r)]])
    out = mesh.copy()
    out[:, :2] = (mesh[:, :2] - c) @ rot.T + c
    return out


# ---- label geometry --------------------------------------------------------------------------------
@pytest.mark.parametrize("roll", [0.0, 25.0])
def test_labels_land_on_the_face_parts(roll):
    _, mesh = astronaut()
    mesh = rotated(mesh, roll)
    person = np.ones((S, S), bool)
    person[:, :10] = False  # a strip of background
    labels = mk.label_map(mesh, person, mk.Config())
    assert labels.dtype == np.uint8 and labels.shape == (S, S)
    assert set(np.unique(labels)) <= set(range(7))
    fr = mk.face_frame(mesh)
    assert at(labels, mesh[[13, 14], :2].mean(axis=0)) == mk.LIPS            # between the lips: mouth
    assert at(labels, mesh[0]) == mk.LIPS                                     # upper lip
    assert at(labels, mesh[468]) == mk.EYES_BROWS and at(labels, mesh[473]) == mk.EYES_BROWS  # irises
    assert at(labels, mesh[105]) == mk.EYES_BROWS and at(labels, mesh[334]) == mk.EYES_BROWS  # brows
    for skin in (1, 4, 50, 280, 9, 199):                                      # nose, cheeks, forehead, chin
        assert at(labels, mesh[skin]) == mk.FACE, skin
    assert at(labels, face_point(fr, 0.0, -0.62)) == mk.HEAD                  # above the forehead: hair
    assert at(labels, face_point(fr, 0.6, 0.0)) == mk.HEAD                    # beside the face: ear/hair
    assert at(labels, face_point(fr, 0.0, 0.62)) == mk.NECK                   # under the chin
    assert at(labels, face_point(fr, 0.95, 0.6)) == mk.TORSO                  # shoulder
    assert at(labels, (3, 128)) == mk.BACKGROUND
    counts = np.bincount(labels.ravel(), minlength=7)
    assert (counts > 0).all()


def test_background_wins_outside_the_person_but_not_on_the_face():
    _, mesh = astronaut()
    labels = mk.label_map(mesh, np.zeros((S, S), bool), mk.Config())
    # the segmenter said "no person" everywhere: only the mesh's own parts remain
    assert set(np.unique(labels)) == {mk.BACKGROUND, mk.FACE, mk.LIPS, mk.EYES_BROWS}


def test_frame_without_face_uses_nearest_mesh_for_head_only():
    _, mesh = astronaut()
    person = np.ones((S, S), bool)
    labels = mk.label_map(None, person, mk.Config(), nearest_face=mesh)
    assert not np.isin(labels, [mk.FACE, mk.LIPS, mk.EYES_BROWS]).any()
    assert at(labels, mesh[1]) == mk.HEAD
    assert set(np.unique(mk.label_map(None, person, mk.Config()))) == {mk.TORSO}


def test_face_frame_follows_roll():
    _, mesh = astronaut()
    base, turned = mk.face_frame(mesh), mk.face_frame(rotated(mesh, 30.0))
    angle = lambda fr: np.degrees(np.arctan2(fr.u_axis[1], fr.u_axis[0]))
    assert angle(turned) - angle(base) == pytest.approx(30.0, abs=0.5)
    assert turned.width == pytest.approx(base.width, rel=1e-6)
    assert turned.height == pytest.approx(base.height, rel=1e-6)
    pts = np.array([[10.0, 20.0], [100.0, 50.0]])
    assert np.allclose(turned.to_image(turned.to_face(pts)), pts)


# ---- temporal smoothing --------------------------------------------------------------------------------
def test_smooth_sequence_weights_and_ends():
    xs = [np.full((2, 2), float(v)) for v in (0, 0, 4, 0, 0)]
    out = [o[0, 0] for o in mk.smooth_sequence(iter(xs), (0.25, 0.5, 0.25))]
    assert out == pytest.approx([0.0, 1.0, 2.0, 1.0, 0.0])
    ends = [o[0] for o in mk.smooth_sequence(iter([np.full(1, 2.0), np.full(1, 5.0)]), (0.25, 0.5, 0.25))]
    assert ends == pytest.approx([(0.5 * 2 + 0.25 * 5) / 0.75, (0.25 * 2 + 0.5 * 5) / 0.75])
    assert [o[0] for o in mk.smooth_sequence(iter([np.ones(1)]), (1.0,))] == [1.0]


def test_smooth_sequence_streams_with_bounded_lookahead():
    pulled = []

    def source():
        for i in range(100):
            pulled.append(i)
            yield np.full(1, float(i))

    gen = mk.smooth_sequence(source(), (0.25, 0.5, 0.25))
    first = next(gen)
    assert len(pulled) == 2 and first[0] == pytest.approx(1 / 3)
    rest = list(gen)
    assert len(rest) == 99 and rest[50][0] == pytest.approx(51.0)
    with pytest.raises(ValueError):
        list(mk.smooth_sequence(iter(xs for xs in [np.ones(1)]), (0.5, 0.5)))


# ---- background plate ----------------------------------------------------------------------------------
def synthetic_clip(m: int = 20, size: int = 128):
    """A textured background with a square "person" sliding across, and a corner it always covers."""
    yy, xx = np.mgrid[0:size, 0:size]
    bg = np.stack([(xx * 2) % 256, (yy * 2) % 256, ((xx + yy) * 3) % 256], axis=-1).astype(np.uint8)
    frames, masks = [], []
    for i in range(m):
        f = bg.copy()
        person = np.zeros((size, size), bool)
        x0 = 10 + i * 3
        person[30:90, x0:x0 + 30] = True
        person[size - 20:, size - 20:] = True  # never uncovered
        f[person] = (200, 30, 30)
        frames.append(f)
        masks.append(~person)
    return bg, np.stack(frames), np.stack(masks)


def test_plate_median_recovers_background_and_marks_holes():
    bg, frames, background = synthetic_clip()
    plate, holes = mk.plate_median(frames, background, min_samples=1)
    assert holes[118:, 118:].all() and holes.sum() == 20 * 20
    assert np.array_equal(plate[~holes], bg[~holes])
    plate2, holes2 = mk.plate_median(frames, background, min_samples=3)
    assert holes2.sum() >= holes.sum()


def test_plate_median_is_the_median_of_the_valid_samples():
    frames = np.array([10, 200, 30, 40, 250], np.uint8).reshape(5, 1, 1, 1).repeat(3, axis=3)
    valid = np.array([True, False, True, True, False]).reshape(5, 1, 1)
    plate, holes = mk.plate_median(frames, valid)
    assert not holes.any() and plate[0, 0, 0] == 30
    valid2 = np.array([True, False, True, True, True]).reshape(5, 1, 1)  # 10, 30, 40, 250: lower middle
    assert mk.plate_median(frames, valid2)[0][0, 0, 0] == 30


@pytest.mark.parametrize("hole", [(slice(40, 46), slice(40, 46)), (slice(40, 128), slice(30, 100))])
def test_fill_holes_from_the_surroundings(hole):
    size = 128
    plate = np.zeros((size, size, 3), np.uint8)
    plate[:] = (90, 120, 150)
    holes = np.zeros((size, size), bool)
    holes[hole] = True
    plate[holes] = 0
    out = mk.fill_holes(plate, holes, 5)
    assert np.abs(out.astype(int) - (90, 120, 150)).max() <= 6  # Telea is smooth, not exact
    assert mk.fill_holes(plate, np.zeros_like(holes), 5) is plate


def test_plate_indices_spread():
    assert mk.plate_indices(1000, 5).tolist() == [0, 250, 500, 749, 999]
    assert mk.plate_indices(3, 60).tolist() == [0, 1, 2]


# ---- the stage --------------------------------------------------------------------------------------
def make_subject(root, n: int = 8, missing=(3,)) -> Subject:
    """A subject folder as the ``landmarks`` stage leaves it: the astronaut crop, drifting sideways."""
    img, mesh = astronaut()
    s = Subject(root)
    root.mkdir(parents=True)
    s.save({"schema": "headsync.subject/1", "source": {"fps": 25.0, "frame_count": n}, "crop": {"size": S},
            "stages": {"landmarks": {"done": True}}, "warnings": []})
    s.frames_dir.mkdir()
    lms = np.zeros((n, 478, 3), np.float32)
    for i in range(n):
        shift = 2 * i
        m = np.float32([[1, 0, shift], [0, 1, 0]])
        cv2.imwrite(str(s.frame_path(i)), cv2.warpAffine(img, m, (S, S), borderMode=cv2.BORDER_REPLICATE))
        lms[i] = mesh + [shift, 0, 0]
    lms[list(missing)] = np.nan
    np.save(s.path("landmarks.npy"), lms)
    return s


def test_run_writes_masks_and_plate(tmp_path):
    s = make_subject(tmp_path / "s")
    info = mk.run(s, mk.Config(plate_frames=4), silent())
    json.dumps(info)
    assert sorted(p.name for p in s.masks_dir.iterdir()) == [f"{i:06d}.png" for i in range(8)]
    assert not list(tmp_path.glob("s/.masks*")), "the staging folder was left behind"
    for i in range(8):
        lab = cv2.imread(str(s.mask_path(i)), cv2.IMREAD_UNCHANGED)
        assert lab.shape == (S, S) and lab.dtype == np.uint8 and lab.max() <= 6
    _, mesh = astronaut()
    lab0 = cv2.imread(str(s.mask_path(0)), cv2.IMREAD_UNCHANGED)
    assert at(lab0, mesh[1]) == mk.FACE and at(lab0, mesh[13]) == mk.LIPS
    lab3 = cv2.imread(str(s.mask_path(3)), cv2.IMREAD_UNCHANGED)  # no face found in frame 3
    assert not np.isin(lab3, [mk.FACE, mk.LIPS, mk.EYES_BROWS]).any() and (lab3 == mk.HEAD).any()
    fr = info["label_fractions"]
    assert set(fr) == set(mk.LABEL_NAMES) and sum(fr.values()) == pytest.approx(1.0, abs=1e-3)
    assert fr["background"] > 0.2 and fr["face"] > 0.05 and fr["torso"] > 0.05
    assert info["frames_without_face"] == 1 and info["background_frames"] == 4
    plate = cv2.imread(str(s.path("background.jpg")))
    assert plate.shape == (S, S, 3)
    assert 0.05 < info["background_filled_fraction"] < 0.8
    # the plate's top-left corner is the photo's background (the person never reaches it)
    corner = cv2.imread(str(s.frame_path(0)))[5:30, 5:30].reshape(-1, 3).mean(axis=0)
    assert np.abs(plate[5:30, 5:30].reshape(-1, 3).mean(axis=0) - corner).max() < 10


def test_run_refuses_without_any_face(tmp_path):
    s = make_subject(tmp_path / "s", n=3, missing=(0, 1, 2))
    with pytest.raises(UserError):
        mk.run(s, mk.Config(), silent())


# ---- on the prepared sample (slow) --------------------------------------------------------------------
@pytest.mark.slow
def test_sample_masks_are_complete_and_steady(prepared_sample):
    """Every frame has a label map with every part present, and labels flicker little between frames.

    Measured on the preview sample: a median 0.4 % of pixels change label between consecutive frames
    (the head turns and talks, so most of that is real motion). The bound, ~4x that, leaves room for
    other crops and codecs while still catching a flickering segmentation.
    """
    s = prepared_sample
    info = s.load()["stages"]["masks"]["info"]
    assert info["label_fractions"]["face"] > 0.05 and info["label_fractions"]["background"] > 0.05
    assert s.path("background.jpg").exists()
    labels = [cv2.imread(str(s.mask_path(i)), cv2.IMREAD_UNCHANGED) for i in range(min(s.frame_count(), 200))]
    for lab in labels:
        assert lab is not None and lab.max() <= 6
        assert set(np.unique(lab)) >= {0, 1, 2, 3, 4, 5}
    changed = [float((a != b).mean()) for a, b in zip(labels, labels[1:])]
    assert np.median(changed) < 0.015, np.median(changed)
