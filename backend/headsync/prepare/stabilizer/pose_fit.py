"""The head motion tracker (SyncTalk 3.3 Eqs. 5-6): focal search and raw per-frame poses (numpy, batched).

1. Focal search (SyncTalk Eq. 5) with MediaPipe's canonical face mesh: for log-spaced focal candidates,
   poses are re-initialised in closed form and refined by Levenberg-Marquardt on a subset of frames; the
   candidate with the lowest landmark MSE wins (refined by a parabola in log focal). The template's
   scale is fixed (cm), so focal and depth are told apart only by perspective; the whole error curve is
   kept in ``pose.npz``. Without the canonical mesh the focal is a prior (see :func:`fit_raw_poses`).
2. Raw poses (Eq. 6): the template refined to the subject, fitted to every frame with the chosen focal
   on semantically weighted landmarks (:mod:`.weights`).

Conventions as in :mod:`headsync.prepare.stabilizer`: ``X_cam = R @ X_head + T``, continuous crop pixels with
``cx = cy = S / 2``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation, Slerp

from .. import face_template as ft
from ...core.errors import UserError
from .config import REF_SIZE, Config
from .rotations import rotvec_to_matrix
from .weights import fit_weights, landmark_inputs


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
