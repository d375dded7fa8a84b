"""The Head-Sync Stabilizer (SyncTalk 3.3, SyncTalk++ III-C): stage ``pose``, writing ``pose.npz``.

Pipeline (all frames at once, vectorised; see docs/stabilizer.md for the choices):

1. Focal search (SyncTalk Eq. 5) with MediaPipe's canonical face mesh: for log-spaced focal candidates,
   poses are re-initialised in closed form and refined by Levenberg-Marquardt on a subset of frames; the
   candidate with the lowest landmark MSE wins (refined by a parabola in log focal). The template's
   scale is fixed (cm), so focal and depth are told apart only by perspective; the whole error curve is
   kept in ``pose.npz``. Without the canonical mesh the focal is a prior (see :func:`fit_raw_poses`).
2. Raw poses (Eq. 6): the template refined to the subject, fitted to every frame with the chosen focal
   on semantically weighted landmarks: mouth and jaw points (which move with speech) weigh 0, eyes and
   brows are down-weighted (SyncTalk++ semantic weighting), iris 0.
3. Head points tracker: keypoints where the Laplacian of the optical flow is significant (Eq. 10), on
   textured skin inside the face, tracked with pyramidal Lucas-Kanade on downscaled frames; each takes the
   semantic class (and weight) of its nearest landmark.
4. Two-stage bundle adjustment (Eqs. 7-8) with Adam: the 3D points of landmarks and keypoints with the
   poses fixed, then keypoints and poses jointly (the landmark shape held, which fixes the gauge), under
   a weighted robust reprojection loss plus a small second-difference prior on the poses.

Conventions: ``X_cam = R @ X_head + T`` in the OpenCV camera (x right, y down, z forward), head
coordinates as in :mod:`headsync.face_template` (cm). Pixel coordinates are continuous crop pixels with
pixel ``i`` covering ``[i, i + 1)`` (MediaPipe's normalised landmark x crop side), so ``cx = cy = S / 2``.
Pixel-valued settings are given for a 512-px crop and scale with the crop side.
"""

from __future__ import annotations

import math
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import cv2
import numpy as np
import torch
from scipy.spatial.transform import Rotation, Slerp

from . import face_template as ft
from .errors import UserError
from .progress import Reporter
from .subject import Subject, save_npz_atomic

NAME = "pose"
VERSION = 1
REQUIRES = ("landmarks",)

#: Crop side the pixel-valued settings refer to.
REF_SIZE = 512.0


@dataclass(frozen=True)
class Config:
    """Settings of the ``[pose]`` preset table. Pixel values are at a 512-px crop (scaled with S)."""

    # template (face_template)
    use_canonical: bool = True        # MediaPipe's canonical mesh when the face_landmarker bundle is installed
    fallback_focal: float = 2.0       # x crop side, when there is no canonical mesh to search the focal with
    identity_blend_xy: float = 0.8    # weight of the subject's own shape in the template, image axes
    identity_blend_z: float = 0.5     # ... and depth (MediaPipe's z is weaker evidence)
    # focal search (SyncTalk Eq. 5)
    focal_min: float = 0.5            # x crop side
    focal_max: float = 4.0            # x crop side
    focal_candidates: int = 16
    focal_frames: int = 24            # frames the search fits (evenly spaced)
    fit_iterations: int = 12          # Levenberg-Marquardt steps of a pose fit (at most)
    fit_landmarks: int = 128          # landmarks the fits use: a spread subset of the weighted ones
    huber_px: float = 3.0             # robust landmark fit: residuals beyond this count linearly
    # semantic weighting (SyncTalk++)
    eye_brow_weight: float = 0.15
    lower_face_weight: float = 0.0    # mouth and jaw
    # head points tracker
    flow_size: int = 160              # optical flow on frames decoded at >= this side (JPEG DCT scaling)
    flow_gap: int = 3                 # frames between the pair whose flow selects keypoints
    seed_every: int = 20              # frames between keypoint seedings
    keypoints_per_seed: int = 48
    min_keypoints: int = 16           # taken even below the threshold when the head is still
    laplacian_threshold: float = 0.05 # |Laplacian of flow| at flow resolution, 1/px
    keypoint_spacing: float = 0.04    # minimum distance between keypoints, x face width
    track_length: int = 60            # frames a keypoint is followed
    fb_error_px: float = 0.5          # forward-backward LK error that ends a track (flow resolution)
    min_track_frames: int = 6
    # bundle adjustment (SyncTalk Eqs. 7-8)
    point_iterations: int = 30        # stage 1: points only
    joint_iterations: int = 60        # stage 2: points and poses
    ba_landmarks: int = 96            # landmarks in the bundle adjustment (their weight is per frame anyway)
    learning_rate_px: float = 1.0     # Adam step of stage 1, in pixels of image motion (decays to 1/10)
    joint_step: float = 0.1           # stage 2 step relative to stage 1 (poses start close)
    landmark_sigma_px: float = 2.0    # landmark noise
    landmark_effective_points: float = 30.0  # a frame's landmarks weigh as this many independent points
    track_sigma_px: float = 0.7       # keypoint noise
    smooth_sigma_px: float = 0.3      # expected frame-to-frame change of pose velocity
    shape_sigma_cm: float = 0.5       # landmark points may leave the template by about this
    track_reject_px: float = 4.0      # tracks fitting worse than this (RMS) after stage 1 are dropped


# ---- rotations -------------------------------------------------------------------------------------------
def rotation_to_euler_xyz(R: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) -> Euler angles (..., 3) in radians, Blender's ``'XYZ'`` order.

    ``R = Rz(e[2]) @ Ry(e[1]) @ Rx(e[0])``: rotate about x (pitch), then y (yaw), then z (roll), fixed axes.
    Unique for |e[1]| < 90 degrees (head poses are far from that gimbal lock).
    """
    R = np.asarray(R, np.float64)
    x = np.arctan2(R[..., 2, 1], R[..., 2, 2])
    y = np.arctan2(-R[..., 2, 0], np.hypot(R[..., 0, 0], R[..., 1, 0]))
    z = np.arctan2(R[..., 1, 0], R[..., 0, 0])
    return np.stack([x, y, z], -1)


def euler_xyz_to_rotation(e: np.ndarray) -> np.ndarray:
    """Euler angles (..., 3) in radians (Blender ``'XYZ'``) -> rotation matrices (..., 3, 3)."""
    e = np.asarray(e, np.float64)
    c, s = np.cos(e), np.sin(e)
    one, zero = np.ones_like(c[..., 0]), np.zeros_like(c[..., 0])
    rx = np.stack([one, zero, zero, zero, c[..., 0], -s[..., 0], zero, s[..., 0], c[..., 0]], -1)
    ry = np.stack([c[..., 1], zero, s[..., 1], zero, one, zero, -s[..., 1], zero, c[..., 1]], -1)
    rz = np.stack([c[..., 2], -s[..., 2], zero, s[..., 2], c[..., 2], zero, zero, zero, one], -1)
    shape = e.shape[:-1] + (3, 3)
    return rz.reshape(shape) @ ry.reshape(shape) @ rx.reshape(shape)


def rotvec_to_matrix(w: np.ndarray) -> np.ndarray:
    """Axis-angle vectors (..., 3), radians -> rotation matrices (..., 3, 3)."""
    w = np.asarray(w, np.float64)
    return Rotation.from_rotvec(w.reshape(-1, 3)).as_matrix().reshape(w.shape[:-1] + (3, 3))


def matrix_to_rotvec(R: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) -> axis-angle vectors (..., 3), radians."""
    R = np.asarray(R, np.float64)
    return Rotation.from_matrix(R.reshape(-1, 3, 3)).as_rotvec().reshape(R.shape[:-2] + (3,))


