"""Hash encoding: index arithmetic against a scalar reference of tiny-cuda-nn's rules, interpolation,
the tri-plane layout, and agreement with tiny-cuda-nn itself where it is installed on CUDA."""

import math

import numpy as np
import pytest
import torch

from headsync.renderers.common.hashgrid import HashGrid2D, HashGridConfig, level_layout, tcnn_available
from headsync.renderers.common.triplane import TriPlaneEncoder

CFG = HashGridConfig(levels=6, features=2, base_resolution=4, finest_resolution=64, log2_table_size=8)


def reference_encode(table: np.ndarray, cfg: HashGridConfig, a: float, b: float) -> np.ndarray:
    """One point, one plane, written straight from tiny-cuda-nn's kernel in plain Python integers."""
    out = []
    scales, res, sizes, offsets = level_layout(cfg)
    for lvl in range(cfg.levels):
        pa, pb = a * scales[lvl] + 0.5, b * scales[lvl] + 0.5
        ia, ib = math.floor(pa), math.floor(pb)
        fa, fb = pa - ia, pb - ib
        acc = np.zeros(cfg.features)
        for dx, dy, w in ((0, 0, (1 - fa) * (1 - fb)), (1, 0, fa * (1 - fb)), (0, 1, (1 - fa) * fb), (1, 1, fa * fb)):
            x, y = ia + dx, ib + dy
            if res[lvl] * res[lvl] <= sizes[lvl]:
                idx = x + y * res[lvl]
            else:
                idx = ((x * 1) ^ ((y * 2654435761) & 0xFFFFFFFF)) & 0xFFFFFFFF
            acc += w * table[offsets[lvl] + idx % sizes[lvl]]
        out.append(acc)
    return np.concatenate(out)


def test_layout_matches_tcnn_rules():
    scales, res, sizes, offsets = level_layout(HashGridConfig(levels=14, features=1, base_resolution=64,
                                                              finest_resolution=512, log2_table_size=14))
    assert res[0] == 64 and res[-1] == 512
    assert all(s % 8 == 0 for s in sizes)
    assert sizes[-1] == 1 << 14 and offsets[1] == sizes[0]


def test_matches_scalar_reference():
    torch.manual_seed(0)
    grid = HashGrid2D(CFG, planes=1)
    with torch.no_grad():
        grid.table.normal_()
    pts = torch.rand(50, 1, 2)
    pts[0] = 0.0
    pts[1] = 1.0
    got = grid(pts).detach().numpy()
    table = grid.table[0].detach().numpy().astype(np.float64)
    for i in range(pts.shape[0]):
        want = reference_encode(table, CFG, float(pts[i, 0, 0]), float(pts[i, 0, 1]))
        np.testing.assert_allclose(got[i], want, rtol=1e-4, atol=1e-5)


def test_bilinear_is_continuous_and_differentiable():
    torch.manual_seed(1)
    grid = HashGrid2D(CFG, planes=2)
    with torch.no_grad():
        grid.table.normal_()
    p = torch.rand(200, 2, 2)
    d = grid(p + 1e-5) - grid(p)
    assert d.abs().max() < 0.05  # no jumps at cell borders
    grid(p).pow(2).sum().backward()
    assert grid.table.grad is not None and grid.table.grad.abs().sum() > 0


def test_triplane_concatenates_three_planes():
    torch.manual_seed(2)
    aabb = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
    enc = TriPlaneEncoder(CFG, aabb, prefer_tcnn=False)
    with torch.no_grad():
        enc.grid.table.normal_()
    x = torch.rand(10, 3) * 2 - 1
    f = enc(x)
    assert f.shape == (10, 3 * CFG.levels * CFG.features)
    # Moving z only changes the YZ and XZ planes, not the XY one.
    x2 = x.clone()
    x2[:, 2] += 0.3
    f2 = enc(x2)
    n = CFG.levels * CFG.features
    torch.testing.assert_close(f[:, :n], f2[:, :n])
    assert (f[:, n:] - f2[:, n:]).abs().max() > 1e-3


@pytest.mark.gpu
@pytest.mark.skipif(not tcnn_available("cuda" if torch.cuda.is_available() else "cpu"),
                    reason="tiny-cuda-nn is not installed on a CUDA machine")
def test_agrees_with_tiny_cuda_nn():
    from headsync.renderers.common.hashgrid import TcnnHashGrid2D

    cfg = HashGridConfig(levels=14, features=1, base_resolution=64, finest_resolution=512, log2_table_size=14)
    ours = HashGrid2D(cfg, planes=3).cuda()
    with torch.no_grad():
        ours.table.normal_()
    fused = TcnnHashGrid2D(cfg, planes=3).cuda()
    fused.load_table(ours.table)
    p = torch.rand(4096, 3, 2, device="cuda")
    torch.testing.assert_close(fused(p), ours(p), rtol=1e-3, atol=1e-3)


def test_lean_backward_gives_autograd_gradient():
    """The lookup's own backward (recomputing corners) equals autograd through the plain lookup."""
    cfg = HashGridConfig(levels=6, features=2, base_resolution=4, finest_resolution=64, log2_table_size=8,
                         keep_corners_mb=0.0)  # every batch takes the lean path
    grid = HashGrid2D(cfg, planes=3)
    with torch.no_grad():
        grid.table.uniform_(-1, 1)
    x = torch.rand(500, 3, 2)
    g_out = torch.randn(500, grid.out_dim)
    lean = grid(x)
    (lean * g_out).sum().backward()
    lean_grad, grid.table.grad = grid.table.grad.clone(), None
    idx, w = grid.corners(x)
    plain = grid.interpolate(grid.table, idx, w)  # autograd's graph, for reference
    (plain * g_out).sum().backward()
    assert torch.equal(lean, plain)
    assert torch.allclose(lean_grad, grid.table.grad, atol=1e-5)


def test_small_batches_keep_their_corners_big_ones_recompute(monkeypatch):
    """Under ``keep_corners_mb`` autograd keeps the corners (no recompute: faster); above it the lean lookup."""
    from headsync.renderers.common import hashgrid

    calls, lean = [], hashgrid._Lookup.apply
    monkeypatch.setattr(hashgrid._Lookup, "apply",
                        lambda coords, *rest: calls.append(coords.shape[0]) or lean(coords, *rest))
    cfg = HashGridConfig(levels=4, features=1, base_resolution=4, finest_resolution=32, log2_table_size=8,
                         keep_corners_mb=1.0)
    grid = HashGrid2D(cfg, planes=3)
    per_point = grid.corner_bytes(1)
    assert per_point == 3 * 4 * 4 * 8
    small, big = 2 ** 20 // per_point, 2 ** 20 // per_point + 1
    grid(torch.rand(small, 3, 2)).sum().backward()
    assert calls == []
    grid(torch.rand(big, 3, 2)).sum().backward()
    assert calls == [big]
    with torch.no_grad():
        grid(torch.rand(big, 3, 2))  # no gradient: never the lean path
    assert calls == [big]
