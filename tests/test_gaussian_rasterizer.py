"""The CPU tile rasterizer against a brute-force per-pixel reference, forward and gradients.

The reference below is written independently of the rasterizer and as plainly as possible: float64, one
loop over the Gaussians in depth order, every Gaussian evaluated at every pixel (no tiles, no bounding
boxes, no cumulative sums), 3DGS's per-pixel rules (skip alpha < 1/255, clamp 0.99, stop before the
transmittance drops below 1e-4). On CUDA with gsplat installed, the same scenes are compared to gsplat.
"""

from __future__ import annotations

import math

import pytest
import torch

from headsync.renderers.gaussian.rasterizer import rasterization

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def reference(means, quats, scales, opacities, colors, viewmat, K, width, height, background, near=0.01):
    """Brute-force splatting of one camera -> (image (H, W, D), alpha (H, W))."""
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    ys, xs = torch.meshgrid(torch.arange(height, dtype=means.dtype) + 0.5,
                            torch.arange(width, dtype=means.dtype) + 0.5, indexing="ij")
    img = torch.zeros(height, width, colors.shape[1], dtype=means.dtype)
    T = torch.ones(height, width, dtype=means.dtype)
    done = torch.zeros(height, width, dtype=torch.bool)
    R, t = viewmat[:3, :3], viewmat[:3, 3]
    cam = [R @ m + t for m in means]
    order = sorted(range(len(means)), key=lambda i: float(cam[i][2].detach()))
    for i in order:
        x, y, z = cam[i]
        if z <= near:
            continue
        w, qx, qy, qz = quats[i] / torch.linalg.norm(quats[i])
        rot = torch.stack([
            torch.stack([1 - 2 * (qy ** 2 + qz ** 2), 2 * (qx * qy - w * qz), 2 * (qx * qz + w * qy)]),
            torch.stack([2 * (qx * qy + w * qz), 1 - 2 * (qx ** 2 + qz ** 2), 2 * (qy * qz - w * qx)]),
            torch.stack([2 * (qx * qz - w * qy), 2 * (qy * qz + w * qx), 1 - 2 * (qx ** 2 + qy ** 2)])])
        sigma = rot @ torch.diag(scales[i] ** 2) @ rot.T
        # Jacobian at the point clamped to 1.3x the field of view (as 3DGS).
        lx = (width - cx) / fx + 0.3 * width / (2 * fx), cx / fx + 0.3 * width / (2 * fx)
        ly = (height - cy) / fy + 0.3 * height / (2 * fy), cy / fy + 0.3 * height / (2 * fy)
        tx = z * torch.clamp(x / z, -lx[1], lx[0])
        ty = z * torch.clamp(y / z, -ly[1], ly[0])
        zero = torch.zeros((), dtype=means.dtype)
        J = torch.stack([torch.stack([fx / z, zero, -fx * tx / z ** 2]),
                         torch.stack([zero, fy / z, -fy * ty / z ** 2])])
        cov = J @ R @ sigma @ R.T @ J.T + 0.3 * torch.eye(2, dtype=means.dtype)
        inv = torch.linalg.inv(cov)
        u, v = fx * x / z + cx, fy * y / z + cy
        dx, dy = xs - u, ys - v
        m2 = inv[0, 0] * dx * dx + 2 * inv[0, 1] * dx * dy + inv[1, 1] * dy * dy
        alpha = torch.clamp(opacities[i] * torch.exp(-0.5 * m2), max=0.99)
        use = (alpha >= 1 / 255) & ~done
        t_next = T * (1 - alpha)
        stop = use & (t_next < 1e-4)
        add = use & ~stop
        img = img + torch.where(add[..., None], (alpha * T)[..., None] * colors[i], torch.zeros_like(img))
        T = torch.where(add, t_next, T)
        done = done | stop
    return img + T[..., None] * background, 1 - T


def look_at(eye, target):
    """World-to-camera (4, 4), OpenCV axes, looking from ``eye`` at ``target`` (y down)."""
    eye, target = torch.as_tensor(eye, dtype=torch.float64), torch.as_tensor(target, dtype=torch.float64)
    z = target - eye
    z = z / z.norm()
    x = torch.linalg.cross(torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64), z)
    x = x / x.norm()
    y = torch.linalg.cross(z, x)
    R = torch.stack([x, y, z])
    W = torch.eye(4, dtype=torch.float64)
    W[:3, :3], W[:3, 3] = R, -R @ eye
    return W


