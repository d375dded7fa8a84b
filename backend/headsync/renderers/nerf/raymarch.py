"""Ray marching through the head box with an occupancy grid, and volume-rendering compositing.

Everything is plain PyTorch, so it runs on the CPU and the GPU alike:

1. :func:`intersect_aabb` clips each ray to the head box (near/far from the template's bounds).
2. :class:`OccupancyGrid` keeps a coarse ``res^3`` grid of densities over the box, refreshed during
   training from the field itself (exponential moving average with a max, as Instant-NGP / RAD-NeRF do).
3. :func:`sample_occupied` probes each ray densely *in the grid* (a cheap lookup), narrows the ray to its
   occupied span, draws stratified samples there and keeps only samples in occupied cells, so the field
   (the expensive part) is evaluated only where there is something: the empty-space skip.
4. :func:`composite` is the quadrature of NeRF's rendering integral (ER-NeRF Eq. 1-2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


@dataclass(frozen=True)
class MarchConfig:
    """Ray-marching settings. ``samples`` are field evaluations per ray before culling."""

    samples: int = 32
    probes: int = 128  # grid lookups per ray used to find its occupied span
    # Depth sampled past the first occupied cell, as a fraction of the box diagonal. A head is opaque: what
    # lies deeper than this behind its front surface is hidden, so the samples are spent near the surface
    # (the batched stand-in for a marcher's early termination at zero transmittance).
    depth: float = 0.3
    grid_resolution: int = 64
    density_threshold: float = 0.01  # occupied when sigma * step exceeds this (an opacity of ~1%)
    grid_decay: float = 0.95
    update_every: int = 16
    warmup_updates: int = 16  # first updates visit every cell; later ones a random quarter + occupied


def intersect_aabb(origins: torch.Tensor, dirs: torch.Tensor, aabb: torch.Tensor, min_near: float = 1e-3
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Slab test of rays (M, 3) against ``aabb`` (2, 3). Returns near (M,), far (M,), hit (M,) bool."""
    inv = 1.0 / torch.where(dirs.abs() < 1e-9, torch.full_like(dirs, 1e-9), dirs)
    t0 = (aabb[0] - origins) * inv
    t1 = (aabb[1] - origins) * inv
    near = torch.minimum(t0, t1).amax(-1).clamp_min(min_near)
    far = torch.maximum(t0, t1).amin(-1)
    hit = far > near
    return near, torch.where(hit, far, near), hit


