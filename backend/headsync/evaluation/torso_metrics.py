"""Measures of the torso path (issue 15), pure array code on (S, S, 3) float RGB in [0, 1].

* :func:`band_psnr` / :func:`band_ssim`: a restored band against the truth, only over the band;
* :func:`dark_fraction`: the "dark areas around the chin" of SyncTalk++ Sec. III-F: pixels of the
  chin/neck band darker than :func:`dark_level`, the level only the darkest ``DARK_PERCENTILE`` % of
  the subject's own source bands reach (so the source frames score about that, never a degenerate 0);
* :func:`seam_energy`: gradient energy along a merge boundary (a visible seam is a ridge of gradient);
* :func:`head_clipping`: how much of a rendered head the merge mask cuts away;
* :func:`keypoint_motion`: how far projected key points move between two poses.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

#: Rec. 601 luma weights.
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def luma(image: np.ndarray) -> np.ndarray:
    """(S, S, 3) -> (S, S) luminance."""
    return (image.astype(np.float32) @ LUMA).astype(np.float32)


def band_psnr(pred: np.ndarray, truth: np.ndarray, band: np.ndarray) -> float:
    """PSNR (dB) of ``pred`` against ``truth`` over the pixels of ``band`` (S, S) bool; NaN for an
    empty band, inf when identical there."""
    if not band.any():
        return float("nan")
    m = float(np.mean((pred[band].astype(np.float64) - truth[band]) ** 2))
    return float("inf") if m <= 0 else -10.0 * math.log10(m)


def band_ssim(pred: np.ndarray, truth: np.ndarray, band: np.ndarray, sigma: float = 1.5) -> float:
    """Mean of the SSIM map (Wang et al. 2004, Gaussian window, on luma) over ``band``; NaN when empty."""
    if not band.any():
        return float("nan")
    a, b = luma(pred).astype(np.float64), luma(truth).astype(np.float64)
    blur = lambda x: cv2.GaussianBlur(x, (0, 0), sigma)  # noqa: E731
    mu_a, mu_b = blur(a), blur(b)
    va, vb, cov = blur(a * a) - mu_a ** 2, blur(b * b) - mu_b ** 2, blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (va + vb + c2))
    return float(s[band].mean())


#: The percentile of the subject's own chin/neck band luma below which a pixel counts as dark.
DARK_PERCENTILE = 5.0


def dark_level(images: list[np.ndarray], bands: list[np.ndarray], percentile: float = DARK_PERCENTILE) -> float:
    """The luma below which the darkest ``percentile`` % of the pixels of ``bands`` (S, S) bool of the
    source frames ``images`` (S, S, 3) lie: the subject's own shadow under the chin sets what is dark."""
    values = np.concatenate([luma(im)[b] for im, b in zip(images, bands)])
    if not values.size:
        raise ValueError("dark_level needs at least one non-empty band")
    return float(np.percentile(values, percentile))


def dark_fraction(image: np.ndarray, band: np.ndarray, level: float) -> float:
    """Fraction of ``band`` pixels with a luma under ``level`` (e.g. :func:`dark_level`); NaN for an empty
    band."""
    if not band.any():
        return float("nan")
    return float((luma(image)[band] < level).mean())


def boundary(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels within ``width`` px of the 0.5 level of ``mask`` (S, S) in [0, 1], (S, S) bool."""
    inside = (mask >= 0.5).astype(np.uint8)
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * width + 1,) * 2)
    return (cv2.dilate(inside, k) > 0) & ~(cv2.erode(inside, k) > 0)


def gradient_energy(image: np.ndarray) -> np.ndarray:
    """Squared Sobel gradient magnitude of the luma, (S, S)."""
    y = luma(image)
    gx, gy = cv2.Sobel(y, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(y, cv2.CV_32F, 0, 1, ksize=3)
    return gx * gx + gy * gy


def seam_energy(image: np.ndarray, mask: np.ndarray, width: int = 2, where: np.ndarray | None = None) -> float:
    """Mean gradient energy of ``image`` along the merge boundary of ``mask`` (optionally only where
    ``where`` (S, S) bool); compare a composite with the source frame on the same pixels. NaN when the
    boundary is empty."""
    b = boundary(mask, width)
    if where is not None:
        b &= where
    return float(gradient_energy(image)[b].mean()) if b.any() else float("nan")


def head_clipping(opacity: np.ndarray, merge: np.ndarray, threshold: float = 0.5) -> float:
    """Fraction of the rendered head (``opacity`` >= threshold) that the merge mask leaves out
    (``merge`` < 0.5): 0 when the whole head reaches the output. NaN when nothing was rendered."""
    head = opacity >= threshold
    return float((merge[head] < 0.5).mean()) if head.any() else float("nan")


def keypoint_motion(a: np.ndarray, b: np.ndarray) -> float:
    """Mean distance between matching points ``a``, ``b`` (N, 2) (any unit, e.g. px)."""
    return float(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64), axis=-1).mean())
