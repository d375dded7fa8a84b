"""The real-footage measures (evaluation/measures.py) on hand-built landmarks and images."""

import numpy as np
import pytest

from headsync.evaluation import measures as m


def face(eye_gap: float = 6.0, brow_lift: float = 0.0, mouth_gap: float = 0.0) -> np.ndarray:
    """A 478-point mesh with eyes 20 px wide, lids ``eye_gap`` apart, brows 12 + ``brow_lift`` px above the
    lid and a face 100 px high."""
    lm = np.zeros((478, 2), np.float32)
    lm[m.FOREHEAD], lm[m.CHIN] = (50, 0), (50, 100)
    for pairs, (c0, c1), cx in zip(m.EYELID_PAIRS, m.EYE_CORNERS, (30, 70)):
        lm[c0], lm[c1] = (cx - 10, 40), (cx + 10, 40)
        for a, b in pairs:
            lm[a], lm[b] = (cx, 40 - eye_gap / 2), (cx, 40 + eye_gap / 2)
    for pts, lid in zip(m.BROW_POINTS, m.UPPER_LID):
        for p in pts:
            lm[p] = lm[lid] - (0, 12 + brow_lift)
    for a, b in m.INNER_LIP_PAIRS:
        lm[a], lm[b] = (50, 80 - mouth_gap / 2), (50, 80 + mouth_gap / 2)
    return lm


def test_eye_aperture_is_gap_over_width():
    assert m.eye_aperture(face(eye_gap=6)) == pytest.approx(0.3)
    assert m.eye_aperture(face(eye_gap=1)) == pytest.approx(0.05)


def test_brow_and_mouth_scale_with_face_height():
    lm = face(eye_gap=6, brow_lift=3, mouth_gap=10)
    # the lid moved with the eye gap: the brows sit 15 px above it over a 100 px face
    assert m.brow_to_eye(lm) == pytest.approx(0.15)
    assert m.mouth_opening(lm) == pytest.approx(0.10)
    assert m.mouth_opening(lm * 2) == pytest.approx(0.10)


def test_closure_progress_and_relative_change():
    assert m.closure_progress(0.30, 0.30, 0.05) == 0.0
    assert m.closure_progress(0.30, 0.175, 0.05) == pytest.approx(0.5)
    assert m.closure_progress(0.30, 0.35, 0.05) < 0
    assert m.relative_change(0.2, 0.21) == pytest.approx(0.05)


def test_detail_ratio_falls_when_blurred():
    import cv2

    rng = np.random.default_rng(0)
    src = rng.integers(0, 255, (64, 64, 3)).astype(np.uint8)
    soft = cv2.GaussianBlur(src, (0, 0), 2)
    mask = np.zeros((64, 64), bool)
    mask[8:56, 8:56] = True
    assert m.detail_ratio(src, src, mask) == pytest.approx(1.0)
    assert m.detail_ratio(soft, src, mask) < 0.1


def test_masked_psnr_ignores_outside():
    a = np.zeros((10, 10, 3), np.uint8)
    b = a.copy()
    b[:, 5:] = 255
    left = np.zeros((10, 10), bool)
    left[:, :5] = True
    assert m.masked_psnr(a, b, left) > 90
    assert m.masked_psnr(a, b, ~left) == pytest.approx(0.0, abs=1e-6)
    assert m.masked_psnr(a, b, np.zeros_like(left)) is None


def test_composite_leak_finds_a_small_patch():
    src = np.full((64, 64, 3), 100, np.uint8)
    comp = src.copy()
    comp[40:48, 8:16] = 130  # an 8x8 "shoulder patch", 30 grey levels off
    outside = np.ones((64, 64), bool)
    outside[:16, :16] = False
    leak = m.composite_leak(comp, src, outside)
    assert leak.max_patch == pytest.approx(30.0)
    assert leak.mean_abs == pytest.approx(30.0 * 64 / outside.sum())
    clean = m.composite_leak(src, src, outside)
    assert clean.mean_abs == 0 and clean.max_patch == 0