def pose_jitter(R: np.ndarray, T: np.ndarray) -> tuple[float, float]:
    """Mean absolute second difference of a pose sequence: (rotation, degrees; translation, units of T).

    R (N, 3, 3), T (N, 3). Rotation uses the XYZ Euler angles (unwrapped), averaged over the three angles
    and the frames; a steady pose or a constant-velocity motion scores 0, frame-to-frame shake scores high.
    """
    if len(R) < 3:
        return 0.0, 0.0
    e = np.unwrap(rotation_to_euler_xyz(R), axis=0)
    d2e = np.diff(e, 2, axis=0)
    d2t = np.diff(np.asarray(T, np.float64), 2, axis=0)
    return float(np.degrees(np.abs(d2e)).mean()), float(np.abs(d2t).mean())


# ---- semantic weighting ------------------------------------------------------------------------------------
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


# ---- projection and the per-frame pose fit (numpy, batched over frames) ------------------------------------
def project(Xc: np.ndarray, focal: np.ndarray | float, cx: float, cy: float) -> np.ndarray:
    """Camera-space points (B, L, 3) -> pixels (B, L, 2); ``focal`` scalar or (B,)."""
    f = np.asarray(focal, np.float64).reshape(-1, 1, 1) if np.ndim(focal) else focal
    z = np.maximum(Xc[..., 2:3], 1e-6)
    return f * Xc[..., :2] / z + np.array([cx, cy])


