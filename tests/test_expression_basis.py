"""The nerf renderer's linear expression basis (issue 11): zero at initialisation, above the nose only, and a
coefficient learns to change the colour where (and only where) the frames that carry it differ."""

import dataclasses

import numpy as np
import torch

from headsync.renderers.common.expression_basis import CoefficientRegions, ExpressionBasis, ExpressionBasisConfig
from headsync.renderers.nerf.model import TalkingHead
from headsync.prepare.capture import COEFFICIENT_POINTS
from headsync.subject.folder import CORE_EXPRESSIONS
from synthetic_head import EYES, RADII, template_points
from test_field import SMALL, small_meta

# The mechanics of the basis, without the per-coefficient regions (the synthetic template's points are random).
BASIS = dataclasses.replace(SMALL, expression_basis=ExpressionBasisConfig(enabled=True, region_radius=0.0))
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
    groups = {g["name"]: g for g in model.param_groups()}
    assert set(groups) == {"hash", "net", "expression_basis"}
    assert groups["expression_basis"]["lr"] == 1e-2 and groups["expression_basis"]["weight_decay"] == 0
    grouped = [id(p) for g in groups.values() for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())  # each parameter once
    assert {id(p) for p in model.expression_basis.parameters()} == {id(p) for p in groups["expression_basis"]["params"]}
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


# ---- per-coefficient regions --------------------------------------------------------------------------
# Where the synthetic face's coefficients act, (x, y) in head units: its eyes (synthetic_head.EYES) and brows
# above them. Each coefficient's face-mesh points are put in a small ring there; browDown shares points with
# browInnerUp (the inner brow), so it is placed first and the inner brow's ring takes the shared points.
PLACES = {"browDownLeft": np.array([0.22, -0.5]), "browDownRight": np.array([-0.22, -0.5]),
          "browInnerUp": np.array([0.0, -0.45]), "browOuterUpLeft": np.array([0.42, -0.45]),
          "browOuterUpRight": np.array([-0.42, -0.45]),
          "eyeBlinkLeft": EYES["eyeBlinkLeft"], "eyeBlinkRight": EYES["eyeBlinkRight"]}
SPREAD = {"eyeBlinkLeft": (0.1, 0.05), "eyeBlinkRight": (0.1, 0.05), "browInnerUp": (0.12, 0.02)}
DISJOINT = ("browInnerUp", "browOuterUpLeft", "browOuterUpRight", "eyeBlinkLeft", "eyeBlinkRight")


def face_points() -> np.ndarray:
    """The synthetic template with every coefficient's face-mesh points moved to its place on the ellipsoid
    (the eye corners 33/263, in the eye contours, 0.8 head units apart)."""
    pts = template_points().astype(np.float64)
    for name, centre in PLACES.items():
        idx = list(COEFFICIENT_POINTS[name])
        sx, sy = SPREAD.get(name, (0.05, 0.02))
        a = np.linspace(0, 2 * np.pi, len(idx), endpoint=False)
        pts[idx, 0] = centre[0] + sx * np.cos(a)
        pts[idx, 1] = centre[1] + sy * np.sin(a)
    pts[263, :2], pts[33, :2] = (0.4, -0.2), (-0.4, -0.2)
    r = 1 - (pts[:, 0] / RADII[0]) ** 2 - (pts[:, 1] / RADII[1]) ** 2
    pts[:, 2] = -RADII[2] * np.sqrt(np.clip(r, 0.0, 1.0))
    return pts.astype(np.float32)


def on_face(xy: np.ndarray) -> torch.Tensor:
    """Points (N, 3) on the ellipsoid's front at head (x, y) (N, 2)."""
    xy = np.atleast_2d(xy)
    z = -RADII[2] * np.sqrt(np.clip(1 - (xy[:, 0] / RADII[0]) ** 2 - (xy[:, 1] / RADII[1]) ** 2, 0, 1))
    return torch.tensor(np.c_[xy, z], dtype=torch.float32)


def test_each_coefficient_region_covers_its_own_points_and_not_the_others():
    regions = CoefficientRegions(face_points(), 0.08, CORE_EXPRESSIONS)
    m = regions(on_face(np.stack([PLACES[n] for n in CORE_EXPRESSIONS])))  # (7 places, 7 coefficients)
    assert m.shape == (7, 7)
    assert torch.all(m.diagonal() > 0.7), m.diagonal()
    k = [CORE_EXPRESSIONS.index(n) for n in DISJOINT]
    sub = m[k][:, k]
    off = sub - torch.diag(sub.diagonal())
    assert off.max() < 0.05, off  # the blink's region does not reach the brows, nor the left eye the right
    with np.testing.assert_raises(ValueError):
        CoefficientRegions(face_points(), 0.08, ("jawOpen",))


