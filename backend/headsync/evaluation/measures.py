"""Measures of what a viewer sees on real footage: eyes, brows, mouth, detail, composite leaks.

Pure functions of landmark arrays and images, so the benchmark (``benchmarks/bench_real_footage.py``),
``headsync eval`` and the tests share one definition of each number.

Landmarks are MediaPipe face-mesh points (468 or 478, 2+) in pixels; images are (H, W, 3) uint8 RGB or
float in [0, 255]; masks (H, W) bool.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

#: Face-mesh eyelid pairs (upper, lower) across each eye and the eye's corners, subject's right then left.
EYELID_PAIRS = (((159, 145), (158, 153), (160, 144)), ((386, 374), (385, 380), (387, 373)))
EYE_CORNERS = ((33, 133), (263, 362))
#: Inner and middle brow points over each eye (the part browInnerUp raises), and the upper lid below them.
BROW_POINTS = ((107, 66, 105), (336, 296, 334))
UPPER_LID = (159, 386)
#: Inner-lip pairs (upper, lower) across the mouth, and the face height's ends.
INNER_LIP_PAIRS = ((13, 14), (82, 87), (312, 317), (81, 178), (311, 402))
FOREHEAD, CHIN = 10, 152


def _dist(lm: np.ndarray, a: int, b: int) -> float:
    return float(np.linalg.norm(lm[a, :2] - lm[b, :2]))


def face_height(lm: np.ndarray) -> float:
    """Forehead-chin distance (pixels), the scale the other measures are divided by."""
    return max(_dist(lm, FOREHEAD, CHIN), 1e-6)


def eye_aperture(lm: np.ndarray) -> float:
    """Mean eyelid gap over eye width of both eyes, dimensionless (about 0.3 open, under 0.1 closed)."""
    vals = []
    for pairs, (c0, c1) in zip(EYELID_PAIRS, EYE_CORNERS):
        gap = np.mean([_dist(lm, a, b) for a, b in pairs])
        vals.append(gap / max(_dist(lm, c0, c1), 1e-6))
    return float(np.mean(vals))


def brow_to_eye(lm: np.ndarray) -> float:
    """Mean distance of the inner/middle brow points to the upper lid below, over the face height."""
    vals = [_dist(lm, b, lid) for pts, lid in zip(BROW_POINTS, UPPER_LID) for b in pts]
    return float(np.mean(vals) / face_height(lm))


def mouth_opening(lm: np.ndarray) -> float:
    """Mean inner-lip gap (five pairs across the mouth) over the forehead-chin distance, dimensionless."""
    gap = np.mean([_dist(lm, a, b) for a, b in INNER_LIP_PAIRS])
    return float(gap / face_height(lm))


def closure_progress(unedited: float, edited: float, most_closed: float) -> float:
    """How far an edit moved the eye aperture from ``unedited`` toward ``most_closed`` (0 none, 1 all the
    way, negative: it opened). The blink acceptance asks for at least 0.5."""
    span = unedited - most_closed
    if abs(span) < 1e-9:
        return 0.0
    return float((unedited - edited) / span)


def relative_change(before: float, after: float) -> float:
    """``(after - before) / |before|``; 0 when ``before`` is 0."""
    return 0.0 if abs(before) < 1e-12 else float((after - before) / abs(before))


def _gray(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img, np.float32)
    return img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)


def laplacian_variance(img: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Variance of the Laplacian of the grey image (grey levels^2) over ``mask``: fine detail (0 = flat)."""
    lap = cv2.Laplacian(_gray(img), cv2.CV_32F, ksize=3)
    vals = lap[mask] if mask is not None else lap.reshape(-1)
    return float(vals.var()) if vals.size else 0.0


def detail_ratio(render: np.ndarray, source: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Laplacian variance of the render over the source's, both over ``mask`` at the same size (1 = as sharp)."""
    return laplacian_variance(render, mask) / max(laplacian_variance(source, mask), 1e-9)


def masked_psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float | None:
    """PSNR (dB, peak 255) of ``a`` against ``b`` over ``mask`` only; None for an empty mask."""
    if not mask.any():
        return None
    d = np.asarray(a, np.float64)[mask] - np.asarray(b, np.float64)[mask]
    mse = float((d ** 2).mean())
    return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-10)))


@dataclass(frozen=True)
class Leak:
    """How much a composite changed the frame where it should not: mean absolute difference (grey levels)
    over the region, and the worst ``patch`` x ``patch`` block's mean (a localised artefact)."""

    mean_abs: float
    max_patch: float


def composite_leak(composite: np.ndarray, source: np.ndarray, outside: np.ndarray, patch: int = 8) -> Leak:
    """Difference of ``composite`` to ``source`` (same size, RGB) over the pixels where ``outside`` is
    true. Blocks are the image's ``patch`` grid; only blocks lying wholly outside count, so the edge of
    the allowed region does not."""
    diff = np.abs(np.asarray(composite, np.float32) - np.asarray(source, np.float32)).mean(-1)
    if not outside.any():
        return Leak(0.0, 0.0)
    h, w = diff.shape
    hh, ww = h // patch * patch, w // patch * patch
    blocks = diff[:hh, :ww].reshape(hh // patch, patch, ww // patch, patch).mean((1, 3))
    inside = outside[:hh, :ww].reshape(hh // patch, patch, ww // patch, patch).all((1, 3))
    worst = float(blocks[inside].max()) if inside.any() else 0.0
    return Leak(float(diff[outside].mean()), worst)


def grow_mask(mask: np.ndarray, px: int) -> np.ndarray:
    """``mask`` dilated by ``px`` pixels (an ellipse), bool."""
    if px <= 0:
        return mask.astype(bool)
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * px + 1, 2 * px + 1))
    return cv2.dilate(mask.astype(np.uint8), k) > 0
