"""Cameras, ray/box clipping, the occupancy grid's empty-space skipping and the compositing quadrature."""

import numpy as np
import torch

from headsync.renderers.common.cameras import Intrinsics, camera_to_head, project, rays
from headsync.renderers.nerf.raymarch import MarchConfig, OccupancyGrid, Samples, composite, intersect_aabb, sample_occupied

AABB = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])


def sphere_density(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x.norm(dim=-1) < 0.5, torch.full_like(x[:, 0], 50.0), torch.zeros_like(x[:, 0]))


def test_rays_pass_through_projected_points():
    K = Intrinsics(focal=100.0, cx=32.0, cy=30.0, size=64)
    R = np.array([[0.98, 0.0, 0.2], [0.0, 1.0, 0.0], [-0.2, 0.0, 0.98]])
    R, _ = np.linalg.qr(R)
    T = np.array([0.1, -0.2, 5.0])
    X = np.random.default_rng(0).uniform(-0.5, 0.5, (20, 3))
    uv = project(K, R, T, X) - 0.5  # pixel index whose centre (i + 0.5) is the projection
    Rc, o = camera_to_head(R, T)
    ro, rd = rays(K, torch.tensor(Rc, dtype=torch.float64), torch.tensor(o, dtype=torch.float64), torch.tensor(uv))
    v = torch.tensor(X) - ro
    dist = (v - (v * rd).sum(-1, keepdim=True) * rd).norm(dim=-1)
    assert dist.max() < 1e-9
    # scaling the camera to another resolution keeps the same rays
    K2 = K.scaled(32)
    assert np.isclose(K2.focal, 50.0) and np.isclose(K2.cx, 16.0)


def test_intersect_aabb():
    o = torch.tensor([[0.0, 0.0, -5.0], [0.0, 3.0, -5.0]])
    d = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    near, far, hit = intersect_aabb(o, d, AABB)
    assert hit.tolist() == [True, False]
    assert torch.allclose(near[0], torch.tensor(4.0)) and torch.allclose(far[0], torch.tensor(6.0))


def test_composite_opaque_and_empty():
    m, n = 2, 4
    keep = torch.tensor([[True, True, False, False], [False, False, False, False]])
    s = Samples(points=torch.zeros(2, 3), ray=torch.tensor([0, 0]), t=torch.arange(n).float().expand(m, n),
                delta=torch.ones(m, n), keep=keep)
    out = composite(torch.tensor([1e4, 1e4]), torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), s)
    assert torch.allclose(out["rgb"][0], torch.tensor([1.0, 0.0, 0.0]), atol=1e-4)  # first sample hides second
    assert out["opacity"][1] == 0 and out["rgb"][1].abs().sum() == 0


def test_occupancy_grid_skips_empty_space():
    grid = OccupancyGrid(AABB, MarchConfig(grid_resolution=32))
    for _ in range(3):
        frac = grid.update(sphere_density)
    sphere_frac = (4 / 3 * np.pi * 0.5 ** 3) / 8
    assert abs(frac - sphere_frac) < 0.05
    o = torch.tensor([[0.0, 0.0, -3.0], [0.9, 0.9, -3.0]])
    d = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    s = sample_occupied(o, d, grid, n_samples=32, n_probes=128, perturb=False)
    assert s.keep[1].sum() == 0  # misses the sphere: nothing evaluated
    kept = s.keep[0].sum()
    assert kept >= 16  # the samples concentrate on the occupied span
    assert (s.points.norm(dim=-1) < 0.5 + 2 * 2 / 32).all()
    # rendering the sphere with the kept samples only gives an opaque centre ray
    out = composite(sphere_density(s.points), torch.ones(s.points.shape[0], 3), s)
    assert out["opacity"][0] > 0.99 and out["opacity"][1] == 0
