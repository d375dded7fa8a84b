"""Two-stage bundle adjustment (SyncTalk 3.3 Eqs. 7-8) with Adam (PyTorch).

The 3D points of landmarks and keypoints with the poses fixed, then keypoints and poses jointly (the
landmark shape held, which fixes the gauge), under a weighted robust reprojection loss plus a small
second-difference prior on the poses.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from .. import face_template as ft
from .config import REF_SIZE, Config
from .keypoints import Tracks
from .pose_fit import _pose_jacobian
from .weights import landmark_inputs


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
