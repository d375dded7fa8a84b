"""The Gaussian head's linear expression basis (issue 12): off by default, zero at initialisation, its own
optimiser group, and a coefficient learns a colour change on the Gaussians in its region only."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from headsync.core.config import as_dict, from_table
from headsync.renderers.common.expression_basis import ExpressionBasisConfig
from headsync.renderers.gaussian.model import STAGE_DEFORM, GaussianConfig, GaussianHead
from headsync.renderers.gaussian.rasterizer import rasterization
from headsync.renderers.gaussian.model import intrinsics_matrix, viewmat
from headsync.subject.folder import CORE_EXPRESSIONS
from headsync.training.trainer import TrainConfig, subject_meta

from test_expression_basis import face_points
from test_gaussian_model import SIZE, build, camera, cond_of, frame, synthetic  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
BLINK = CORE_EXPRESSIONS.index("eyeBlinkLeft")
BROW = CORE_EXPRESSIONS.index("browInnerUp")


def with_expr(cond: dict[str, torch.Tensor], **values: float) -> dict[str, torch.Tensor]:
    """``cond`` with its expression row replaced: the named coefficients set, the others 0."""
    e = torch.zeros_like(cond["expr"])
    for name, v in values.items():
        e[0, CORE_EXPRESSIONS.index(name)] = v
    return {**cond, "expr": e}


def test_the_basis_is_off_by_default_and_read_from_its_table():
    assert not GaussianConfig().expression_basis.enabled
    old = as_dict(GaussianConfig())
    del old["expression_basis"]  # a checkpoint's config from before the basis existed
    assert from_table(GaussianConfig, old, "renderer.gaussian").expression_basis == ExpressionBasisConfig()
    cfg = from_table(GaussianConfig, {"expression_basis": {"enabled": True, "lr": 5e-3}}, "renderer.gaussian")
    assert cfg.expression_basis.enabled and cfg.expression_basis.lr == 5e-3


@pytest.mark.parametrize("density", [False, True])
def test_a_head_with_the_basis_starts_as_one_without_it(synthetic, density):
    data, ft = synthetic
    torch.manual_seed(0)
    plain = build(data)
    torch.manual_seed(0)
    model = build(data, expression_basis=ExpressionBasisConfig(enabled=True, density=density))
    assert plain.expression_basis is None and model.expression_basis is not None
    groups = {g["name"]: g for g in model.param_groups()}
    assert set(groups) == {"means", "log_scales", "opacity_logits", "hash", "net", "expression_basis"}
    assert groups["expression_basis"]["lr"] == 1e-2 and groups["expression_basis"]["weight_decay"] == 0
    grouped = [id(p) for g in groups.values() for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())  # each parameter once
    assert {id(p) for p in groups["expression_basis"]["params"]} == {id(p) for p in model.expression_basis.parameters()}
    bg = frame(data, ft, 3)[1]
    cond = with_expr(cond_of(plain, data, ft, 3), eyeBlinkLeft=1.0, browInnerUp=0.7, browDownRight=0.4)
    for stage in (1, STAGE_DEFORM):
        plain.set_stage(stage)
        model.set_stage(stage)
        with torch.no_grad():
            a = plain.render(camera(data, ft, 3), cond, bg)
            b = model.render(camera(data, ft, 3), cond, bg)
        assert torch.equal(a["rgb"], b["rgb"]) and torch.equal(a["opacity"], b["opacity"])


def test_a_coefficient_learns_a_colour_change_on_the_gaussians_of_its_region_only(synthetic):
    """The first 478 centres are the face points, with each coefficient's points at its place on the face
    (test_expression_basis.face_points). Target of a blink = 1 frame: the initial render with the SH DC of
    the Gaussians in the left eye's region lowered (by 1.5 x their gate, which the basis can represent);
    training the basis alone through the rasterizer reaches it, leaves the Gaussians outside the region and
    the other coefficients as they were, and blink = 0 renders exactly the initial head."""
    data, ft = synthetic
    torch.manual_seed(0)
    meta = dataclasses.replace(subject_meta(data, TrainConfig(resolution=SIZE, audio_feature="mel")),
                               template=face_points())
    # lid regions as the Gaussian head's presets set them (the synthetic face's eyes are 0.8 head units apart)
    basis = ExpressionBasisConfig(enabled=True, region_radius=0.08)
    model = GaussianHead(GaussianConfig(fill_points=1500, expression_basis=basis), meta)
    model.set_stage(STAGE_DEFORM)
    basis = model.expression_basis
    means = model.gaussians["means"].detach()
    gate = (basis.split(means)[1][:, 0] * basis.regions(means)[:, BLINK])  # (N,)
    inside, outside = gate > 0.5, gate < 0.01
    assert 5 < int(inside.sum()) < 0.2 * len(gate), int(inside.sum())
    cam, bg = camera(data, ft, 0), frame(data, ft, 0)[1]
    cond = cond_of(model, data, ft, 0)
    cond = {k: v.detach() for k, v in cond.items()}
    rest, closed = with_expr(cond), with_expr(cond, eyeBlinkLeft=1.0)
    with torch.no_grad():
        base = model.render(cam, rest, bg)["rgb"]
        gs = model.frame_gaussians(rest, cam.R_c2h, cam.origin)
        sh = gs["sh"].clone()
        sh[:, 0] -= 1.5 * gate[:, None]
        head, alpha, _ = rasterization(gs["means"], gs["quats"], gs["scales"], gs["opacities"], sh,
                                       viewmat(cam.R_c2h, cam.origin)[None], intrinsics_matrix(cam.K, bg.device)[None],
                                       SIZE, SIZE, sh_degree=model.cfg.sh_degree, tile_size=model.cfg.tile_size)
        target = head[0] + (1.0 - alpha[0]) * bg
    changed = (base - target).abs().amax(-1) > 1e-3  # the eye region's pixels
    assert 0 < int(changed.sum()) < 0.2 * changed.numel()
    err_before = float((base - target)[changed].abs().mean())
    assert err_before > 0.01  # there is something to learn
    opt = torch.optim.Adam(basis.parameters(), lr=basis.cfg.lr)
    for _ in range(40):
        loss = ((model.render(cam, closed, bg)["rgb"] - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        err_after = float((model.render(cam, closed, bg)["rgb"] - target)[changed].abs().mean())
        still = model.render(cam, rest, bg)["rgb"]
        bases = model._per_gaussian(model.gaussians["means"])["expr_bases"]
        d_blink, _ = basis.combine(bases, closed["expr"])
        d_brow, _ = basis.combine(bases, with_expr(cond, browInnerUp=1.0)["expr"])
    print(f"blink frame error {err_before:.4f} -> {err_after:.4f}; SH DC delta inside "
          f"{d_blink[inside].mean():.3f}, outside max {d_blink[outside].abs().max():.4f}")
    assert err_after < 0.3 * err_before
    assert d_blink[inside].mean() < -0.5  # the eye's Gaussians darkened
    assert d_blink[outside].abs().max() < 0.05 * d_blink[inside].abs().mean()
    assert d_brow.abs().max() == 0  # a coefficient no frame carried learnt nothing
    assert torch.equal(still, base)
