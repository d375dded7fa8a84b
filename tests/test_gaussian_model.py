"""The Gaussian head (SyncTalk++ Eq. 16-24) and its densification strategy on the synthetic subject.

The synthetic subject (tests/synthetic_head.py) is a textured ellipsoid seen from known, slightly
swaying poses over a plate, with blinking eyes and an audio-driven mouth. Training fits whole frames.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from headsync.renderers.common.conditioning import window_indices
from headsync.renderers.common.expression_basis import ExpressionBasisConfig
from headsync.renderers.common.losses import psnr_from_mse
from headsync.renderers.gaussian.model import STAGE_DEFORM, GaussianConfig, GaussianHead
from headsync.renderers.gaussian.strategy import DensifyConfig, DensifyStrategy
from headsync.subject.data import load_subject_data
from headsync.subject.folder import CORE_EXPRESSIONS, Subject
from headsync.training.samplers import Batch, around_lips
from headsync.training.trainer import FrameTensors, TrainConfig, frame_camera, subject_meta

from synthetic_head import make_subject

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SIZE = 48


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = make_subject(tmp_path_factory.mktemp("gs") / "s", n_frames=24, size=SIZE)
    data = load_subject_data(Subject(root), SIZE, "mel")
    return data, FrameTensors.of(data, torch.device("cpu"))


camera = frame_camera


def cond_of(model, data, ft, f):
    idx = torch.as_tensor(window_indices(np.array([f]), ft.audio.shape[0], model.cfg.cond.smooth_window))
    return model.conditions(ft.audio[idx], ft.expression[f:f + 1])


def frame(data, ft, f):
    return ft.frames.image(f)  # target (S, S, 3), background (S, S, 3), head mask (S, S) as 0/1


def psnr(model, data, ft, frames):
    errs = []
    with torch.no_grad():
        for f in frames:
            target, bg, _ = frame(data, ft, f)
            out = model.render(camera(data, ft, f), cond_of(model, data, ft, f), bg)
            errs.append(float(((out["rgb"] - target) ** 2).mean()))
    return psnr_from_mse(float(np.mean(errs)))


def build(data, **kw):
    cfg = GaussianConfig(fill_points=kw.pop("fill_points", 1500), **kw)
    return GaussianHead(cfg, subject_meta(data, TrainConfig(resolution=SIZE, audio_feature="mel")))


def lips_batch(ft, f):
    """The trainer's whole-image batch of frame ``f``: its lips region for the stage-2 lips term."""
    box = ft.frames.lips_box(f)
    return Batch(None, [SIZE], lips=around_lips(box, SIZE) if box[0] >= 0 else None)


def train(model, data, ft, iters, strategy=None, deform_from=None, seed=0):
    opt = torch.optim.Adam(model.param_groups(), eps=1e-15)
    state = strategy.initialize_state() if strategy else None
    rng = np.random.default_rng(seed)
    log = []
    for it in range(iters):
        if deform_from is not None and it == deform_from:
            model.set_stage(STAGE_DEFORM)
        f = int(rng.choice(data.train))
        target, bg, mask = frame(data, ft, f)
        out = model.render(camera(data, ft, f), cond_of(model, data, ft, f), bg, train=True)
        loss = sum(model.losses(out, target, mask, lips_batch(ft, f)).values())
        opt.zero_grad()
        if strategy:
            strategy.step_pre_backward(out["meta"])
        loss.backward()
        if strategy:
            log.append(strategy.step_post_backward(model.gaussians, [opt], state, it, out["meta"]))
        opt.step()
    return log


def test_initial_gaussians_follow_the_subject(synthetic):
    data, ft = synthetic
    model = build(data)
    means = model.gaussians["means"].detach()
    assert model.n_gaussians == 478 + 1500
    # The template points come first, unchanged; the fill points lie inside the head box.
    assert torch.allclose(means[:478], torch.as_tensor(data.pose.template, dtype=torch.float32))
    lo, hi = model.aabb
    assert ((means[478:] >= lo) & (means[478:] <= hi)).all()
    out = model.render(camera(data, ft, 0), cond_of(model, data, ft, 0), frame(data, ft, 0)[1])
    assert out["rgb"].shape == (SIZE, SIZE, 3) and out["opacity"].shape == (SIZE, SIZE)
    # The initial head covers the true head's pixels (it is where the subject is).
    head = ft.frames.image(0)[2].bool()
    assert out["opacity"][head].mean() > 0.5 and out["opacity"][~head].mean() < out["opacity"][head].mean()