def initial_poses(X: np.ndarray, lm3d: np.ndarray, w: np.ndarray, focal: np.ndarray | float, cx: float, cy: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form poses from MediaPipe's 3D landmarks (weak perspective), the warm start of the fit.

    X (L, 3) template, cm; lm3d (B, L, 3) landmarks in crop pixels with MediaPipe depth; w (B, L) weights
    (0 where missing); focal scalar or (B,). The similarity template -> landmarks gives the rotation and
    the scale s = focal / depth of the template centroid. Returns R (B, 3, 3), T (B, 3), cm.
    """
    s, rot, t = ft.similarity_transform(X, lm3d, w)
    f = np.broadcast_to(np.asarray(focal, np.float64), s.shape)
    centroid = (w[..., None] * X).sum(-2) / np.maximum(w.sum(-1, keepdims=True), 1e-12)  # (B, 3)
    centre_px = s[:, None] * np.einsum("bij,bj->bi", rot, centroid) + t  # where the centroid is seen
    depth = f / np.maximum(s, 1e-9)
    rc = np.einsum("bij,bj->bi", rot, centroid)
    T = np.stack([(centre_px[:, 0] - cx) / s - rc[:, 0], (centre_px[:, 1] - cy) / s - rc[:, 1], depth - rc[:, 2]], -1)
    return rot, T


def _huber_cost(e: np.ndarray, w: np.ndarray, delta: float) -> np.ndarray:
    """Per-frame weighted Huber cost of residual norms e (B, L) -> (B,)."""
    rho = np.where(e <= delta, 0.5 * e**2, delta * (e - 0.5 * delta))
    return (w * rho).sum(-1)


def _residuals(X, obs, R, T, focal, cx, cy):
    """Rotated template Y (B, L, 3), camera points Xc (B, L, 3) and pixel residuals (B, L, 2)."""
    Y = np.einsum("bij,lj->bli", R, X)
    Xc = Y + T[:, None, :]
    return Y, Xc, project(Xc, focal, cx, cy) - obs


def _pose_jacobian(Y: np.ndarray, Xc: np.ndarray, f: np.ndarray) -> np.ndarray:
    """d(u, v) / d(rotation update, translation) for rotated points Y and camera points Xc (B, L, 3),
    focal f (B,) -> (B, L, 2, 6). With R <- exp(d) R the point moves by d x Y (Jacobian -[Y]x); the
    projection's derivative is f / z (1, 0, -x / z) for u and f / z (0, 1, -y / z) for v."""
    iz = 1.0 / np.maximum(Xc[..., 2], 1e-6)
    a = f[:, None] * iz
    xz, yz = Xc[..., 0] * iz, Xc[..., 1] * iz
    y0, y1, y2 = Y[..., 0], Y[..., 1], Y[..., 2]
    ju = np.stack([-xz * y1, y2 + xz * y0, -y1, np.ones_like(xz), np.zeros_like(xz), -xz], -1)
    jv = np.stack([-y2 - yz * y1, yz * y0, y0, np.zeros_like(xz), np.ones_like(xz), -yz], -1)
    return np.stack([ju, jv], -2) * a[..., None, None]


def refine_poses(X: np.ndarray, obs: np.ndarray, w: np.ndarray, focal: np.ndarray | float, cx: float, cy: float,
                 R: np.ndarray, T: np.ndarray, iterations: int, huber_px: float = math.inf
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Batched Levenberg-Marquardt on the weighted (Huber) reprojection error of each frame.

    X (L, 3) template, cm; obs (B, L, 2) landmark pixels (any finite value where w = 0); w (B, L);
    focal scalar or (B,); R (B, 3, 3), T (B, 3) the start. Rotation updates are left-multiplied,
    R <- exp(d) R, so the Jacobian of a rotated point Y is -[Y]x. Returns refined R, T.
    """
    B = len(R)
    f = np.broadcast_to(np.asarray(focal, np.float64), (B,))
    lam = np.full(B, 1e-3)
    Y, Xc, r = _residuals(X, obs, R, T, f, cx, cy)
    cost = _huber_cost(np.linalg.norm(r, axis=-1), w, huber_px)
    eye6 = np.eye(6)
    for _ in range(iterations):
        e = np.linalg.norm(r, axis=-1)
        W = w * np.where(e <= huber_px, 1.0, huber_px / np.maximum(e, 1e-12))  # IRLS weights of the Huber loss
        J = _pose_jacobian(Y, Xc, f)  # (B, L, 2, 6)
        sw = np.sqrt(W)[..., None]
        Jw = (J * sw[..., None]).reshape(B, -1, 6)
        H = np.swapaxes(Jw, 1, 2) @ Jw
        g = np.swapaxes(Jw, 1, 2) @ (r * sw).reshape(B, -1, 1)
        Hd = H + lam[:, None, None] * (H * eye6) + 1e-9 * eye6
        step = -np.linalg.solve(Hd, g)[..., 0]
        R_new = rotvec_to_matrix(step[:, :3]) @ R
        T_new = T + step[:, 3:]
        Y_n, Xc_n, r_n = _residuals(X, obs, R_new, T_new, f, cx, cy)
        cost_n = _huber_cost(np.linalg.norm(r_n, axis=-1), w, huber_px)
        ok = (cost_n < cost) & (Xc_n[..., 2].min(-1) > 0)
        R = np.where(ok[:, None, None], R_new, R)
        T = np.where(ok[:, None], T_new, T)
        Y = np.where(ok[:, None, None], Y_n, Y)
        Xc = np.where(ok[:, None, None], Xc_n, Xc)
        r = np.where(ok[:, None, None], r_n, r)
        gain = np.where(ok, (cost - cost_n) / np.maximum(cost, 1e-12), 0.0)
        cost = np.where(ok, cost_n, cost)
        lam = np.clip(np.where(ok, lam * 0.3, lam * 8.0), 1e-7, 1e7)
        if gain.max() < 1e-7 and ok.any():  # every frame has converged
            break
    return R, T


def weighted_mse(X, obs, w, focal, cx, cy, R, T) -> np.ndarray:
    """Per-frame weighted mean squared reprojection error, px^2: (B,)."""
    _, _, r = _residuals(X, obs, R, T, np.broadcast_to(np.asarray(focal, np.float64), (len(R),)), cx, cy)
    return (w * (r**2).sum(-1)).sum(-1) / np.maximum(w.sum(-1), 1e-12)


def fit_poses(X: np.ndarray, lm: np.ndarray, w: np.ndarray, focal: np.ndarray | float, cx: float, cy: float,
              iterations: int, huber_px: float = math.inf) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form start + Levenberg-Marquardt: X (L, 3); lm (B, L, 3) landmarks; w (B, L). -> R, T."""
    R, T = initial_poses(X, lm, w, focal, cx, cy)
    return refine_poses(X, lm[..., :2], w, focal, cx, cy, R, T, iterations, huber_px)


def choose_focal(candidates: np.ndarray, errors: np.ndarray) -> float:
    """The focal of least error, refined by a parabola through its neighbours in log focal."""
    i = int(np.argmin(errors))
    if i == 0 or i == len(candidates) - 1:
        return float(candidates[i])
    x = np.log(candidates[i - 1:i + 2])
    a, b, _ = np.polyfit(x, errors[i - 1:i + 2], 2)
    if a <= 0:
        return float(candidates[i])
    return float(np.exp(np.clip(-b / (2 * a), x[0], x[2])))


def search_focal(X: np.ndarray, lm: np.ndarray, w: np.ndarray, size: int, cfg: Config
                 ) -> tuple[float, np.ndarray, np.ndarray]:
    """SyncTalk Eq. 5 on a subset of frames: X (L, 3); lm (F, L, 3); w (F, L) -> (focal, candidates, errors).

    For each candidate the poses are re-initialised and refined; the error is the weighted landmark MSE
    (px^2) averaged over the frames, with a Huber fit so that a few bad landmarks do not pick the focal.
    """
    cands = np.geomspace(cfg.focal_min, cfg.focal_max, cfg.focal_candidates) * size
    C, F = len(cands), len(lm)
    f = np.repeat(cands, F)
    lm_b = np.tile(lm, (C, 1, 1))
    w_b = np.tile(w, (C, 1))
    c = size / 2.0
    R, T = fit_poses(X, lm_b, w_b, f, c, c, cfg.fit_iterations, cfg.huber_px * size / REF_SIZE)
    errors = weighted_mse(X, lm_b[..., :2], w_b, f, c, c, R, T).reshape(C, F).mean(1)
    return choose_focal(cands, errors), cands, errors


def fill_invalid_poses(R: np.ndarray, T: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Poses for frames without landmarks: slerp / linear between the nearest valid frames, held at the
    ends. R (N, 3, 3), T (N, 3), valid (N,) bool with at least one True."""
    idx = np.flatnonzero(valid)
    if idx.size == len(valid):
        return R, T
    t = np.clip(np.arange(len(valid)), idx[0], idx[-1])
    if idx.size == 1:
        return np.repeat(R[idx], len(valid), 0), np.repeat(T[idx], len(valid), 0)
    R_out = Slerp(idx, Rotation.from_matrix(R[idx]))(t).as_matrix()
    T_out = np.stack([np.interp(t, idx, T[idx, k]) for k in range(3)], -1)
    return R_out, T_out


@dataclass
class RawFit:
    """Output of the head motion tracker (steps 1-2). Arrays over all N frames."""

    focal: float
    focal_source: str        # "search" (canonical template) or "prior" (subject's own template)
    candidates: np.ndarray   # (C,) focal candidates, px
    errors: np.ndarray       # (C,) weighted landmark MSE of each, px^2
    template: ft.FaceTemplate  # the template of the pose fit
    R: np.ndarray            # (N, 3, 3) raw rotations (invalid frames interpolated)
    T: np.ndarray            # (N, 3) raw translations, cm
    valid: np.ndarray        # (N,) frames with landmarks


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


def _fit_inputs(landmarks: np.ndarray, template: ft.FaceTemplate, cfg: Config):
    """Template points, landmarks and weights restricted to the fit's landmarks, and the valid frames."""
    weights = fit_weights(template, cfg)
    used = weights > 0
    lm, w, valid = landmark_inputs(landmarks, weights)
    return template.points[used].astype(np.float64), lm[:, used], w[:, used], valid


def _focal_curve(landmarks: np.ndarray, template: ft.FaceTemplate, size: int, cfg: Config):
    """:func:`search_focal` on ``focal_frames`` evenly spaced frames with landmarks."""
    X, lm, w, valid = _fit_inputs(landmarks, template, cfg)
    vidx = np.flatnonzero(valid)
    sub = vidx[np.linspace(0, vidx.size - 1, min(cfg.focal_frames, vidx.size)).astype(int)]
    return search_focal(X, lm[sub], w[sub], size, cfg)


def fit_raw_poses(landmarks: np.ndarray, canonical: np.ndarray | None, size: int, cfg: Config) -> RawFit:
    """The head motion tracker (SyncTalk Eqs. 5-6): template, focal, then per-frame poses.

    landmarks (N, 478, 3) crop pixels, NaN rows allowed; canonical (468, 3) MediaPipe's canonical mesh or
    None. With the canonical mesh the focal is searched with it (an independent shape: the only way the
    search sees perspective), then the template is refined to the subject as seen with that focal. Without
    it the template is the subject's own shape, which has absorbed the perspective of its frames, so the
    error curve carries almost no focal information: the focal is the prior ``fallback_focal`` and the
    curve is only recorded.
    """
    if not np.isfinite(landmarks).all(axis=(1, 2)).any():
        raise UserError("no frame has face landmarks, so the head pose cannot be estimated",
                        "use a clip where the face is visible and re-run `headsync prepare`")
    c = size / 2.0
    if canonical is not None:
        base = ft.canonical_template(canonical)
        focal, cands, errors = _focal_curve(landmarks, base, size, cfg)
        template = ft.refine_to_subject(base, landmarks, focal, (c, c), cfg.identity_blend_xy, cfg.identity_blend_z)
        source = "search"
    else:
        focal = cfg.fallback_focal * size
        template = ft.subject_template(landmarks, focal, (c, c))
        _, cands, errors = _focal_curve(landmarks, template, size, cfg)
        source = "prior"
    X, lm, w, valid = _fit_inputs(landmarks, template, cfg)
    vidx = np.flatnonzero(valid)
    R = np.tile(np.eye(3), (len(lm), 1, 1))
    T = np.zeros((len(lm), 3))
    R[vidx], T[vidx] = fit_poses(X, lm[vidx], w[vidx], focal, c, c, cfg.fit_iterations,
                                 cfg.huber_px * size / REF_SIZE)
    R, T = fill_invalid_poses(R, T, valid)
    return RawFit(focal, source, cands, errors, template, R, T, valid)


# ---- head points tracker -----------------------------------------------------------------------------------
def flow_laplacian(flow: np.ndarray) -> np.ndarray:
    """|Laplacian| of a flow field (h, w, 2) -> (h, w) float32, 1/px: sqrt(lap(u)^2 + lap(v)^2).

    Zero for any affine motion (a head translating, rotating in plane or zooming); large where the
    motion changes abruptly: depth steps (nose, brows, cheek contour) and textured features.
    """
    lu = cv2.Laplacian(np.ascontiguousarray(flow[..., 0], np.float32), cv2.CV_32F, ksize=3)
    lv = cv2.Laplacian(np.ascontiguousarray(flow[..., 1], np.float32), cv2.CV_32F, ksize=3)
    mag = np.sqrt(lu * lu + lv * lv)
    mag[[0, -1], :] = 0.0  # undefined on the border (a mirrored linear field is not linear): no keypoints
    mag[:, [0, -1]] = 0.0
    return mag


def select_laplacian_keypoints(lap: np.ndarray, mask: np.ndarray, threshold: float, max_points: int,
                               min_points: int, min_distance: int) -> np.ndarray:
    """Keypoints K' = {k : |L(F(k))| > threshold} (SyncTalk++ Eq. 10) inside ``mask``.

    lap (h, w) from :func:`flow_laplacian`; mask (h, w) bool/uint8. Local maxima at least ``min_distance``
    px apart, strongest first, at most ``max_points``; when fewer than ``min_points`` pass the threshold
    (a still head has almost no flow), the strongest maxima make up the number. Returns (K, 2) float32
    (x, y) pixel positions.
    """
    size = 2 * max(int(min_distance), 1) + 1
    peak = lap >= cv2.dilate(lap, cv2.getStructuringElement(cv2.MORPH_RECT, (size, size)))
    ys, xs = np.nonzero(peak & (mask > 0) & (lap > 0))
    strength = lap[ys, xs]
    order = np.argsort(-strength, kind="stable")
    ys, xs, strength = ys[order], xs[order], strength[order]
    keep = _spaced(np.stack([xs, ys], -1), min_distance, max_points)
    xs, ys, strength = xs[keep], ys[keep], strength[keep]
    n = max(int((strength > threshold).sum()), min(min_points, len(xs)))
    return np.stack([xs[:n], ys[:n]], -1).astype(np.float32)


def _spaced(points: np.ndarray, min_distance: float, limit: int) -> np.ndarray:
    """Indices of a greedy subset of ``points`` (in priority order) at least ``min_distance`` apart."""
    chosen: list[int] = []
    for i, p in enumerate(points):
        if len(chosen) >= limit:
            break
        if not chosen or np.min(np.abs(points[chosen] - p).max(-1)) >= min_distance:
            chosen.append(i)
    return np.asarray(chosen, int)


def nearest_regions(points: np.ndarray, landmarks2d: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """Semantic class of each point from its nearest landmark (SyncTalk++ semantic weighting mask).

    points (K, 2), landmarks2d (478, 2) in the same pixels, regions (478,) -> (K,) int8.
    """
    if len(points) == 0:
        return np.zeros(0, np.int8)
    d = ((points[:, None, :] - landmarks2d[None, :, :]) ** 2).sum(-1)
    return regions[np.argmin(d, axis=1)].astype(np.int8)


def face_seed_mask(landmarks2d: np.ndarray, shape: tuple[int, int], erode_frac: float = 0.06) -> np.ndarray:
    """uint8 mask (h, w) of the face oval shrunk by ``erode_frac`` x face width (no background at the
    contour, where the flow's Laplacian is large for the wrong reason). landmarks2d (478, 2) pixels."""
    mask = np.zeros(shape, np.uint8)
    oval = np.round(landmarks2d[list(ft.FACE_OVAL)]).astype(np.int32)
    cv2.fillPoly(mask, [oval], 1)
    width = np.ptp(landmarks2d[:, 0])
    k = max(int(round(erode_frac * width)), 1)
    return cv2.erode(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1)))


def texture_mask(gray: np.ndarray, quality: float = 0.02) -> np.ndarray:
    """Pixels with enough texture for Lucas-Kanade: min eigenvalue of the structure tensor above
    ``quality`` x its 99th percentile. (h, w) uint8 -> (h, w) bool."""
    eig = cv2.cornerMinEigenVal(gray, blockSize=5, ksize=3)
    return eig > quality * max(float(np.percentile(eig, 99)), 1e-12)


@dataclass
class Tracks:
    """Keypoint tracks: M observations of K tracks, in continuous crop pixels."""

    frame: np.ndarray   # (M,) int32 frame of each observation
    track: np.ndarray   # (M,) int32 track of each observation
    uv: np.ndarray      # (M, 2) float32 pixel position
    region: np.ndarray  # (K,) int8 semantic class of each track
    seed: np.ndarray    # (K,) int32 frame each track started

    @property
    def count(self) -> int:
        return len(self.region)

    @staticmethod
    def empty() -> "Tracks":
        return Tracks(np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros((0, 2), np.float32),
                      np.zeros(0, np.int8), np.zeros(0, np.int32))


def _lookahead(frames: Iterable[np.ndarray], gap: int) -> Iterator[tuple[np.ndarray, np.ndarray | None, np.ndarray]]:
    """Yield (frame t, frame t+1 or None, frame min(t+gap, last)) from a stream, holding gap+1 frames."""
    buf: deque[np.ndarray] = deque()
    it = iter(frames)
    for f in it:
        buf.append(f)
        if len(buf) > gap:
            break
    while buf:
        cur = buf.popleft()  # buf now holds frames t+1 .. t+gap
        yield cur, (buf[0] if buf else None), (buf[-1] if buf else cur)
        nxt = next(it, None)
        if nxt is not None:
            buf.append(nxt)


def track_keypoints(frames: Iterable[np.ndarray], scale: float, landmarks: np.ndarray, regions: np.ndarray,
                    cfg: Config, progress: Callable[[int], None] | None = None) -> Tracks:
    """The head points tracker on a stream of grayscale frames (h, w) uint8 decoded at 1/``scale`` of the
    crop. landmarks (N, 478, 3) crop pixels (NaN rows allowed); regions (478,) landmark classes.

    At every ``seed_every``-th frame with landmarks, the Farneback flow to ``flow_gap`` frames later picks
    keypoints by its Laplacian inside the face (textured pixels, away from live tracks); mouth, jaw and iris
    keypoints are dropped. Tracks follow by pyramidal LK with a forward-backward check, for at most
    ``track_length`` frames. Returns :class:`Tracks` in crop pixels.
    """
    n = len(landmarks)
    valid = np.isfinite(landmarks).all(axis=(1, 2))
    small = landmarks[..., :2] / scale - 0.5  # crop continuous pixels -> OpenCV pixel centres at 1/scale
    keep_region = region_weights(1.0, 0.0) > 0  # rigid, eye, brow: dropped classes never get a track
    lk = dict(winSize=(15, 15), maxLevel=3, criteria=(cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 20, 0.03))
    fb_max = cfg.fb_error_px
    obs_f: list[np.ndarray] = []
    obs_k: list[np.ndarray] = []
    obs_p: list[np.ndarray] = []
    regions_out: list[np.ndarray] = []
    seeds_out: list[np.ndarray] = []
    pts = np.zeros((0, 2), np.float32)
    ids = np.zeros(0, np.int32)
    born = np.zeros(0, np.int32)
    next_id, last_seed = 0, -cfg.seed_every
    for t, (cur, nxt, ahead) in enumerate(_lookahead(frames, cfg.flow_gap)):
        if t >= n:
            break
        if valid[t] and t - last_seed >= cfg.seed_every:
            new = _seed_keypoints(cur, ahead, small[t], pts, cfg)
            cls = nearest_regions(new, small[t], regions)
            new, cls = new[keep_region[cls]], cls[keep_region[cls]]
            k = len(new)
            pts = np.concatenate([pts, new])
            ids = np.concatenate([ids, np.arange(next_id, next_id + k, dtype=np.int32)])
            born = np.concatenate([born, np.full(k, t, np.int32)])
            regions_out.append(cls)
            seeds_out.append(np.full(k, t, np.int32))
            next_id += k
            last_seed = t
        if len(pts):
            obs_f.append(np.full(len(pts), t, np.int32))
            obs_k.append(ids.copy())
            obs_p.append(pts.copy())
        if nxt is not None and len(pts):
            p1, found, _ = cv2.calcOpticalFlowPyrLK(cur, nxt, pts.reshape(-1, 1, 2), None, **lk)
            p0, found_back, _ = cv2.calcOpticalFlowPyrLK(nxt, cur, p1, None, **lk)
            p1, p0 = p1.reshape(-1, 2), p0.reshape(-1, 2)
            h, w = cur.shape
            # forward-backward check: a point that does not track back to where it was has slipped
            ok = ((found.ravel() == 1) & (found_back.ravel() == 1) & (np.abs(p0 - pts).max(-1) < fb_max)
                  & (p1[:, 0] >= 0) & (p1[:, 1] >= 0) & (p1[:, 0] <= w - 1) & (p1[:, 1] <= h - 1)
                  & (t + 1 - born < cfg.track_length))
            pts, ids, born = p1[ok], ids[ok], born[ok]
        if progress:
            progress(1)
    if not obs_f:
        return Tracks.empty()
    frame, track, uv = np.concatenate(obs_f), np.concatenate(obs_k), np.concatenate(obs_p)
    region, seed = np.concatenate(regions_out), np.concatenate(seeds_out)
    return _drop_short(Tracks(frame, track, ((uv + 0.5) * scale).astype(np.float32), region, seed),
                       cfg.min_track_frames)


def _seed_keypoints(cur: np.ndarray, ahead: np.ndarray, lm2d: np.ndarray, live: np.ndarray, cfg: Config
                    ) -> np.ndarray:
    """Laplacian-of-flow keypoints in one frame (flow-resolution pixels), away from live tracks."""
    flow = cv2.calcOpticalFlowFarneback(cur, ahead, None, 0.5, 3, 13, 3, 5, 1.1, 0)
    face_w = float(np.ptp(lm2d[:, 0]))
    spacing = max(int(round(cfg.keypoint_spacing * face_w)), 2)
    mask = face_seed_mask(lm2d, cur.shape) & texture_mask(cur)
    for x, y in live:  # no new keypoint on top of a live one
        cv2.circle(mask, (int(round(x)), int(round(y))), spacing, 0, -1)
    return select_laplacian_keypoints(flow_laplacian(flow), mask, cfg.laplacian_threshold,
                                      cfg.keypoints_per_seed, cfg.min_keypoints, spacing)


def _drop_short(tracks: Tracks, min_frames: int) -> Tracks:
    """Remove tracks with fewer than ``min_frames`` observations and renumber the rest 0..K-1."""
    counts = np.bincount(tracks.track, minlength=tracks.count)
    keep = counts >= min_frames
    new_id = np.cumsum(keep) - 1
    m = keep[tracks.track]
    return Tracks(tracks.frame[m], new_id[tracks.track[m]].astype(np.int32), tracks.uv[m],
                  tracks.region[keep], tracks.seed[keep])


# ---- bundle adjustment (PyTorch, Adam) ---------------------------------------------------------------------
def rodrigues(w: torch.Tensor) -> torch.Tensor:
    """Axis-angle (..., 3) -> rotation matrices (..., 3, 3), differentiable at 0 (series for small angles)."""
    th2 = (w * w).sum(-1, keepdim=True)
    th = torch.sqrt(th2 + 1e-12)
    small = th2 < 1e-6
    a = torch.where(small, 1 - th2 / 6, torch.sin(th) / th)
    b = torch.where(small, 0.5 - th2 / 24, (1 - torch.cos(th)) / (th2 + 1e-12))
    zero = torch.zeros_like(w[..., 0])
    K = torch.stack([zero, -w[..., 2], w[..., 1], w[..., 2], zero, -w[..., 0], -w[..., 1], w[..., 0], zero],
                    -1).reshape(w.shape[:-1] + (3, 3))
    eye = torch.eye(3, dtype=w.dtype).expand_as(K)
    return eye + a[..., None] * K + b[..., None] * (K @ K)


def _robust(x: torch.Tensor, k: float = 2.0) -> torch.Tensor:
    """Huber penalty of normalised residuals (quadratic up to k sigma, then linear)."""
    return torch.where(x <= k, 0.5 * x * x, k * (x - 0.5 * k))


@dataclass
class BundleResult:
    """Output of the bundle adjustment (step 4)."""

    R: np.ndarray                 # (N, 3, 3)
    T: np.ndarray                 # (N, 3), cm
    landmarks3d: np.ndarray       # (478, 3) refined landmark points, cm (template where not observed)
    points3d: np.ndarray          # (K, 3) keypoint positions, cm
    track_weight: np.ndarray      # (K,) final weight of each track (0 = rejected)
    track_residuals: np.ndarray   # (M,) reprojection residual of each observation, px
    landmark_residuals: np.ndarray  # (N,) weighted RMS landmark residual per frame, px (NaN when invalid)


def _whitening(H: np.ndarray, damping: float) -> np.ndarray:
    """Matrices P (..., d, d) with P^T H P = I for Gauss-Newton blocks H (..., d, d) (damped by
    ``damping`` x their mean diagonal): a unit step of P q moves the projections by about 1 px RMS."""
    d = H.shape[-1]
    Hd = H + damping * (np.trace(H, axis1=-2, axis2=-1) / d)[..., None, None] * np.eye(d) + 1e-12 * np.eye(d)
    return np.swapaxes(np.linalg.inv(np.linalg.cholesky(Hd)), -1, -2)


def _point_jacobians(X: np.ndarray, R: np.ndarray, T: np.ndarray, focal: float) -> np.ndarray:
    """d(u, v) / d(X_head) for head points X (M, 3) seen with poses R (M, 3, 3), T (M, 3) -> (M, 2, 3)."""
    Xc = np.einsum("mij,mj->mi", R, X) + T
    iz = 1.0 / np.maximum(Xc[:, 2], 1e-6)
    dp = np.zeros((len(X), 2, 3))
    dp[:, 0, 0] = dp[:, 1, 1] = focal * iz
    dp[:, 0, 2] = -focal * Xc[:, 0] * iz * iz
    dp[:, 1, 2] = -focal * Xc[:, 1] * iz * iz
    return dp @ R


class _Problem:
    """The bundle adjustment's variables and loss.

    Every variable is an increment from its start (raw poses, template, surface-initialised keypoints)
    through a per-block whitening matrix from the Gauss-Newton Hessian at the start: one unit of a
    variable moves the projections by about one pixel, and the strong correlations inside a block (a
    head turn vs a sideways shift; a keypoint's depth vs its position) are undone, which a diagonal
    optimiser like Adam cannot do by itself. Head turns are about the face centroid.
    """

    def __init__(self, lm_xy, lm_w, template, tracks: Tracks, track_w, pts0, R0, T0, focal, c, size, cfg: Config):
        dt = torch.float32
        px = size / REF_SIZE
        self.cfg, self.focal, self.c = cfg, float(focal), float(c)
        centre = template.mean(0)
        depth = float(np.median(T0[:, 2]))
        radius = float(np.sqrt(((template - centre) ** 2).sum(-1).mean()))
        self.k_rot = focal * radius / depth        # px per radian
        self.k_T = torch.tensor([focal / depth, focal / depth, focal * radius / depth**2], dtype=dt)  # px per cm
        self.sig_l, self.sig_t, self.sig_s = (cfg.landmark_sigma_px * px, cfg.track_sigma_px * px,
                                              cfg.smooth_sigma_px * px)
        # observations
        self.lm_xy = torch.as_tensor(lm_xy, dtype=dt)
        self.lm_w = torch.as_tensor(lm_w, dtype=dt)
        self.tr_f = torch.as_tensor(tracks.frame, dtype=torch.long)
        self.tr_k = torch.as_tensor(tracks.track, dtype=torch.long)
        self.tr_uv = torch.as_tensor(tracks.uv, dtype=dt)
        self.tr_w = torch.as_tensor(track_w, dtype=dt)
        self.n_obs = float(self.lm_w.gt(0).sum() + self.tr_w[self.tr_k].gt(0).sum()) + 1.0
        # starts
        Tc0 = np.einsum("nij,j->ni", R0, centre) + T0
        self.centre = torch.as_tensor(centre, dtype=dt)
        self.R0 = torch.as_tensor(R0, dtype=dt)
        self.Tc0 = torch.as_tensor(Tc0, dtype=dt)
        self.lm0 = torch.as_tensor(template, dtype=dt)
        self.pts0 = torch.as_tensor(pts0, dtype=dt)
        # whitening of each block
        Y = np.einsum("nij,lj->nli", R0, template - centre)
        J = _pose_jacobian(Y, Y + Tc0[:, None], np.full(len(R0), float(focal))).reshape(len(R0), -1, 6)
        self.P_pose = torch.as_tensor(_whitening(np.swapaxes(J, 1, 2) @ J / J.shape[1], 1e-6), dtype=dt)
        n, L = len(R0), len(template)
        Jl = _point_jacobians(np.tile(template, (n, 1)), np.repeat(R0, L, 0), np.repeat(T0, L, 0), focal)
        Hl = (np.swapaxes(Jl, 1, 2) @ Jl).reshape(n, L, 3, 3).mean(0)
        self.P_lm = torch.as_tensor(_whitening(Hl, 1e-2), dtype=dt)
        Ht = np.zeros((tracks.count, 3, 3))
        if tracks.count:
            Jt = _point_jacobians(pts0[tracks.track], R0[tracks.frame], T0[tracks.frame], focal)
            np.add.at(Ht, tracks.track, np.swapaxes(Jt, 1, 2) @ Jt)
            Ht /= np.maximum(np.bincount(tracks.track, minlength=tracks.count), 1)[:, None, None]
        self.P_pts = torch.as_tensor(_whitening(Ht, 1e-2), dtype=dt)
        # variables
        self.q_pose = torch.zeros((n, 6), dtype=dt, requires_grad=True)
        self.q_lm = torch.zeros((L, 3), dtype=dt, requires_grad=True)
        self.q_pts = torch.zeros((tracks.count, 3), dtype=dt, requires_grad=True)

    def poses(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """R (N, 3, 3), T (N, 3) of X_cam = R X_head + T, and the face centroid's camera position (N, 3)."""
        d = torch.einsum("nij,nj->ni", self.P_pose, self.q_pose)
        R = rodrigues(d[:, :3]) @ self.R0
        Tc = self.Tc0 + d[:, 3:]
        return R, Tc - R @ self.centre, Tc

    def points(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Landmark points (L, 3) and keypoints (K, 3), head cm."""
        return (self.lm0 + torch.einsum("lij,lj->li", self.P_lm, self.q_lm),
                self.pts0 + torch.einsum("kij,kj->ki", self.P_pts, self.q_pts))

    def _project(self, Xc: torch.Tensor) -> torch.Tensor:
        return self.focal * Xc[..., :2] / Xc[..., 2:3].clamp_min(1e-3) + self.c

    def residuals(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Landmark residual norms (N, L) and track residual norms (M,), px."""
        R, T, _ = self.poses()
        lm, pts = self.points()
        d_l = self._project(torch.einsum("nij,lj->nli", R, lm) + T[:, None]) - self.lm_xy
        Xc = torch.einsum("mij,mj->mi", R[self.tr_f], pts[self.tr_k]) + T[self.tr_f]
        d_t = self._project(Xc) - self.tr_uv
        return torch.sqrt((d_l * d_l).sum(-1) + 1e-12), torch.sqrt((d_t * d_t).sum(-1) + 1e-12)

    def loss(self, smooth: bool) -> torch.Tensor:
        e_l, e_t = self.residuals()
        data = (self.lm_w * _robust(e_l / self.sig_l)).sum() + (self.tr_w[self.tr_k] * _robust(e_t / self.sig_t)).sum()
        lm, _ = self.points()
        shape = (((lm - self.lm0) / self.cfg.shape_sigma_cm) ** 2).sum() * 0.5
        total = data + shape
        if smooth and len(self.R0) > 2:
            R, _, Tc = self.poses()
            # second differences in pixels of image motion: |d2 R|_F / sqrt(2) is the angular acceleration
            acc_r = (R[2:] - 2 * R[1:-1] + R[:-2]).reshape(-1, 9) * (self.k_rot / math.sqrt(2))
            acc_t = (Tc[2:] - 2 * Tc[1:-1] + Tc[:-2]) * self.k_T
            total = total + 0.5 * (((acc_r / self.sig_s) ** 2).sum() + ((acc_t / self.sig_s) ** 2).sum())
        return total / self.n_obs


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run torch with ``n`` threads, then restore. The bundle adjustment's tensors hold ~1e5 values:
    threads gain nothing there, and OpenMP's spin-waiting stalls badly on a machine busy with other work."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _adam(params: list[torch.Tensor], loss_fn: Callable[[], torch.Tensor], iterations: int, lr: float,
          progress: Callable[[int], None] | None) -> None:
    """Adam with a cosine decay of the step from ``lr`` to ``lr / 10``."""
    if iterations <= 0:
        return
    opt = torch.optim.Adam(params, lr=lr)
    for i in range(iterations):
        for g in opt.param_groups:
            g["lr"] = lr * (0.1 + 0.45 * (1 + math.cos(math.pi * i / iterations)))
        opt.zero_grad(set_to_none=True)
        loss_fn().backward()
        opt.step()
        if progress:
            progress(1)


def init_track_points(tracks: Tracks, template: np.ndarray, R: np.ndarray, T: np.ndarray, focal: float, c: float
                      ) -> np.ndarray:
    """3D start of each keypoint (K, 3), head cm: its seed pixel back-projected at the depth of the
    template surface there (inverse-distance mix of the 4 nearest projected mesh points). A
    surface-based start replaces the paper's random one: stage 1 then needs few steps."""
    first = np.zeros(tracks.count, int)
    order = np.lexsort((tracks.frame, tracks.track))
    starts = np.flatnonzero(np.r_[True, np.diff(tracks.track[order]) != 0])
    first[tracks.track[order][starts]] = order[starts]
    f_idx, uv = tracks.frame[first], tracks.uv[first].astype(np.float64)
    Xc = np.einsum("kij,lj->kli", R[f_idx], template[: ft.N_MESH]) + T[f_idx][:, None]  # (K, 468, 3)
    proj = focal * Xc[..., :2] / Xc[..., 2:3] + c
    d2 = ((proj - uv[:, None]) ** 2).sum(-1)
    near = np.argsort(d2, axis=1)[:, :4]
    wgt = 1.0 / (np.sqrt(np.take_along_axis(d2, near, 1)) + 1e-3)
    z = (wgt * np.take_along_axis(Xc[..., 2], near, 1)).sum(1) / wgt.sum(1)
    cam = np.stack([(uv[:, 0] - c) * z / focal, (uv[:, 1] - c) * z / focal, z], -1)
    return np.einsum("kji,kj->ki", R[f_idx], cam - T[f_idx])  # R^T (X - T)


def bundle_adjust(landmarks: np.ndarray, lm_weights: np.ndarray, template: np.ndarray, tracks: Tracks,
                  track_weights: np.ndarray, R0: np.ndarray, T0: np.ndarray, focal: float, size: int, cfg: Config,
                  progress: Callable[[int], None] | None = None) -> BundleResult:
    """Two-stage bundle adjustment (SyncTalk Eqs. 7-8) with Adam.

    landmarks (N, 478, 3) crop pixels (NaN rows allowed); lm_weights (478,) semantic weights; template
    (478, 3) cm; tracks with track_weights (K,); R0, T0 the raw poses (N, ...). Stage 1 moves only the
    3D points (landmarks and keypoints) with the poses fixed; tracks that still fit badly are dropped; stage
    2 moves points and poses together, with the second-difference pose prior.
    """
    used = lm_weights > 0
    lm, w, valid = landmark_inputs(landmarks, lm_weights)
    # MediaPipe's landmark errors are correlated across the mesh (it shifts as a whole), so a frame's
    # landmarks count as a few independent observations, not hundreds: rescale each frame's weights.
    w = w * (cfg.landmark_effective_points / np.maximum(w.sum(1, keepdims=True), 1e-12))
    with _torch_threads(1):
        return _bundle_adjust(lm, w, valid, used, template.astype(np.float64), tracks, track_weights, R0, T0,
                              focal, size, cfg, progress)


def _bundle_adjust(lm, w, valid, used, tmpl, tracks, track_weights, R0, T0, focal, size, cfg, progress
                   ) -> BundleResult:
    """:func:`bundle_adjust` after its inputs are arranged: lm (N, 478, 3) zero-filled, w (N, 478) frame
    weights, valid (N,), used (478,) landmarks in the fit, tmpl (478, 3) float64."""
    c = size / 2.0
    pts0 = init_track_points(tracks, tmpl, R0, T0, focal, c) if tracks.count else np.zeros((0, 3))
    pr = _Problem(lm[:, used, :2], w[:, used], tmpl[used], tracks, track_weights, pts0, R0, T0, focal, c, size, cfg)
    lr = cfg.learning_rate_px * size / REF_SIZE
    _adam([pr.q_lm, pr.q_pts], lambda: pr.loss(smooth=False), cfg.point_iterations, lr, progress)
    if tracks.count:  # a track that a rigid point cannot explain is not on the rigid head
        with torch.no_grad():
            _, e_t = pr.residuals()
            rms = np.sqrt(np.bincount(tracks.track, (e_t**2).numpy(), tracks.count)
                          / np.maximum(np.bincount(tracks.track, minlength=tracks.count), 1))
            pr.tr_w = pr.tr_w * torch.as_tensor(rms <= cfg.track_reject_px * size / REF_SIZE, dtype=torch.float32)
    # stage 2: the landmark shape stays as stage 1 left it, which fixes the gauge (a rigid motion of all
    # points and poses together changes no projection)
    _adam([pr.q_pose, pr.q_pts], lambda: pr.loss(smooth=True), cfg.joint_iterations, lr * cfg.joint_step, progress)
    with torch.no_grad():
        R, T, _ = pr.poses()
        lm_pts, pts = pr.points()
        e_l, e_t = pr.residuals()
        lm3d = tmpl.copy()
        lm3d[used] = lm_pts.double().numpy()
        wl = pr.lm_w.numpy()
        rms_l = np.sqrt((wl * e_l.numpy() ** 2).sum(1) / np.maximum(wl.sum(1), 1e-12))
        rms_l[~valid] = np.nan
        return BundleResult(R.double().numpy(), T.double().numpy(), lm3d, pts.double().numpy(),
                            pr.tr_w.numpy(), e_t.numpy(), rms_l)


# ---- the whole stabilizer on arrays (pure) and the stage (I/O) --------------------------------------------
@dataclass
class PoseResult:
    """Everything the stabilizer found for one clip; ``size`` is the crop side S."""

    raw: RawFit
    bundle: BundleResult
    tracks: Tracks
    size: int

    def arrays(self) -> dict[str, np.ndarray]:
        """The contents of ``pose.npz`` (layout in docs/stabilizer.md)."""
        b, r, t, size = self.bundle, self.raw, self.tracks, self.size
        return {
            "R": b.R.astype(np.float32), "T": b.T.astype(np.float32),
            "focal": np.float32(r.focal), "cx": np.float32(size / 2), "cy": np.float32(size / 2),
            "image_size": np.int32(size),
            "R_raw": r.R.astype(np.float32), "T_raw": r.T.astype(np.float32),
            "focal_candidates": r.candidates.astype(np.float32), "focal_errors": r.errors.astype(np.float32),
            "template": r.template.points.astype(np.float32),
            "template_regions": r.template.regions.astype(np.int8),
            "landmarks3d": b.landmarks3d.astype(np.float32),
            "track_points": t.uv.astype(np.float32),
            "track_index": np.stack([t.frame, t.track], -1).astype(np.int32),
            "track_residuals": b.track_residuals.astype(np.float32),
            "track_weights": b.track_weight.astype(np.float32),
            "points3d": b.points3d.astype(np.float32),
            "landmark_residuals": b.landmark_residuals.astype(np.float32),
            "valid": r.valid,
        }

    def info(self) -> dict:
        """Small JSON-able summary for the manifest."""
        jr, jt = pose_jitter(self.raw.R, self.raw.T)
        sr, st = pose_jitter(self.bundle.R, self.bundle.T)
        live = self.bundle.track_weight[self.tracks.track] > 0
        return {
            "focal": round(self.raw.focal, 2),
            "focal_source": self.raw.focal_source,
            "template": self.raw.template.source,
            "reproj_px": round(float(np.nanmean(self.bundle.landmark_residuals)), 3),
            "track_reproj_px": round(float(np.median(self.bundle.track_residuals[live])), 3) if live.any() else None,
            "jitter_raw": [round(jr, 4), round(jt, 4)],
            "jitter": [round(sr, 4), round(st, 4)],
            "tracks": int((self.bundle.track_weight > 0).sum()),
            "interpolated_frames": int((~self.raw.valid).sum()),
        }


def stabilize(landmarks: np.ndarray, raw: RawFit, tracks: Tracks, size: int, cfg: Config,
              progress: Callable[[int], None] | None = None) -> PoseResult:
    """Step 4 on arrays: bundle adjustment of the raw fit with the keypoint tracks (may be empty).
    landmarks (N, 478, 3) crop pixels; ``progress`` is called once per Adam iteration."""
    lm_w = fit_weights(raw.template, cfg, cfg.ba_landmarks)
    tr_w = semantic_weights(tracks.region, cfg)
    ba = bundle_adjust(landmarks, lm_w, raw.template.points, tracks, tr_w, raw.R, raw.T, raw.focal, size, cfg,
                       progress)
    return PoseResult(raw, ba, tracks, size)


def flow_scale(size: int, flow_size: int) -> int:
    """JPEG decoding reduction (1, 2, 4 or 8): the largest that keeps the side >= ``flow_size``."""
    r = 1
    while r < 8 and size // (2 * r) >= flow_size:
        r *= 2
    return r


_REDUCED = {1: cv2.IMREAD_GRAYSCALE, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
            8: cv2.IMREAD_REDUCED_GRAYSCALE_8}


def iter_gray_frames(subject: Subject, n: int, reduction: int) -> Iterator[np.ndarray]:
    """Grayscale crops decoded at 1/``reduction`` size (the JPEG decoder scales in the DCT: fast)."""
    for i in range(n):
        img = cv2.imread(str(subject.frame_path(i)), _REDUCED[reduction])
        if img is None:
            raise UserError(f"frame {subject.frame_path(i)} is missing or unreadable",
                            "re-run `headsync prepare` (the landmarks stage writes the frames)")
        yield img


def run(subject: Subject, cfg: Config, reporter: Reporter) -> dict:
    """Stage ``pose``: read landmarks and frames, write ``pose.npz``; returns the manifest info."""
    t0 = time.perf_counter()
    landmarks = np.load(subject.path("landmarks.npy")).astype(np.float64)
    n = len(landmarks)
    size = int(subject.load().get("crop", {}).get("size") or 0)
    if not size:
        first = cv2.imread(str(subject.frame_path(0)), cv2.IMREAD_GRAYSCALE)
        if first is None:
            raise UserError(f"{subject.root} has no frames", "re-run `headsync prepare`")
        size = first.shape[0]
    reporter.start(NAME, n + cfg.point_iterations + cfg.joint_iterations)
    raw = fit_raw_poses(landmarks, ft.load_canonical(cfg.use_canonical), size, cfg)
    reduction = flow_scale(size, cfg.flow_size)
    tracks = track_keypoints(iter_gray_frames(subject, n, reduction), size / -(-size // reduction), landmarks,
                             raw.template.regions, cfg, reporter.advance)
    result = stabilize(landmarks, raw, tracks, size, cfg, reporter.advance)
    save_npz_atomic(subject.path("pose.npz"), **result.arrays())
    info = result.info()
    info["fps"] = round(n / max(time.perf_counter() - t0, 1e-9), 1)
    if info["interpolated_frames"]:
        reporter.message(f"pose: {info['interpolated_frames']} frames without landmarks got interpolated poses")
    if raw.focal_source == "search" and raw.focal in (raw.candidates[0], raw.candidates[-1]):
        reporter.message(f"pose: the focal search ended at the edge of its range ({raw.focal:.0f} px)",
                         level="warning")
    return info