def scene(n, seed, spread=1.0, opacity_hi=0.95, scale=(0.05, 0.3)):
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g, dtype=torch.float64) - 0.5) * 2 * spread
    quats = torch.randn(n, 4, generator=g, dtype=torch.float64)
    scales = torch.empty(n, 3, dtype=torch.float64).uniform_(*scale, generator=g)
    opac = torch.empty(n, dtype=torch.float64).uniform_(0.2, opacity_hi, generator=g)
    colors = torch.rand(n, 3, generator=g, dtype=torch.float64)
    return means, quats, scales, opac, colors


def camera(width, height, f, eye=(0.3, -0.2, -4.0)):
    K = torch.tensor([[f, 0, width / 2 + 0.7], [0, f, height / 2 - 0.4], [0, 0, 1]], dtype=torch.float64)
    return look_at(eye, (0.0, 0.0, 0.0)), K


def render_both(params, W, K, width, height, bg, tile_size=16):
    means, quats, scales, opac, colors = params
    img, alpha, meta = rasterization(means, quats, scales, opac, colors, W[None], K[None], width, height,
                                     backgrounds=bg[None], tile_size=tile_size, backend="torch")
    ref, ref_alpha = reference(means, quats, scales, opac, colors, W, K, width, height, bg)
    return img[0], alpha[0, ..., 0], ref, ref_alpha, meta


@pytest.mark.parametrize("width,height,tile_size", [(37, 29, 16), (48, 32, 8)])
def test_forward_matches_reference(width, height, tile_size):
    # Sizes that are not multiples of the tile, splats straddling tile borders, overlapping in depth.
    params = scene(60, seed=1)
    W, K = camera(width, height, f=40.0)
    bg = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    img, alpha, ref, ref_alpha, meta = render_both(params, W, K, width, height, bg, tile_size)
    assert img.shape == (height, width, 3)
    assert torch.allclose(img, ref, atol=1e-9), float((img - ref).abs().max())
    assert torch.allclose(alpha, ref_alpha, atol=1e-9)
    assert (meta["radii"][0] > 0).any() and alpha.max() > 0.9  # the scene is not empty