def test_pixels_subset_and_deform_starts_at_canonical(synthetic):
    data, ft = synthetic
    model = build(data)
    bg = frame(data, ft, 3)[1]
    full = model.render(camera(data, ft, 3), cond_of(model, data, ft, 3), bg)
    pix = torch.tensor([[0, 0], [10, 20], [47, 47]])
    part = model.render(camera(data, ft, 3), cond_of(model, data, ft, 3), bg[pix[:, 1], pix[:, 0]], pixels=pix)
    assert torch.allclose(part["rgb"], full["rgb"][pix[:, 1], pix[:, 0]])
    model.set_stage(STAGE_DEFORM)  # zero-initialised deformation: stage 2 starts from stage 1's image
    deformed = model.render(camera(data, ft, 3), cond_of(model, data, ft, 3), bg)
    assert torch.allclose(deformed["rgb"], full["rgb"], atol=1e-6)


@pytest.mark.parametrize("pose_input", [True, False])
def test_deformation_offsets_in_box_diagonals_and_the_pose_input_switch(synthetic, pose_input):
    data, ft = synthetic
    model = build(data, pose_input=pose_input, deform_offset=0.5)
    model.set_stage(STAGE_DEFORM)
    last = model.deform[-1]
    with torch.no_grad():  # position offset (0.1, 0, 0) for every Gaussian, plus a pose-dependent part
        last.bias[:3] = torch.tensor([0.1, 0.0, 0.0])
        last.weight.normal_(0.0, 0.01)
    c = cond_of(model, data, ft, 0)
    a = model.frame_gaussians(c, ft.R_c2h[0], ft.origin[0])
    b = model.frame_gaussians(c, ft.R_c2h[5], ft.origin[5] + 3.0)  # same conditions, another pose
    assert torch.equal(a["means"], b["means"]) != pose_input  # the pose reaches F_deform only when asked
    with torch.no_grad():
        last.weight.zero_()
    a = model.frame_gaussians(c, ft.R_c2h[0], ft.origin[0])
    model.set_stage(1)
    can = model.frame_gaussians(c, ft.R_c2h[0], ft.origin[0])
    shift = a["means"] - can["means"]  # 0.1 output units = 0.05 box diagonals along x
    assert torch.allclose(shift, torch.tensor([0.05 * model.diag, 0.0, 0.0]).expand_as(shift), atol=1e-4)


def test_render_at_crop_draws_the_same_head_at_the_crop_size(synthetic):
    data, ft = synthetic
    model = build(data, render_at_crop=True)
    assert build(data).output_resolution(4 * SIZE) == SIZE and model.output_resolution(4 * SIZE) == 4 * SIZE
    c, cam, bg = cond_of(model, data, ft, 1), camera(data, ft, 1), frame(data, ft, 1)[1]
    small = model.render(cam, c, bg)["opacity"]
    big_cam = type(cam)(cam.K.scaled(4 * SIZE), cam.R_c2h, cam.origin)
    big = model.render(big_cam, c, torch.nn.functional.interpolate(bg.permute(2, 0, 1)[None], scale_factor=4)[0]
                       .permute(1, 2, 0))["opacity"]
    assert big.shape == (4 * SIZE, 4 * SIZE)  # the same head: its silhouette averaged down matches
    down = torch.nn.functional.avg_pool2d(big[None, None], 4)[0, 0]
    assert (down - small).abs().mean() < 0.05 and small.mean() > 0.1


def test_lips_term_weights_the_region_around_the_lips_in_stage_two_only(synthetic):
    data, ft = synthetic
    model = build(data)
    target, bg, mask = frame(data, ft, 2)
    out = model.render(camera(data, ft, 2), cond_of(model, data, ft, 2), bg, train=True)
    batch = Batch(None, [SIZE], lips=(20, 30, 28, 36))
    assert "lips" not in model.losses(out, target, mask, batch)  # stage 1: the canonical head has no mouth motion
    model.set_stage(STAGE_DEFORM)
    terms = model.losses(out, target, mask, batch)
    region = (out["rgb"] - target)[30:36, 20:28].abs().mean()
    assert torch.isclose(terms["lips"], model.cfg.lips_weight * region)
    assert "lips" not in model.losses(out, target, mask, Batch(None, [SIZE]))  # a frame without lips
    grad, = torch.autograd.grad(terms["lips"], out["rgb"], retain_graph=True)
    inside = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    inside[30:36, 20:28] = True
    assert (grad[~inside] == 0).all() and (grad[inside] != 0).any()


def test_two_stage_training_reaches_psnr(synthetic):
    data, ft = synthetic
    model = build(data)
    before = psnr(model, data, ft, data.holdout)
    train(model, data, ft, iters=160, deform_from=100)
    train_psnr = psnr(model, data, ft, data.train[:6])
    held = psnr(model, data, ft, data.holdout)
    print(f"gaussian synthetic: held-out PSNR {before:.2f} -> {held:.2f} dB, train {train_psnr:.2f} dB")
    assert held > 22.0 and held > before + 8.0, (before, held, train_psnr)


