"""The optional ``landmarks68`` stage (face-alignment's FAN, 68 iBUG points) and its MediaPipe correspondence.

No test here needs the face-alignment package or its weights: without them the stage must skip cleanly
(or, enabled explicitly, stop with the install commands). The stage's own logic (face boxes from the
MediaPipe mesh, NaN rows, shapes, bookkeeping) runs against ``FakeFAN``, a test double standing in for
the network only. The last test runs the real network when the package and weights are installed
(``../shared/models``) and skips otherwise.
"""

from __future__ import annotations

import hashlib

import cv2
import numpy as np
import pytest

from headsync.prepare import landmarks68 as L68
from headsync.prepare import pipeline as prepare, tracking
from headsync.core import registry
from headsync.core.errors import UserError
from headsync.core.progress import Reporter
from headsync.prepare.stages import run_stage
from headsync.subject.folder import Subject

from conftest import SHARED


# ---- a real MediaPipe face mesh -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def astronaut_mesh():
    """(image, (478, 3) MediaPipe face mesh in image pixels, z scaled like x) of skimage's astronaut."""
    import mediapipe as mp
    from skimage import data

    img = data.astronaut()
    h, w = img.shape[:2]
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=True) as mesh:
        res = mesh.process(img)
    assert res.multi_face_landmarks, "MediaPipe found no face in the astronaut"
    pts = np.array([(p.x * w, p.y * h, p.z * w) for p in res.multi_face_landmarks[0].landmark], np.float64)
    assert pts.shape == (478, 3)
    return img, pts


def test_index_table_is_consistent():
    idx = L68.IBUG68_TO_MEDIAPIPE
    assert len(idx) == 68 and len(set(idx)) == 68
    assert all(0 <= i < 478 for i in idx)
    assert all(L68.MEDIAPIPE_TO_IBUG68[m] == i for i, m in enumerate(idx))
    mirror = L68.IBUG68_MIRROR
    assert sorted(mirror) == list(range(68))
    assert all(mirror[mirror[i]] == i for i in range(68))  # an involution
    assert [i for i in range(68) if mirror[i] == i] == [8, 27, 28, 29, 30, 33, 51, 57, 62, 66]
    covered = sorted(i for s in L68.IBUG68_GROUPS.values() for i in range(68)[s])
    assert covered == list(range(68))


def test_mirrored_ibug_pairs_are_mirrored_mediapipe_points(astronaut_mesh):
    """On a real mesh, each left/right iBUG pair lands on two points mirrored about the face's midplane."""
    _, pts = astronaut_mesh
    # The face's plane of symmetry, fitted through MediaPipe's midline vertices (forehead, nose, lips, chin).
    midline = [10, 151, 9, 8, 168, 6, 197, 195, 5, 4, 1, 19, 94, 2, 164, 0, 11, 12, 13, 14, 15, 16, 17, 18,
               200, 199, 175, 152]
    c = pts[midline].mean(0)
    normal = np.linalg.svd(pts[midline] - c)[2][2]
    p68 = L68.mediapipe_to_ibug68(pts)
    iod = np.linalg.norm(p68[36] - p68[45])
    side = (p68 - c) @ normal
    reflected = p68 - 2 * side[:, None] * normal
    err = np.linalg.norm(reflected - p68[list(L68.IBUG68_MIRROR)], axis=1) / iod
    assert err.max() < 0.06, f"iBUG point {int(err.argmax())} is not mirrored by {L68.IBUG68_MIRROR[err.argmax()]}"
    # Midline points on the plane; the image-left half (iBUG's first of each pair) on one side, the rest opposite.
    mid = [i for i in range(68) if L68.IBUG68_MIRROR[i] == i]
    assert np.abs(side[mid]).max() / iod < 0.05
    left = [0, 1, 2, 3, 4, 5, 6, 17, 18, 19, 20, 31, 36, 37, 38, 39, 40, 41, 48, 49, 58, 60, 67]
    sign = np.sign(side[36])
    assert (np.sign(side[left]) == sign).all()
    assert (np.sign(side[[L68.IBUG68_MIRROR[i] for i in left]]) == -sign).all()
    # The iBUG layout in the image: left before right, brows over eyes over nose over mouth, chin lowest.
    x, y = p68[:, 0], p68[:, 1]
    assert x[36] < x[39] < x[42] < x[45] and x[0] < x[8] < x[16] and x[48] < x[51] < x[54]
    assert y[19] < y[37] < y[30] < y[51] < y[57] < y[8] and y[8] == y[:17].max()
    assert y[27] < y[28] < y[29] < y[30] and y[62] < y[66]