def test_gradients_match_reference():
    params = [p.clone().requires_grad_(True) for p in scene(25, seed=2)]
    W, K = camera(24, 20, f=22.0)
    bg = torch.tensor([0.1, 0.1, 0.1], dtype=torch.float64)
    weights = torch.rand(20, 24, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    img, alpha, ref, ref_alpha, _ = render_both(params, W, K, 24, 20, bg, tile_size=8)
    grads = torch.autograd.grad((img * weights).sum() + alpha.sum(), params)
    ref_grads = torch.autograd.grad((ref * weights).sum() + ref_alpha.sum(), params)
    for name, g, r in zip(("means", "quats", "scales", "opacities", "colors"), grads, ref_grads):
        assert r.abs().max() > 0, name
        assert torch.allclose(g, r, rtol=1e-6, atol=1e-9), (name, float((g - r).abs().max()))


def test_gradients_match_finite_differences():
    # Independent of both implementations' autograd: central differences of the rendered image.
    params = [p.clone().requires_grad_(True) for p in scene(6, seed=3, opacity_hi=0.7)]
    W, K = camera(16, 16, f=14.0)
    bg = torch.zeros(3, dtype=torch.float64)

    def loss(ps):
        img, alpha, _ = rasterization(*ps, W[None], K[None], 16, 16, backgrounds=bg[None], backend="torch")
        return (img * torch.linspace(0, 1, 3, dtype=torch.float64)).sum() + alpha.sum()

    grads = torch.autograd.grad(loss(params), params)
    eps = 1e-6
    for p, g in zip(params, grads):
        for idx in [(0,) + (0,) * (p.dim() - 1), (3,) + (p.dim() - 1) * (1,)]:
            with torch.no_grad():
                orig = p[idx].item()
                p[idx] = orig + eps
                up = loss(params).item()
                p[idx] = orig - eps
                down = loss(params).item()
                p[idx] = orig
            assert math.isclose(g[idx].item(), (up - down) / (2 * eps), rel_tol=1e-4, abs_tol=1e-6)


def test_behind_camera_culled():
    means, quats, scales, opac, colors = scene(2, seed=4)
    W = torch.eye(4, dtype=torch.float64)
    K = torch.tensor([[20.0, 0, 16], [0, 20.0, 16], [0, 0, 1]], dtype=torch.float64)
    # One splat in front, one at the mirror position behind the camera (it would project to the same spot).
    means = torch.tensor([[0.1, 0.0, 3.0], [-0.1, 0.0, -3.0]], dtype=torch.float64)
    img, alpha, meta = rasterization(means, quats, scales, opac, colors, W[None], K[None], 32, 32,
                                     backend="torch")
    assert meta["radii"][0, 1].tolist() == [0, 0] and meta["radii"][0, 0].min() > 0
    ref, ref_alpha = reference(means[:1], quats[:1], scales[:1], opac[:1], colors[:1], W, K, 32, 32,
                               torch.zeros(3, dtype=torch.float64))
    assert torch.allclose(img[0], ref, atol=1e-9)


def test_early_termination():
    # A stack of near-opaque splats on the same pixels: compositing stops once T would drop below 1e-4,
    # so the splats behind (a different colour) contribute nothing and the transmittance left is >= 1e-4.
    n = 12
    means = torch.zeros(n, 3, dtype=torch.float64)
    means[:, 2] = torch.linspace(2.0, 3.0, n, dtype=torch.float64)
    quats = torch.tensor([[1.0, 0, 0, 0]] * n, dtype=torch.float64)
    scales = torch.full((n, 3), 0.5, dtype=torch.float64)
    opac = torch.full((n,), 0.98, dtype=torch.float64)
    colors = torch.zeros(n, 3, dtype=torch.float64)
    colors[:4, 0] = 1.0
    colors[4:, 1] = 1.0  # green only behind the fourth: 0.02^3 = 8e-6 < 1e-4 stops at the third
    W = torch.eye(4, dtype=torch.float64)
    K = torch.tensor([[20.0, 0, 8], [0, 20.0, 8], [0, 0, 1]], dtype=torch.float64)
    img, alpha, _ = rasterization(means, quats, scales, opac, colors, W[None], K[None], 16, 16,
                                  backend="torch")
    centre = img[0, 8, 8]
    assert centre[1] == 0.0 and centre[0] > 0.99
    assert 1 - alpha[0, 8, 8, 0] >= 1e-4
    ref, _ = reference(means, quats, scales, opac, colors, W, K, 16, 16, torch.zeros(3, dtype=torch.float64))
    assert torch.allclose(img[0], ref, atol=1e-9)


def test_sh_degree_one_view_dependent():
    means, quats, scales, opac, _ = scene(10, seed=5)
    g = torch.Generator().manual_seed(1)
    sh = torch.randn(10, 4, 3, generator=g, dtype=torch.float64) * 0.3
    W1, K = camera(24, 24, 24.0, eye=(0.0, 0.0, -4.0))
    W2, _ = camera(24, 24, 24.0, eye=(2.0, 0.0, -3.5))
    W = torch.stack([W1, W2])
    img, _, _ = rasterization(means, quats, scales, opac, sh, W, K.expand(2, 3, 3), 24, 24, sh_degree=1,
                              backend="torch")
    img0, _, _ = rasterization(means, quats, scales, opac, sh[:, :1], W, K.expand(2, 3, 3), 24, 24,
                               sh_degree=0, backend="torch")
    # Degree 0 is the constant colour C0 * sh0 + 0.5; degree 1 changes it with the viewing direction.
    dc = (0.28209479177387814 * sh[:, 0] + 0.5).clamp_min(0)
    flat, _, _ = rasterization(means, quats, scales, opac, dc, W, K.expand(2, 3, 3), 24, 24, backend="torch")
    assert torch.allclose(img0, flat, atol=1e-12)
    assert (img - img0).abs().max() > 1e-3


def test_means2d_gradient_for_densification():
    params = scene(8, seed=6)
    means = params[0].clone().requires_grad_(True)
    W, K = camera(20, 20, 20.0)
    img, _, meta = rasterization(means, *params[1:], W[None], K[None], 20, 20, backend="torch")
    meta["means2d"].retain_grad()
    img.sum().backward()
    g = meta["means2d"].grad
    assert g.shape == (1, 8, 2) and g.abs().sum() > 0


@pytest.mark.gpu
def test_matches_gsplat_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    pytest.importorskip("gsplat")
    params = [p.float().cuda().requires_grad_(True) for p in scene(200, seed=7, opacity_hi=0.95)]
    W, K = camera(64, 48, 50.0)
    W, K = W.float().cuda()[None], K.float().cuda()[None]
    bg = torch.tensor([[0.3, 0.3, 0.3]], device="cuda")
    a, aa, _ = rasterization(*params, W, K, 64, 48, backgrounds=bg, backend="torch")
    b, ba, _ = rasterization(*params, W, K, 64, 48, backgrounds=bg, backend="gsplat")
    assert torch.allclose(a, b, atol=2e-4) and torch.allclose(aa, ba, atol=2e-4)
    ga = torch.autograd.grad(a.sum(), params)
    gb = torch.autograd.grad(b.sum(), params)
    for x, y in zip(ga, gb):
        assert torch.allclose(x, y, rtol=1e-2, atol=1e-3 * y.abs().max().item())