@pytest.mark.parametrize("basis", [False, True])
def test_densification_changes_count_and_training_continues(synthetic, tmp_path, basis):
    """With the expression basis on, stage 2 from the second refinement on: the basis (no per-Gaussian
    parameters) is evaluated at the resized set of centres."""
    data, ft = synthetic
    extra = {"expression_basis": ExpressionBasisConfig(enabled=True)} if basis else {}
    model = build(data, fill_points=600, **extra)
    n0 = model.n_gaussians
    cfg = DensifyConfig(refine_start_iter=5, refine_every=10, refine_stop_iter=60, reset_every=1000,
                        grow_grad2d=2e-4, grow_scale3d=0.03, prune_opa=0.05)
    strategy = DensifyStrategy(cfg, scene_scale=model.diag / 2)
    log = train(model, data, ft, iters=60, strategy=strategy, deform_from=15 if basis else None)
    grown = sum(r["cloned"] + r["split"] for r in log)
    pruned = sum(r["pruned"] for r in log)
    assert grown > 0 and pruned >= 0 and model.n_gaussians != n0
    print("densification:", n0, "->", model.n_gaussians, [r for r in log if any(r.values())])
    # A clone adds one Gaussian, a split replaces one by two, pruning removes.
    assert model.n_gaussians == n0 + grown - pruned
    # Shapes stay consistent for the optimizer (it stepped after every refinement) and a checkpoint of the
    # new size loads into a fresh model of the initial size.
    path = tmp_path / "g.pt"
    torch.save(model.state_dict(), path)
    fresh = build(data, fill_points=600, **extra)
    fresh.load_renderer_state(torch.load(path))
    fresh.set_stage(int(model.stage))
    assert fresh.n_gaussians == model.n_gaussians
    bg = frame(data, ft, 1)[1]
    with torch.no_grad():
        a = model.render(camera(data, ft, 1), cond_of(model, data, ft, 1), bg)["rgb"]
        b = fresh.render(camera(data, ft, 1), cond_of(model, data, ft, 1), bg)["rgb"]
    assert torch.allclose(a, b)
    assert psnr(model, data, ft, data.train[:4]) > 18.0
    if basis:  # it trained (the synthetic subject blinks) and acts on the densified set
        assert model.expression_basis.decode.weight.abs().max() > 0
        e = torch.zeros(1, 7)
        e[0, CORE_EXPRESSIONS.index("eyeBlinkLeft")] = 1.0
        d_rgb, _ = model.expression_basis.combine(model._per_gaussian(model.gaussians["means"])["expr_bases"], e)
        assert d_rgb.shape == (model.n_gaussians, 3) and d_rgb.abs().max() > 0


def test_strategy_reindexes_adam_moments():
    # Directly on a parameter dict: after a clone, the new rows' moments copy their parent's; after pruning
    # the kept rows keep theirs.
    params = {"means": torch.nn.Parameter(torch.randn(4, 3)), "log_scales": torch.nn.Parameter(torch.zeros(4, 3)),
              "opacity_logits": torch.nn.Parameter(torch.zeros(4))}
    opt = torch.optim.Adam(list(params.values()), lr=0.1)
    sum((p ** 2).sum() for p in params.values()).backward()
    opt.step()
    m_before = opt.state[params["means"]]["exp_avg"].clone()
    strategy = DensifyStrategy(DensifyConfig(refine_start_iter=0, refine_every=1, grow_grad2d=0.5,
                                             grow_scale3d=1.0, prune_opa=0.1), scene_scale=1.0)
    state = strategy.initialize_state()
    means2d = torch.zeros(1, 4, 2, requires_grad=True)
    means2d.grad = torch.tensor([[[1.0, 0], [0, 0], [0, 0], [0, 0]]])
    info = {"means2d": means2d, "radii": torch.ones(1, 4, 2, dtype=torch.int32), "width": 2, "height": 2,
            "n_cameras": 1, "scales": torch.full((4, 3), 0.1), "quats": torch.tensor([[1.0, 0, 0, 0]] * 4),
            "opacities": torch.tensor([0.5, 0.5, 0.01, 0.5])}
    rep = strategy.step_post_backward(params, [opt], state, 1, info)
    assert rep["cloned"] == 1 and rep["pruned"] == 1 and params["means"].shape[0] == 4
    m = opt.state[params["means"]]["exp_avg"]
    assert torch.allclose(m, torch.cat([m_before[[0, 1, 3]], m_before[[0]]]))
    assert opt.param_groups[0]["params"][0] is params["means"]