def test_compare_trackers():
    rng = np.random.default_rng(0)
    mesh = rng.uniform(100, 400, (4, 478, 3)).astype(np.float32)
    lm68 = L68.mediapipe_to_ibug68(mesh).copy()
    lm68[..., :2] += (3.0, 4.0)  # 5 px everywhere
    mesh[2] = np.nan
    lm68[3] = np.nan
    d = L68.tracker_distance(lm68, mesh)
    assert np.allclose(d[:2], 5.0, atol=1e-4) and np.isnan(d[2:]).all()
    cmp = L68.compare_trackers(lm68, mesh)
    assert cmp["frames"] == 2 and abs(cmp["mean_px"] - 5) < 1e-3 and abs(cmp["p95_px"] - 5) < 1e-3
    assert len(cmp["per_point_px"]) == 68 and set(cmp["per_group_px"]) == set(L68.IBUG68_GROUPS)
    assert L68.compare_trackers(lm68[3:], mesh[3:])["frames"] == 0


def test_stage_runs_after_the_mesh():
    names = [s.NAME for s in prepare.STAGES]
    assert names.index(L68.NAME) == names.index(tracking.LANDMARKS.NAME) + 1
    assert L68.REQUIRES == ("landmarks",)


# ---- the stage --------------------------------------------------------------------------------------------
N_FRAMES = 5
LOST = (2, 4)  # frames where "MediaPipe lost the face"