def test_brow_regions_can_be_wider_than_the_lids():
    """``brow_radius`` widens the brow coefficients' regions only: a point above the inner brow (where a
    raised brow goes) is well inside the wide region, and the blinks' masks do not change at all."""
    tight = CoefficientRegions(face_points(), 0.08, CORE_EXPRESSIONS)
    wide = CoefficientRegions(face_points(), 0.08, CORE_EXPRESSIONS, brow_radius=0.16)
    brow, blinks = CORE_EXPRESSIONS.index("browInnerUp"), [CORE_EXPRESSIONS.index(n) for n in ("eyeBlinkLeft", "eyeBlinkRight")]
    above = on_face(PLACES["browInnerUp"] + np.array([0.0, -0.15]))  # y is down
    t, w = tight(above)[0, brow], wide(above)[0, brow]
    assert w > 0.4 and w > 3 * t, (t, w)
    xy = np.stack(np.meshgrid(np.linspace(-0.5, 0.5, 9), np.linspace(-0.7, 0.2, 9)), -1).reshape(-1, 2)
    x = on_face(xy)
    assert torch.equal(tight(x)[:, blinks], wide(x)[:, blinks])


def fit_a_correlated_event(region_radius: float) -> dict[str, float]:
    """One 'event' frame where eyeBlinkLeft and browInnerUp are both 1 (as franck's brows rise with his
    blinks) and only the left eye changes (colour-logit delta -1 there), one rest frame (no change). Fits
    the basis alone at points on the face, then sets each coefficient to 1 on its own: the share of the
    event's change at the left eye each one shows."""
    torch.manual_seed(0)
    cfg = ExpressionBasisConfig(enabled=True, region_radius=region_radius)
    aabb = torch.tensor(np.stack([-RADII * 1.2, RADII * 1.2]), dtype=torch.float32)
    basis = ExpressionBasis(cfg, CORE_EXPRESSIONS, aabb, face_points(), softness=0.03)
    eye = PLACES["eyeBlinkLeft"] + np.array([[dx, dy] for dx in (-0.06, 0.0, 0.06) for dy in (-0.03, 0.0, 0.03)])
    elsewhere = np.stack([PLACES["browInnerUp"], PLACES["eyeBlinkRight"], np.array([0.0, -0.25])])
    x = on_face(np.concatenate([eye, elsewhere]))
    at_eye = torch.arange(len(x)) < len(eye)

    def expr(**values):
        e = torch.zeros(1, 7)
        for name, v in values.items():
            e[0, CORE_EXPRESSIONS.index(name)] = v
        return e

    rest, event = expr(), expr(eyeBlinkLeft=1.0, browInnerUp=1.0)
    target = torch.where(at_eye, -1.0, 0.0)[:, None].expand(-1, 3)
    opt = torch.optim.Adam(basis.parameters(), lr=cfg.lr)
    for _ in range(300):
        loss = (basis(x, event)[0] - target).square().mean() + basis(x, rest)[0].square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        shares = {n: float(-basis(x, expr(**{n: 1.0}))[0][at_eye].mean()) for n in ("eyeBlinkLeft", "browInnerUp")}
        both = basis(x, event)[0]
    shares["event_error"] = float((both[at_eye] - target[at_eye]).abs().mean())
    shares["elsewhere"] = float(both[~at_eye].abs().max())
    return shares


def test_regions_give_a_correlated_event_to_the_coefficient_whose_region_it_is_in():
    with_regions = fit_a_correlated_event(0.08)
    without = fit_a_correlated_event(0.0)
    print("with regions", with_regions, "without", without)
    for r in (with_regions, without):
        assert r["event_error"] < 0.2  # both fit the event itself
    # With regions the blink alone closes the eye and the brow alone leaves it; without, they share it.
    assert with_regions["eyeBlinkLeft"] > 0.8 and with_regions["browInnerUp"] < 0.1
    assert without["browInnerUp"] > 0.2
    assert with_regions["elsewhere"] < 0.05
