"""Differentiable 3D Gaussian splatting: a pure-PyTorch tile rasterizer for the CPU, gsplat's on CUDA.

:func:`rasterization` is the one entry point; it is shaped and named like ``gsplat.rasterization``
(gsplat 1.5, ``packed=False``, ``rasterize_mode="classic"``) so the same call runs either backend:

* ``"torch"`` (this module, any device): EWA splatting as 3DGS (Kerbl et al. 2023) and gsplat do it:

  1. projection: camera-space mean ``t = W mu``, covariance ``Sigma = R S S^T R^T`` from the quaternion and
     scales, ``Sigma' = J W Sigma W^T J^T`` with ``J`` the Jacobian of the perspective projection at ``t``
     (``x/z``, ``y/z`` clamped to 1.3x the field of view, as 3DGS, so splats at the border do not blow up),
     plus ``eps2d`` (0.3 px^2) on the diagonal: the low-pass filter that keeps every splat at least a pixel
     wide. Gaussians nearer than ``near_plane`` (behind the camera included) are culled.
  2. tile binning: each splat covers the tiles (``tile_size`` px square) its bounding box touches. The box
     is where ``opacity * exp(-d^2 / 2) >= 1/255`` (``d`` the Mahalanobis distance; ``3.33 sigma`` at
     opacity 1), which is exactly where compositing would skip it, so binning never drops a contribution.
  3. depth order: intersections sorted by tile, then by camera depth.
  4. compositing front to back per pixel, ``C = sum_i c_i a_i prod_{j<i} (1 - a_j)`` (SyncTalk++ Eq. 15),
     ``a_i = min(0.99, o_i exp(-d_i^2 / 2))``, splats with ``a_i < 1/255`` skipped, a pixel stopping at the
     first splat that would take its transmittance below ``1e-4`` (that splat not added), and the
     background added with the remaining transmittance.

  Tiles are processed in batches of equal-sized padded tensors (tiles x 256 pixels x splats), and each
  batch in depth slices: after a slice, tiles whose every pixel has terminated are dropped, so an opaque
  head costs about its front layers rather than all its splats. The transmittance product is a cumulative
  sum of ``log(1 - a)``; autograd gives the gradients of every input.
* ``"gsplat"``: ``gsplat.rasterization`` (CUDA only; the optional extra ``gaussian-cuda``). It clamps
  alpha at 0.999 rather than 0.99 and stops at ``T <= 1e-4`` rather than ``< 1e-4``: identical images
  whenever opacities stay below 0.99.
* ``"auto"``: gsplat when it imports and the tensors are on CUDA, else torch.

Conventions (gsplat's): ``viewmats`` world-to-camera (OpenCV: x right, y down, z forward), quaternions
``(w, x, y, z)`` (normalised here), ``scales`` and ``opacities`` already activated, pixel ``(i, j)``
centred at ``(i + 0.5, j + 0.5)``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ...core.devices import cuda_extension_available

#: Smallest alpha that is composited (3DGS, gsplat).
ALPHA_MIN = 1.0 / 255.0
#: Largest alpha of one splat (3DGS; gsplat: 0.999).
ALPHA_MAX = 0.99
#: A pixel stops compositing when its transmittance would fall below this (3DGS, gsplat).
T_MIN = 1e-4
#: Real spherical-harmonics constants of degrees 0-3 (3DGS's ``sh_utils``, gsplat's ``spherical_harmonics``).
_SH_C0 = 0.28209479177387814
_SH_C1 = 0.4886025119029199
_SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792,
          0.5462742152960396)
_SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
          -0.4570457994644658, 1.445305721320277, -0.5900435899266435)
#: Padded tile x pixel x splat entries evaluated at once (bounds the memory of one batch, ~20 MB float32).
_BATCH_ENTRIES = 1 << 22
#: log-alpha / log-transmittance of "nothing": exp() is exactly 0 in float32 and float64, gradients too.
_DONE = -1e4
_LOG_ALPHA_MIN = math.log(ALPHA_MIN)
_LOG_T_MIN = math.log(T_MIN)
#: Splats per depth slice between two checks for finished tiles.
_DEPTH_SLICE = 32


def quat_to_rotmat(quats: torch.Tensor) -> torch.Tensor:
    """Quaternions (N, 4) ``(w, x, y, z)``, any norm -> rotation matrices (N, 3, 3)."""
    q = quats / quats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], -1).view(-1, 3, 3)


def covariances(quats: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """``Sigma = R S S^T R^T`` (N, 3, 3) from quaternions (N, 4) and scales (N, 3)."""
    m = quat_to_rotmat(quats) * scales.unsqueeze(-2)  # R S
    return m @ m.transpose(-1, -2)


def sh_to_color(coeffs: torch.Tensor, dirs: torch.Tensor, degree: int) -> torch.Tensor:
    """Evaluate SH ``coeffs`` (N, K, D), ``K >= (degree + 1)^2``, at unit-free directions ``dirs`` (N, 3).

    Returns ``max(SH(d) + 0.5, 0)`` (N, D), gsplat's and 3DGS's colour convention.
    """
    if not 0 <= degree <= 3:
        raise ValueError(f"sh_degree must be 0..3, got {degree}")
    if coeffs.shape[1] < (degree + 1) ** 2:
        raise ValueError(f"sh_degree {degree} needs {(degree + 1) ** 2} coefficients, got {coeffs.shape[1]}")
    out = _SH_C0 * coeffs[:, 0]
    if degree >= 1:
        d = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        x, y, z = (d[:, i:i + 1] for i in range(3))
        out = out - _SH_C1 * y * coeffs[:, 1] + _SH_C1 * z * coeffs[:, 2] - _SH_C1 * x * coeffs[:, 3]
        if degree >= 2:
            xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
            out = (out + _SH_C2[0] * xy * coeffs[:, 4] + _SH_C2[1] * yz * coeffs[:, 5]
                   + _SH_C2[2] * (2 * zz - xx - yy) * coeffs[:, 6] + _SH_C2[3] * xz * coeffs[:, 7]
                   + _SH_C2[4] * (xx - yy) * coeffs[:, 8])
            if degree >= 3:
                out = (out + _SH_C3[0] * y * (3 * xx - yy) * coeffs[:, 9] + _SH_C3[1] * xy * z * coeffs[:, 10]
                       + _SH_C3[2] * y * (4 * zz - xx - yy) * coeffs[:, 11]
                       + _SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy) * coeffs[:, 12]
                       + _SH_C3[4] * x * (4 * zz - xx - yy) * coeffs[:, 13]
                       + _SH_C3[5] * z * (xx - yy) * coeffs[:, 14] + _SH_C3[6] * x * (xx - 3 * yy) * coeffs[:, 15])
    return (out + 0.5).clamp_min(0.0)


def project(means: torch.Tensor, covars: torch.Tensor, viewmat: torch.Tensor, K: torch.Tensor, width: int,
            height: int, eps2d: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """EWA projection of Gaussians (N, 3) / (N, 3, 3) by one camera -> (means2d (N, 2) px, cov2d (N, 2, 2)
    px^2 with ``eps2d`` added, depths (N,))."""
    R, t = viewmat[:3, :3], viewmat[:3, 3]
    pc = means @ R.T + t
    x, y, z = pc.unbind(-1)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    zs = z.clamp_min(1e-6)  # culled later; keeps the arithmetic of points behind the camera finite
    # 3DGS clamps the point fed to the Jacobian to 1.3x the field of view: off-screen splats stay bounded.
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    lim_xp, lim_xn = (width - cx) / fx + 0.3 * tan_x, cx / fx + 0.3 * tan_x
    lim_yp, lim_yn = (height - cy) / fy + 0.3 * tan_y, cy / fy + 0.3 * tan_y
    tx = zs * torch.minimum(torch.maximum(x / zs, -lim_xn), lim_xp)
    ty = zs * torch.minimum(torch.maximum(y / zs, -lim_yn), lim_yp)
    zero = torch.zeros_like(zs)
    J = torch.stack([fx / zs, zero, -fx * tx / zs ** 2, zero, fy / zs, -fy * ty / zs ** 2], -1).view(-1, 2, 3)
    JW = J @ R
    cov2d = JW @ covars @ JW.transpose(-1, -2)
    cov2d = cov2d + eps2d * torch.eye(2, dtype=cov2d.dtype, device=cov2d.device)
    means2d = torch.stack([fx * x / zs + cx, fy * y / zs + cy], -1)
    return means2d, cov2d, z


def _bin(means2d: torch.Tensor, cov2d: torch.Tensor, depths: torch.Tensor, opac: torch.Tensor, width: int,
         height: int, tile_size: int, near: float, far: float):
    """Visibility, per-axis radii (N, 2) int32 and the intersections sorted by (tile, depth).

    Returns ``(radii, isect_gauss (I,), tile_offsets (T + 1,))``: the splats of tile ``t`` are
    ``isect_gauss[tile_offsets[t]:tile_offsets[t + 1]]``, front to back.
    """
    with torch.no_grad():
        det = cov2d[:, 0, 0] * cov2d[:, 1, 1] - cov2d[:, 0, 1] ** 2
        # Mahalanobis radius where opacity * exp(-d^2/2) = 1/255 (opacity 1: 3.33); none below 1/255.
        extend = torch.sqrt(2.0 * torch.log((opac / ALPHA_MIN).clamp_min(1.0)))
        rx = extend * cov2d[:, 0, 0].clamp_min(0).sqrt()
        ry = extend * cov2d[:, 1, 1].clamp_min(0).sqrt()
        mx, my = means2d[:, 0], means2d[:, 1]
        visible = ((depths > near) & (depths < far) & (det > 0) & (opac >= ALPHA_MIN) & (rx > 0)
                   & (mx + rx > 0) & (mx - rx < width) & (my + ry > 0) & (my - ry < height))
        radii = torch.stack([rx.ceil(), ry.ceil()], -1).to(torch.int32) * visible[:, None]
        tiles_x, tiles_y = -(-width // tile_size), -(-height // tile_size)
        # Pixel i (centre i + 0.5) lies in the box when |i + 0.5 - m| <= r; its tile is i // tile_size.
        x0 = torch.floor((mx - rx - 0.5) / tile_size).clamp(0, tiles_x - 1).long()
        x1 = torch.floor((mx + rx - 0.5) / tile_size).clamp(0, tiles_x - 1).long()
        y0 = torch.floor((my - ry - 0.5) / tile_size).clamp(0, tiles_y - 1).long()
        y1 = torch.floor((my + ry - 0.5) / tile_size).clamp(0, tiles_y - 1).long()
        ids = torch.nonzero(visible).squeeze(1)
        ids = ids[torch.argsort(depths[ids], stable=True)]  # front to back
        x0, x1, y0, y1 = x0[ids], x1[ids], y0[ids], y1[ids]
        w = x1 - x0 + 1
        n = w * (y1 - y0 + 1)
        gid = torch.repeat_interleave(torch.arange(ids.numel(), device=ids.device), n)
        start = torch.cumsum(n, 0) - n
        local = torch.arange(gid.numel(), device=ids.device) - start[gid]
        tile = (y0[gid] + local // w[gid]) * tiles_x + x0[gid] + local % w[gid]
        order = torch.argsort(tile, stable=True)  # stable: depth order kept inside each tile
        isect_gauss = ids[gid[order]]
        counts = torch.bincount(tile, minlength=tiles_x * tiles_y)
        tile_offsets = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
    return radii, isect_gauss, tile_offsets


def _composite_tiles(tiles: torch.Tensor, counts: torch.Tensor, starts: torch.Tensor, isect_gauss: torch.Tensor,
                     means2d: torch.Tensor, conics: torch.Tensor, opac: torch.Tensor, colors: torch.Tensor,
                     tiles_x: int, tile_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Composite a batch of tiles (B,) -> (colour (B, P, D), transmittance (B, P)), P = tile_size^2 pixels.

    A splat's log-alpha at pixel offset ``(x, y)`` from the tile's corner is a quadratic in ``(x, y)``:
    ``log o - (a dx^2 + 2 b dx dy + c dy^2) / 2`` with ``d = (x, y) - (u, v)``, ``(u, v)`` the splat's centre
    in tile coordinates. Expanded into six coefficients per splat against six monomials per pixel, the
    whole (splats x pixels) block is one matrix product; tile-local coordinates keep it well conditioned.
    """
    b = tiles.numel()
    dtype, dev = means2d.dtype, means2d.device
    p = torch.arange(tile_size * tile_size, device=dev)
    lx, ly = (p % tile_size).to(dtype) + 0.5, (p // tile_size).to(dtype) + 0.5
    monomials = torch.stack([lx * lx, ly * ly, lx * ly, lx, ly, torch.ones_like(lx)])  # (6, P)
    origin = torch.stack([(tiles % tiles_x) * tile_size, (tiles // tiles_x) * tile_size], -1).to(dtype)  # (B, 2)
    d = colors.shape[1]
    colors1 = torch.cat([colors, colors.new_ones(colors.shape[0], 1)], 1)  # last channel: sum of weights
    color = means2d.new_zeros(b, p.numel(), d)
    trans = means2d.new_ones(b, p.numel())
    # log T of each pixel while it composites; _DONE (exp = 0, every splat refused) once it has stopped.
    gate = means2d.new_zeros(b, p.numel())
    active = torch.arange(b, device=dev)
    kmax = int(counts.max()) if b else 0
    for k0 in range(0, kmax, _DEPTH_SLICE):
        k = torch.arange(k0, min(k0 + _DEPTH_SLICE, kmax), device=dev)
        valid = k[None, :] < counts[active, None]  # (A, S)
        idx = isect_gauss[(starts[active, None] + k[None, :]).clamp_max(isect_gauss.numel() - 1)]
        uv = means2d[idx] - origin[active, None, :]  # (A, S, 2)
        cn = conics[idx]
        u, v = uv[..., 0], uv[..., 1]
        a, bb, c = cn[..., 0], cn[..., 1], cn[..., 2]
        log_o = torch.where(valid, torch.log(opac[idx].clamp_min(1e-30)), torch.full_like(a, _DONE))
        coef = torch.stack([-0.5 * a, -0.5 * c, -bb, a * u + bb * v, c * v + bb * u,
                            log_o - 0.5 * (a * u * u + c * v * v) - bb * u * v], -1)  # (A, S, 6)
        log_alpha = coef @ monomials  # (A, S, P)
        # Below 1/255 a splat is skipped (padding slots too: log-opacity _DONE gives alpha exactly 0).
        log_alpha = torch.where(log_alpha >= _LOG_ALPHA_MIN, log_alpha, torch.full_like(log_alpha, _DONE))
        alpha = torch.exp(log_alpha).clamp_max(ALPHA_MAX)
        log1m = torch.log(1.0 - alpha)
        csum = torch.cumsum(log1m, 1)  # log T after each splat, relative to the slice's start
        g = gate[active, None, :]
        refused = csum < _LOG_T_MIN - g
        weight = (alpha * torch.exp(csum - log1m + g)).masked_fill(refused, 0.0)  # alpha * T before
        out = weight.transpose(1, 2) @ colors1[idx]  # (A, P, D + 1)
        color = color.index_add(0, active, out[..., :d])
        trans = trans.index_add(0, active, -out[..., d])  # T_after = T_before - sum of weights (telescoping)
        # A pixel stops once a splat was refused (its transmittance would have crossed T_MIN).
        stopped = refused[:, -1, :] | (g[:, 0, :] <= _DONE)
        gate = gate.index_copy(0, active, torch.where(stopped, torch.full_like(g[:, 0, :], _DONE),
                                                      torch.log(trans[active].clamp_min(T_MIN * 0.5))))
        active = active[~stopped.all(-1) & (counts[active] > k0 + _DEPTH_SLICE)]
        if active.numel() == 0:
            break
    return color, trans


def _rasterize_torch(means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane,
                     far_plane, eps2d, sh_degree, tile_size, backgrounds):
    covars = covariances(quats, scales)
    n_cams = viewmats.shape[0]
    tiles_x, tiles_y = -(-width // tile_size), -(-height // tile_size)
    out_colors, out_alphas, metas = [], [], {"radii": [], "depths": [], "conics": []}
    proj = [project(means, covars, viewmats[c], Ks[c], width, height, eps2d) for c in range(n_cams)]
    # One (C, N, 2) tensor that compositing reads from, so its .grad (retain_grad) is the screen-space one.
    all_means2d = torch.stack([m for m, _, _ in proj])
    for c in range(n_cams):
        _, cov2d, depths = proj[c]
        means2d = all_means2d[c]
        if sh_degree is not None:
            campos = -viewmats[c, :3, :3].T @ viewmats[c, :3, 3]
            col = sh_to_color(colors if colors.dim() == 3 else colors[c], means - campos, sh_degree)
        else:
            col = colors if colors.dim() == 2 else colors[c]
        det = cov2d[:, 0, 0] * cov2d[:, 1, 1] - cov2d[:, 0, 1] ** 2
        det_safe = torch.where(det > 0, det, torch.ones_like(det))
        conics = torch.stack([cov2d[:, 1, 1], -cov2d[:, 0, 1], cov2d[:, 0, 0]], -1) / det_safe[:, None]
        radii, isect_gauss, offs = _bin(means2d, cov2d, depths, opacities, width, height, tile_size,
                                        near_plane, far_plane)
        counts_all = offs[1:] - offs[:-1]
        n_tiles = tiles_x * tiles_y
        p = tile_size * tile_size
        d = col.shape[1]
        img = means.new_zeros(n_tiles, p, d)
        trans = means.new_ones(n_tiles, p)
        busy = torch.nonzero(counts_all).squeeze(1)
        if busy.numel():
            # Batches of tiles with similar splat counts, so the padding to the batch's largest stays small.
            busy = busy[torch.argsort(counts_all[busy])]
            cnt = counts_all[busy].tolist()
            i = 0
            while i < len(busy):
                # Sorted ascending: the batch's last tile sets its slice width, hence its memory.
                j = min(len(busy), i + max(1, _BATCH_ENTRIES // (p * min(cnt[i], _DEPTH_SLICE))))
                j = min(j, i + max(1, _BATCH_ENTRIES // (p * min(cnt[j - 1], _DEPTH_SLICE))))
                tl = busy[i:j]
                cb, tb = _composite_tiles(tl, counts_all[tl], offs[tl], isect_gauss, means2d, conics, opacities,
                                          col, tiles_x, tile_size)
                img = img.index_copy(0, tl, cb)
                trans = trans.index_copy(0, tl, tb)
                i = j
        bg = backgrounds[c] if backgrounds is not None else None
        if bg is not None:
            img = img + trans[..., None] * bg
        # (tiles_y, tiles_x, ts, ts, D) -> (H, W, D)
        img = img.view(tiles_y, tiles_x, tile_size, tile_size, d).permute(0, 2, 1, 3, 4).reshape(
            tiles_y * tile_size, tiles_x * tile_size, d)[:height, :width]
        alpha = (1 - trans).view(tiles_y, tiles_x, tile_size, tile_size).permute(0, 2, 1, 3).reshape(
            tiles_y * tile_size, tiles_x * tile_size)[:height, :width]
        out_colors.append(img)
        out_alphas.append(alpha[..., None])
        for key, v in (("radii", radii), ("depths", depths), ("conics", conics)):
            metas[key].append(v)
    meta: dict[str, Any] = {k: torch.stack(v) for k, v in metas.items()}
    meta["means2d"] = all_means2d
    meta.update(width=width, height=height, n_cameras=n_cams, tile_size=tile_size, backend="torch")
    return torch.stack(out_colors), torch.stack(out_alphas), meta


def gsplat_available(device: torch.device | str) -> bool:
    """True when ``gsplat`` imports and ``device`` is CUDA."""
    return cuda_extension_available("gsplat", device)


def rasterization(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor, opacities: torch.Tensor,
                  colors: torch.Tensor, viewmats: torch.Tensor, Ks: torch.Tensor, width: int, height: int,
                  near_plane: float = 0.01, far_plane: float = 1e10, eps2d: float = 0.3,
                  sh_degree: int | None = None, tile_size: int = 16, backgrounds: torch.Tensor | None = None,
                  backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Render N Gaussians into C images (gsplat's ``rasterization``, classic mode, unpacked).

    Args:
        means: (N, 3) centres in world units. quats: (N, 4) ``(w, x, y, z)``, normalised here.
        scales: (N, 3) standard deviations along the rotated axes (activated, > 0).
        opacities: (N,) in [0, 1].
        colors: (N, D) or (C, N, D) colours; with ``sh_degree``, SH coefficients (N, K, 3) or (C, N, K, 3)
            evaluated in the direction camera -> centre, ``max(SH + 0.5, 0)``.
        viewmats: (C, 4, 4) world-to-camera. Ks: (C, 3, 3) pinhole intrinsics in pixels.
        width, height: image size in pixels. near_plane, far_plane: depth range kept (camera z).
        eps2d: low-pass variance added to every projected covariance (px^2).
        tile_size: tile side in pixels. backgrounds: (C, D) colour behind the splats (default none, 0).
        backend: ``"auto"``, ``"torch"`` or ``"gsplat"`` (module docstring).

    Returns:
        ``render_colors`` (C, H, W, D), ``render_alphas`` (C, H, W, 1) and ``meta`` with ``means2d``
        (C, N, 2) (call ``retain_grad()`` on it before backward to read the screen-space gradient the
        densification strategy uses), ``radii`` (C, N, 2) int32 (0: culled), ``depths`` (C, N), ``conics``
        (C, N, 3), ``width``, ``height``, ``n_cameras``, ``tile_size``, ``backend``.
    """
    if backend not in ("auto", "torch", "gsplat"):
        raise ValueError(f"backend must be auto, torch or gsplat, got {backend!r}")
    if means.dim() != 2 or means.shape[1] != 3:
        raise ValueError(f"means must be (N, 3), got {tuple(means.shape)}")
    if viewmats.dim() != 3 or Ks.dim() != 3 or viewmats.shape[0] != Ks.shape[0]:
        raise ValueError("viewmats (C, 4, 4) and Ks (C, 3, 3) must have the same number of cameras")
    use_gsplat = backend == "gsplat" or (backend == "auto" and gsplat_available(means.device))
    if use_gsplat:
        import gsplat

        colors_out, alphas, meta = gsplat.rasterization(
            means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane=near_plane,
            far_plane=far_plane, eps2d=eps2d, sh_degree=sh_degree, packed=False, tile_size=tile_size,
            backgrounds=backgrounds, rasterize_mode="classic")
        meta["backend"] = "gsplat"
        return colors_out, alphas, meta
    return _rasterize_torch(means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane,
                            far_plane, eps2d, sh_degree, tile_size, backgrounds)