@pytest.fixture
def subject(tmp_path, astronaut_mesh):
    """A subject whose crop and landmarks stages are done: N_FRAMES crops of the astronaut, mesh rows NaN in LOST."""
    img, pts = astronaut_mesh
    s = Subject(tmp_path / "subject")
    s.update(source={"frame_count": N_FRAMES, "fps": 25.0}, crop={"mode": "fixed", "box": [0, 0, 512], "size": 512})
    s.frames_dir.mkdir(parents=True)
    mesh = np.repeat(pts[None].astype(np.float32), N_FRAMES, 0)
    for i in range(N_FRAMES):
        cv2.imwrite(str(s.frame_path(i)), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        mesh[i, :, :2] += i  # a little motion
    mesh[list(LOST)] = np.nan
    np.save(s.path("landmarks.npy"), mesh)
    s.mark_done("crop", {}, 1, 0.0)
    s.mark_done("landmarks", {}, 1, 0.0)
    return s


@pytest.fixture
def models(tmp_path, monkeypatch):
    """An empty model folder; ``put(name)`` places a stand-in file under the registry's file name."""
    d = tmp_path / "models"
    d.mkdir()
    monkeypatch.setenv("HEADSYNC_MODELS", str(d))

    def put(*names):
        for n in names:
            (d / registry.entry(n).filename).write_bytes(b"stand-in, never loaded")

    return put


class FakeFAN:
    """Test double for face-alignment's ``FaceAlignment`` network only: same call, made-up points.

    With a face box it returns 68 points spread over the box (z = the point's index), as the real
    ``get_landmarks_from_image(image, detected_faces=[box])`` returns a list with one (68, 3) array (or
    (68, 2) for the 2D model). Without a box it plays the S3FD detector: ``detects`` decides whether a
    face is found.
    """

    def __init__(self, dims=3, detects=False):
        self.dims, self.detects, self.calls = dims, detects, []

    def get_landmarks_from_image(self, image, detected_faces=None):
        assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8
        self.calls.append(None if detected_faces is None else np.asarray(detected_faces[0], np.float64))
        if detected_faces is None:
            if not self.detects:
                return None
            detected_faces = [np.array([150.0, 80.0, 280.0, 190.0])]
        x1, y1, x2, y2 = detected_faces[0][:4]
        t = np.linspace(0, 1, 68)
        pts = np.stack([x1 + t * (x2 - x1), y1 + t[::-1] * (y2 - y1), np.arange(68.0)], 1)
        return [pts[:, : self.dims]]


def use_fake(monkeypatch, fake):
    monkeypatch.setattr(L68, "package_available", lambda: True)
    monkeypatch.setattr(L68, "build_aligner", lambda cfg, weights, device: fake)


def stage_info(s):
    return s.load()["stages"][L68.NAME]["info"]


def test_skips_cleanly_without_weights(subject, models):
    stale = subject.path(L68.OUTPUT)
    stale.write_bytes(b"from an earlier run")
    events = []
    assert run_stage(L68, subject, L68.Config(), Reporter(sink=events.append))
    info = stage_info(subject)
    assert set(info) == {"skipped"} and "fan_3d, fan_depth" in info["skipped"]
    assert not stale.exists()
    assert any("skipped" in e.get("message", "") for e in events)
    # Disabled explicitly: skipped too, with that reason.
    assert run_stage(L68, subject, L68.Config(enabled=False), Reporter())
    assert "enabled = false" in stage_info(subject)["skipped"]


def test_explicit_enable_without_weights_or_package_is_a_user_error(subject, models, monkeypatch):
    with pytest.raises(UserError) as e:
        run_stage(L68, subject, L68.Config(enabled=True), Reporter())
    assert "fan_3d" in e.value.message and "fan_depth" in e.value.message
    assert "headsync models install fan_3d --from FILE" in e.value.hint
    assert "headsync models install fan_depth --from FILE" in e.value.hint
    assert registry.entry("fan_3d").url in e.value.hint
    with pytest.raises(UserError) as e:
        run_stage(L68, subject, L68.Config(enabled=True, landmarks_type="2D"), Reporter())
    assert "headsync models install fan_2d --from FILE" in e.value.hint
    models("fan_3d", "fan_depth")
    monkeypatch.setattr(L68, "package_available", lambda: False)
    with pytest.raises(UserError) as e:
        run_stage(L68, subject, L68.Config(enabled=True), Reporter())
    assert "package is not installed" in e.value.message and "pip install face-alignment" in e.value.hint
    # "auto" with the weights but not the package: skipped, saying how to install it.
    assert run_stage(L68, subject, L68.Config(), Reporter())
    assert "pip install face-alignment" in stage_info(subject)["skipped"]
    assert L68.NAME in subject.load()["stages"] and not subject.path(L68.OUTPUT).exists()
    with pytest.raises(UserError):
        L68.resolve(L68.Config(enabled="yes"))


def test_installing_the_weights_reruns_the_auto_stage(subject, models, monkeypatch):
    fake = FakeFAN()
    use_fake(monkeypatch, fake)
    assert run_stage(L68, subject, L68.Config(), Reporter())
    assert "skipped" in stage_info(subject)
    assert not run_stage(L68, subject, L68.Config(), Reporter())  # nothing changed: reused
    models("fan_3d", "fan_depth")
    cfg = L68.Config()
    assert "3DFAN4-7835d9f11d.pth.tar" in cfg.installed and "depth-2a464da4ea.pth.tar" in cfg.installed
    assert run_stage(L68, subject, cfg, Reporter())  # the recorded `installed` changed: runs
    assert "skipped" not in stage_info(subject) and subject.path(L68.OUTPUT).exists()


@pytest.mark.parametrize("dims", [3, 2])
def test_stage_with_a_fake_network_writes_68_points_and_nan_rows(subject, models, monkeypatch, astronaut_mesh, dims):
    fake = FakeFAN(dims=dims)
    use_fake(monkeypatch, fake)
    models("fan_3d", "fan_depth", "fan_2d")
    cfg = L68.Config(enabled=True, landmarks_type="3D" if dims == 3 else "2D", device="cpu")
    assert run_stage(L68, subject, cfg, Reporter())
    out = np.load(subject.path(L68.OUTPUT))
    assert out.shape == (N_FRAMES, 68, 3) and out.dtype == np.float32
    lost = np.isnan(out).all((1, 2))
    assert lost.tolist() == [i in LOST for i in range(N_FRAMES)]
    assert np.isfinite(out[~lost]).all()
    # Each found frame was given the face box of its own MediaPipe landmarks; no detector ran (no s3fd).
    mesh = np.load(subject.path("landmarks.npy"))
    assert len(fake.calls) == N_FRAMES - len(LOST) and all(c is not None for c in fake.calls)
    for call, i in zip(fake.calls, [i for i in range(N_FRAMES) if i not in LOST]):
        assert np.allclose(call, L68.face_box(mesh[i]))
        assert np.allclose(out[i, 0, :2], call[[0, 3]], atol=1e-3)  # the fake's first point: (x1, y2)
    assert np.allclose(out[~lost][..., 2], np.arange(68.0) if dims == 3 else 0.0)
    info = stage_info(subject)
    assert info["frames"] == N_FRAMES and info["face_fraction"] == (N_FRAMES - len(LOST)) / N_FRAMES
    assert info["found_by_s3fd"] == 0 and info["device"] == "cpu" and info["vs_mediapipe"]["frames"] == 3
    # The box is the bounding box of the 68 corresponding mesh points.
    _, pts = astronaut_mesh
    box = L68.face_box(pts, 1.2)
    p68 = L68.mediapipe_to_ibug68(pts)[:, :2]
    centre, size = p68.min(0) / 2 + p68.max(0) / 2, p68.max(0) - p68.min(0)
    assert np.allclose(box, np.concatenate([centre - 0.6 * size, centre + 0.6 * size]))


def test_s3fd_finds_the_face_where_mediapipe_lost_it(subject, models, monkeypatch):
    fake = FakeFAN(detects=True)
    use_fake(monkeypatch, fake)
    models("fan_3d", "fan_depth", "s3fd")
    assert run_stage(L68, subject, L68.Config(), Reporter())
    out = np.load(subject.path(L68.OUTPUT))
    assert np.isfinite(out).all()
    assert sum(c is None for c in fake.calls) == len(LOST)
    info = stage_info(subject)
    assert info["found_by_s3fd"] == len(LOST) and "s3fd-619a316812.pth" in info["weights"]
    # detect_lost = false: the detector is not used, lost frames stay NaN.
    assert run_stage(L68, subject, L68.Config(detect_lost=False), Reporter())
    assert np.isnan(np.load(subject.path(L68.OUTPUT))[list(LOST)]).all()


def test_registry_checks_the_torch_hub_hash_prefix(tmp_path, monkeypatch):
    src = tmp_path / "download.pth.tar"
    src.write_bytes(b"not the 3D-FAN weights")
    e = registry.entry("fan_3d")
    assert e.sha256 == "" and e.sha256_prefix == "7835d9f11d" and e.sha256_prefix in e.filename
    for name in ("fan_2d", "s3fd"):  # full hashes, consistent with the prefix in the file name
        f = registry.entry(name)
        assert len(f.sha256) == 64 and f.sha256.startswith(f.sha256_prefix) and f.sha256_prefix in f.filename
    with pytest.raises(UserError, match="start with 7835d9f11d"):
        registry.install("fan_3d", src, tmp_path / "models")
    assert not (tmp_path / "models" / e.filename).exists()
    with pytest.raises(UserError, match="expected 619a3168"):
        registry.install("s3fd", src, tmp_path / "models")
    prefix = hashlib.sha256(src.read_bytes()).hexdigest()[:10]
    monkeypatch.setitem(registry.MODELS, "fan_3d", registry.ModelEntry(**{**e.__dict__, "sha256_prefix": prefix}))
    dest = registry.install("fan_3d", src, tmp_path / "models")
    assert dest.name == "3DFAN4-7835d9f11d.pth.tar" and dest.read_bytes() == src.read_bytes()


# ---- the real network, when installed ---------------------------------------------------------------------
def test_real_face_alignment_agrees_with_mediapipe(astronaut_mesh, monkeypatch):
    """3D-FAN on the astronaut, boxed by MediaPipe: its 68 points near the mesh's (needs the weights)."""
    if not L68.package_available():
        pytest.skip("the face-alignment package is not installed (optional: pip install face-alignment)")
    folder = SHARED / "models"
    needed = [registry.entry(n).filename for n in ("fan_3d", "fan_depth")]
    if not all((folder / f).is_file() for f in needed):
        pytest.skip(f"the face-alignment weights {', '.join(needed)} are not in {folder}")
    monkeypatch.setenv("HEADSYNC_MODELS", str(folder))
    img, pts = astronaut_mesh
    cfg = L68.Config(enabled=True, detect_lost=False, device="cpu")
    ok, _, weights = L68.resolve(cfg)
    aligner = L68.build_aligner(cfg, weights, "cpu")
    lms, _ = L68.track_frames(aligner, [img], pts[None].astype(np.float32))
    assert np.isfinite(lms).all()
    cmp = L68.compare_trackers(lms, pts[None])
    assert cmp["mean_iod"] < 0.2, cmp
