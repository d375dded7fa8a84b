"""Semantic weighting (SyncTalk++ III-C) and the landmarks each fit uses.

Mouth and jaw points (which move with speech) weigh 0, eyes and brows are down-weighted, iris 0; a
keypoint takes the class (and weight) of its nearest landmark. A fit uses a spread subset of the
weighted landmarks.
"""

from __future__ import annotations

import numpy as np

from .. import face_template as ft
from .config import Config


def region_weights(eye_brow_weight: float, lower_face_weight: float) -> np.ndarray:
    """Weight of each semantic class (index = ``face_template.RIGID`` ... ``IRIS``) -> (6,) float64."""
    w = np.zeros(len(ft.REGION_NAMES))
    w[ft.RIGID] = 1.0
    w[[ft.EYE, ft.BROW]] = eye_brow_weight
    w[[ft.MOUTH, ft.JAW]] = lower_face_weight
    return w  # IRIS stays 0: the iris follows the gaze, not the head


def semantic_weights(regions: np.ndarray, cfg: Config) -> np.ndarray:
    """Per-landmark (or per-keypoint) weight from semantic classes: (P,) int -> (P,) float64."""
    return region_weights(cfg.eye_brow_weight, cfg.lower_face_weight)[np.asarray(regions, int)]


def spread_subset(points: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    """``k`` of the ``candidates`` (indices into points (P, 3)) spread over the face by farthest-point
    sampling, sorted. Neighbouring mesh points carry nearly the same information (MediaPipe's errors are
    shared by neighbours), so a spread subset fits as well, faster."""
    candidates = np.asarray(candidates)
    if len(candidates) <= k:
        return np.sort(candidates)
    p = points[candidates]
    chosen = [int(np.argmin(((p - p.mean(0)) ** 2).sum(-1)))]
    d = ((p - p[chosen[0]]) ** 2).sum(-1)
    for _ in range(k - 1):
        i = int(np.argmax(d))
        chosen.append(i)
        d = np.minimum(d, ((p - p[i]) ** 2).sum(-1))
    return np.sort(candidates[chosen])


def fit_weights(template: ft.FaceTemplate, cfg: Config, count: int | None = None) -> np.ndarray:
    """Per-landmark weights of a fit (478,): semantic weights, zero outside a spread subset of ``count``
    landmarks (default ``cfg.fit_landmarks``)."""
    w = semantic_weights(template.regions, cfg)
    keep = spread_subset(template.points, np.flatnonzero(w > 0), count or cfg.fit_landmarks)
    out = np.zeros_like(w)
    out[keep] = w[keep]
    return out


def landmark_inputs(landmarks: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Landmarks with NaN rows zeroed and per-frame weights: (N, 478, 3) -> (lm, w (N, 478), valid (N,))."""
    valid = np.isfinite(landmarks).all(axis=(1, 2))
    lm = np.where(valid[:, None, None], landmarks, 0.0).astype(np.float64)
    return lm, valid[:, None] * weights[None, :], valid