class OccupancyGrid(nn.Module):
    """A ``res^3`` density grid over ``aabb``; a cell is occupied when its density is above threshold.

    ``density`` (res, res, res) is indexed [ix, iy, iz]. Starts fully occupied (unknown = maybe
    something), so early training sees the whole box.
    """

    def __init__(self, aabb: torch.Tensor, cfg: MarchConfig):
        super().__init__()
        self.cfg = cfg
        r = cfg.grid_resolution
        self.register_buffer("aabb", torch.as_tensor(aabb, dtype=torch.float32).clone())
        self.register_buffer("density", torch.full((r, r, r), 1e3))
        self.register_buffer("updates", torch.zeros((), dtype=torch.int64))

    @property
    def cell_size(self) -> torch.Tensor:
        return (self.aabb[1] - self.aabb[0]) / self.cfg.grid_resolution

    def threshold(self) -> float:
        """Density (1/head units) above which a cell counts as occupied: ``threshold / step``."""
        step = float(self.cell_size.min())
        # Never stricter than the grid's mean, so a field that is still faint everywhere keeps its cells.
        return min(self.cfg.density_threshold / step, float(self.density.mean()))

    def cells(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cell indices (M, 3) of head-space points (M, 3) and whether each is inside the box (M,)."""
        r = self.cfg.grid_resolution
        u = (x - self.aabb[0]) / (self.aabb[1] - self.aabb[0])
        inside = ((u >= 0) & (u < 1)).all(-1)
        idx = (u * r).long().clamp(0, r - 1)
        return idx, inside

    def occupied(self, x: torch.Tensor) -> torch.Tensor:
        """Bool (M,) occupancy of head-space points (M, 3); outside the box is empty."""
        idx, inside = self.cells(x)
        occ = self.density[idx[:, 0], idx[:, 1], idx[:, 2]] > self.threshold()
        return occ & inside

    @torch.no_grad()
    def update(self, density_fn: Callable[[torch.Tensor], torch.Tensor], chunk: int = 65536) -> float:
        """Refresh the grid from ``density_fn`` (head points (M, 3) -> sigma (M,)); returns occupied fraction.

        One jittered point per visited cell; ``density = max(decay * density, new)``, so cells fade
        unless the field keeps them dense. Warm-up updates visit every cell, later ones a random quarter
        of the cells plus the occupied ones, as Instant-NGP does, to bound the cost.
        """
        r = self.cfg.grid_resolution
        dev = self.density.device
        all_idx = torch.stack(torch.meshgrid(*(torch.arange(r, device=dev),) * 3, indexing="ij"), -1).view(-1, 3)
        if int(self.updates) >= self.cfg.warmup_updates:
            flat = self.density.view(-1)
            pick = (torch.rand(flat.numel(), device=dev) < 0.25) | (flat > self.threshold())
            all_idx = all_idx[pick]
        x = self.aabb[0] + (all_idx + torch.rand_like(all_idx, dtype=torch.float32)) * self.cell_size
        sigma = torch.cat([density_fn(x[i:i + chunk]) for i in range(0, x.shape[0], chunk)])
        old = self.density[all_idx[:, 0], all_idx[:, 1], all_idx[:, 2]]
        if int(self.updates) == 0:  # the initial "unknown" value is not a measurement
            self.density.zero_()
            old = torch.zeros_like(old)
        # Visited cells: max(decayed old, new); unvisited cells keep their value until visited.
        self.density[all_idx[:, 0], all_idx[:, 1], all_idx[:, 2]] = torch.maximum(old * self.cfg.grid_decay, sigma)
        self.updates += 1
        return float((self.density > self.threshold()).float().mean())


@dataclass
class Samples:
    """Samples kept along a batch of rays, packed.

    ``points`` (K, 3) head space, ``ray`` (K,) index of the ray each belongs to, ``t`` (M, S) sample
    depths of every slot, ``delta`` (M, S) interval lengths, ``keep`` (M, S) bool: slot evaluated.
    Slots not kept have zero density.
    """

    points: torch.Tensor
    ray: torch.Tensor
    t: torch.Tensor
    delta: torch.Tensor
    keep: torch.Tensor


def sample_occupied(origins: torch.Tensor, dirs: torch.Tensor, grid: OccupancyGrid, n_samples: int,
                    n_probes: int, perturb: bool, depth: float = 1.0) -> Samples:
    """Stratified samples on each ray's occupied span; only samples in occupied cells are kept.

    Rays (M, 3) in head space. The span is found from ``n_probes`` evenly spaced grid lookups between the
    box's near and far, and cut at ``depth`` x the box diagonal past its start; rays that cross no occupied
    cell keep no sample (they are transparent).
    """
    m = origins.shape[0]
    dev = origins.device
    near, far, hit = intersect_aabb(origins, dirs, grid.aabb)
    # 1. Probe the grid along the ray to find the first and last occupied probe.
    s = (torch.arange(n_probes, device=dev) + 0.5) / n_probes
    tp = near[:, None] + (far - near)[:, None] * s  # (M, P)
    occ = grid.occupied((origins[:, None] + dirs[:, None] * tp[..., None]).view(-1, 3)).view(m, n_probes)
    occ &= hit[:, None]
    any_occ = occ.any(-1)
    first = torch.where(any_occ, occ.float().argmax(-1), torch.zeros_like(near, dtype=torch.long))
    last = torch.where(any_occ, n_probes - 1 - occ.flip(-1).float().argmax(-1), torch.zeros_like(first))
    step = (far - near) / n_probes
    # Widen by one probe each side: a probe only tells its own cell, the surface may start just before.
    t0 = torch.maximum(near, near + (first.float() - 0.5) * step)
    t1 = torch.minimum(far, near + (last.float() + 1.5) * step)
    t1 = torch.minimum(t1, t0 + depth * float((grid.aabb[1] - grid.aabb[0]).norm()))
    t1 = torch.where(any_occ, t1, t0)
    # 2. Stratified samples in [t0, t1].
    u = torch.arange(n_samples, device=dev, dtype=origins.dtype).expand(m, n_samples)
    u = u + (torch.rand_like(u) if perturb else 0.5)
    t = t0[:, None] + (t1 - t0)[:, None] * (u / n_samples)
    delta = ((t1 - t0) / n_samples)[:, None].expand(m, n_samples).contiguous()
    pts = origins[:, None] + dirs[:, None] * t[..., None]  # (M, S, 3)
    keep = grid.occupied(pts.view(-1, 3)).view(m, n_samples) & any_occ[:, None]
    ray = torch.arange(m, device=dev)[:, None].expand(m, n_samples)[keep]
    return Samples(points=pts[keep], ray=ray, t=t, delta=delta, keep=keep)


def composite(sigma: torch.Tensor, rgb: torch.Tensor, samples: Samples) -> dict[str, torch.Tensor]:
    """Volume rendering (alpha compositing) of packed samples.

    ``sigma`` (K,) densities in 1/head-units, ``rgb`` (K, 3) in [0, 1] for the kept samples. Returns
    ``rgb`` (M, 3) premultiplied head colour, ``opacity`` (M,) accumulated alpha, ``depth`` (M,) expected
    depth (head units), ``weights`` (M, S).
    """
    m, n = samples.keep.shape
    sig = sigma.new_zeros(m, n).masked_scatter(samples.keep, sigma)
    col = rgb.new_zeros(m, n, 3)
    col[samples.keep] = rgb
    alpha = 1.0 - torch.exp(-sig * samples.delta)
    # Transmittance before each sample: exclusive cumulative product of (1 - alpha).
    trans = torch.cumprod(torch.cat([alpha.new_ones(m, 1), 1.0 - alpha + 1e-10], -1), -1)[:, :-1]
    w = alpha * trans
    return {
        "rgb": (w[..., None] * col).sum(1),
        "opacity": w.sum(1),
        "depth": (w * samples.t).sum(1),
        "weights": w,
    }
