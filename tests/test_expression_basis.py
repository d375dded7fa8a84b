"""The nerf renderer's linear expression basis (issue 11): zero at initialisation, above the nose only, and a
coefficient learns to change the colour where (and only where) the frames that carry it differ."""

import dataclasses

import numpy as np
import torch

from headsync.renderers.nerf.expression_basis import ExpressionBasisConfig
from headsync.renderers.nerf.model import TalkingHead
from synthetic_head import RADII, template_points
from test_field import SMALL, small_meta

BASIS = dataclasses.replace(SMALL, expression_basis=ExpressionBasisConfig(enabled=True))
BLINK = 5  # eyeBlinkLeft in CORE_EXPRESSIONS


def rays_through(ys: list[float], per: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays (len(ys) * per, 3) parallel to +z from z = -4, on rows ``y`` (fractions of the head's height;
    y is down): origins and unit directions."""
    xs = np.linspace(-0.3, 0.3, per) * RADII[0]
    o = np.array([[x, y * RADII[1], -4.0] for y in ys for x in xs], np.float32)
    d = np.tile(np.array([[0.0, 0.0, 1.0]], np.float32), (len(o), 1))
    return torch.tensor(o), torch.tensor(d)


def blink(value: float) -> torch.Tensor:
    e = torch.zeros(1, 7)
    e[0, BLINK] = value
    return e


def test_a_model_with_the_basis_starts_as_one_without_it():
    torch.manual_seed(0)
    plain = TalkingHead(SMALL, small_meta(), prefer_tcnn=False).eval()
    torch.manual_seed(0)
    model = TalkingHead(BASIS, small_meta(), prefer_tcnn=False).eval()
    assert len(model.hash_parameters()) == 2  # the field's tables and the basis'
    o, d = rays_through([-0.6, -0.3, 0.5])
    cond = plain.conditions(torch.randn(1, 8, 10), torch.rand(1, 7), torch.tensor([2]))
    with torch.no_grad():
        a = plain.render_rays(o, d, cond, torch.zeros(len(o), 3))
        b = model.render_rays(o, d, cond, torch.zeros(len(o), 3))
    assert a["samples"] > 0
    assert torch.equal(a["rgb"], b["rgb"]) and torch.equal(a["opacity"], b["opacity"])


def test_the_basis_acts_above_the_nose_only():
    torch.manual_seed(0)
    model = TalkingHead(BASIS, small_meta(), prefer_tcnn=False)
    basis = model.expression_basis
    torch.nn.init.normal_(basis.decode.weight)
    torch.nn.init.uniform_(basis.encoder.grid.table, -1.0, 1.0)
    tmpl = torch.tensor(template_points())
    pts = tmpl[[10, 152]]  # forehead, chin
    d_rgb, d_sigma = basis(pts, torch.ones(1, 7))
    assert d_sigma is None
    assert d_rgb[0].abs().sum() > 1e-2 and d_rgb[1].abs().max() < 1e-6
    zero, _ = basis(pts, torch.zeros(1, 7))
    assert zero.abs().max() == 0


def test_a_coefficient_learns_the_colour_change_of_the_frames_that_carry_it():
    """Two 'frames', blink 0 and blink 1: their targets are the initial render, the blink one darker on the
    upper rows only. Training the basis alone makes blink = 1 darken the upper rows and leave the lower
    rows, and blink = 0, as they were; a basis not wired into the colour cannot do it."""
    torch.manual_seed(0)
    model = TalkingHead(BASIS, small_meta(), prefer_tcnn=False)
    model.eval()  # deterministic marching
    o, d = rays_through([-0.6, -0.45, 0.5, 0.65])
    upper = torch.arange(len(o)) < len(o) // 2
    bg = torch.zeros(len(o), 3)
    cond = {e: model.conditions(torch.zeros(1, 8, 10), blink(e), torch.tensor([0])) for e in (0.0, 1.0)}
    cond = {e: {k: v.detach() for k, v in c.items()} for e, c in cond.items()}
    with torch.no_grad():
        base = model.render_rays(o, d, cond[0.0], bg)
    head = base["head"]
    target = {0.0: head, 1.0: torch.where(upper[:, None], head * 0.5, head)}
    assert (head[upper] - target[1.0][upper]).abs().mean() > 0.05  # there is something to learn
    opt = torch.optim.Adam(model.expression_basis.parameters(), lr=3e-2)
    for _ in range(30):
        loss = sum(((model.render_rays(o, d, cond[e], bg)["head"] - target[e]) ** 2).mean() for e in (0.0, 1.0))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        closed = model.render_rays(o, d, cond[1.0], bg)["head"]
        still = model.render_rays(o, d, cond[0.0], bg)["head"]
    err_before = (head[upper] - target[1.0][upper]).abs().mean()
    err_after = (closed[upper] - target[1.0][upper]).abs().mean()
    print(f"upper-row error {err_before:.4f} -> {err_after:.4f}")
    assert err_after < 0.25 * err_before
    torch.testing.assert_close(closed[~upper], head[~upper], atol=2e-3, rtol=0)
    torch.testing.assert_close(still, head)
