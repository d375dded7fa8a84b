"""Conditioning and field: audio smoothing, region attention, the nose-tip face split, the whole model."""

import dataclasses

import numpy as np
import torch

from headsync.renderers.common.conditioning import AudioSmoother, Conditioning, ConditioningConfig, FaceSplit, window_indices
from headsync.renderers.common.hashgrid import HashGridConfig
from headsync.renderers.base import SubjectMeta
from headsync.renderers.common.cameras import Camera, Intrinsics
from headsync.renderers.nerf.model import ModelConfig, TalkingHead
from headsync.subject.folder import CORE_EXPRESSIONS
from synthetic_head import template_points

SMALL = ModelConfig(hash=HashGridConfig(levels=4, features=2, base_resolution=4, finest_resolution=32,
                                        log2_table_size=10))


def test_smoother_is_a_convex_combination():
    sm = AudioSmoother(ConditioningConfig(audio_dim=8, smooth_window=6))
    const = torch.randn(3, 1, 8).expand(3, 6, 8)
    torch.testing.assert_close(sm(const), const[:, 0])
    assert window_indices(np.array([0, 9]), 10, 4).tolist() == [[0, 0, 0, 1], [7, 8, 9, 9]]


def test_face_split_follows_the_nose_tip_whatever_the_axis_sign():
    tmpl = template_points()
    for flip in (1.0, -1.0):
        t = tmpl * np.array([1.0, flip, 1.0], np.float32)
        split = FaceSplit(t, softness=0.03)
        chin, forehead = torch.tensor(t[152:153]), torch.tensor(t[10:11])
        lip_c, exp_c = split(chin)
        lip_f, exp_f = split(forehead)
        assert lip_c.item() > 0.99 and exp_c.item() < 0.01
        assert lip_f.item() < 0.01 and exp_f.item() > 0.99


def test_lip_features_act_only_below_the_nose_and_expression_only_above():
    tmpl = template_points()
    torch.manual_seed(0)
    cond = Conditioning(feat_dim=12, expr_dim=7, template=tmpl, cfg=ConditioningConfig(audio_dim=8))
    pts = torch.tensor(np.stack([tmpl[152], tmpl[10]]))  # chin, forehead
    fx = torch.randn(2, 12)
    lip = torch.randn(1, 8, requires_grad=True)
    expr = torch.rand(1, 7, requires_grad=True)
    lip_att, expr_att = cond(fx, pts, lip, expr)
    g_lip = torch.autograd.grad(lip_att[1].abs().sum(), lip, retain_graph=True)[0]  # forehead vs lips
    g_exp = torch.autograd.grad(expr_att[0].abs().sum(), expr)[0]  # chin vs expression
    assert g_lip.abs().max() < 1e-3 and g_exp.abs().max() < 1e-3
    assert lip_att[0].abs().sum() > 1e-3 and expr_att[1].abs().sum() > 1e-3


def small_meta(audio_dim: int = 10, n_frames: int = 6, train: int = 5) -> SubjectMeta:
    return SubjectMeta(template_points(), "mel", audio_dim, CORE_EXPRESSIONS, n_frames, tuple(range(train)),
                       tuple(range(train, n_frames)), 64, 16, Intrinsics(20.0, 8.0, 8.0, 16), 25.0)


def test_model_renders_and_backpropagates_to_every_part():
    torch.manual_seed(0)
    model = TalkingHead(SMALL, small_meta(), prefer_tcnn=False)
    cond = model.conditions(torch.randn(1, 8, 10), torch.rand(1, 7), torch.tensor([2]))
    o = torch.tensor([[0.0, 0.0, -4.0]]).expand(64, 3)
    d = torch.nn.functional.normalize(torch.randn(64, 3) * 0.05 + torch.tensor([0.0, 0.0, 1.0]), dim=-1)
    out = model.render_rays(o, d, cond, torch.zeros(64, 3), perturb=True)
    assert out["rgb"].shape == (64, 3) and out["samples"] > 0
    assert ((out["opacity"] >= 0) & (out["opacity"] <= 1 + 1e-5)).all()
    (out["rgb"].sum() + out["opacity"].sum()).backward()
    assert model.encoder.grid.table.grad.abs().sum() > 0
    assert model.audio_encoder.net[0][0].weight.grad.abs().sum() > 0
    assert model.codes.weight.grad[2].abs().sum() > 0
    assert len(model.hash_parameters()) == 1 and len(model.other_parameters()) > 5


def test_expression_starts_silent_and_learns_from_its_first_gradient():
    """``zero_expression_init``: at initialisation the coefficients change nothing (no noise for the region
    attention to gate off), and the first backward pass already reaches their weights."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(SMALL, field=dataclasses.replace(SMALL.field, zero_expression_init=True))
    model = TalkingHead(cfg, small_meta(), prefer_tcnn=False)
    x = torch.randn(32, 3) * 0.2
    audio = torch.randn(1, 8, 10)
    sig = [model.density(x, model.conditions(audio, e, None))[0] for e in (torch.zeros(1, 7), torch.ones(1, 7))]
    torch.testing.assert_close(sig[0], sig[1])
    sig[1].sum().backward()
    n_in = model.encoder.out_dim + model.cfg.cond.audio_dim
    assert model.field.sigma_net[0].weight.grad[:, n_in:].abs().sum() > 0


def test_conditions_use_a_frames_own_code_and_the_mean_elsewhere():
    torch.manual_seed(0)
    model = TalkingHead(SMALL, small_meta(), prefer_tcnn=False)
    torch.nn.init.normal_(model.codes.weight)
    audio, expr = torch.randn(3, 8, 10), torch.rand(3, 7)
    own = model.conditions(audio, expr, torch.tensor([1, 4, 5]))["code"]  # 5 is held out
    torch.testing.assert_close(own[:2], model.codes.weight[[1, 4]])
    torch.testing.assert_close(own[2], model.codes.weight.mean(0))
    neutral = model.conditions(audio, expr, None)["code"]
    torch.testing.assert_close(neutral, model.codes.weight.mean(0).expand(3, -1))


def test_whole_image_and_pixel_renders_agree():
    torch.manual_seed(0)
    model = TalkingHead(SMALL, small_meta(), prefer_tcnn=False).eval()
    cam = Camera(Intrinsics(20.0, 8.0, 8.0, 16), torch.eye(3), torch.tensor([0.0, 0.0, -4.0]))
    cond = model.conditions(torch.randn(1, 8, 10), torch.rand(1, 7), torch.tensor([0]))
    bg = torch.rand(16, 16, 3)
    with torch.no_grad():
        img = model.render(cam, cond, bg)
        pix = torch.tensor([[3, 5], [8, 8], [15, 0]])
        some = model.render(cam, cond, bg[pix[:, 1], pix[:, 0]], pix)
    assert img["rgb"].shape == (16, 16, 3) and img["opacity"].shape == (16, 16)
    torch.testing.assert_close(some["rgb"], img["rgb"][pix[:, 1], pix[:, 0]], atol=1e-5, rtol=1e-4)
    assert some["stats"]["samples_per_ray"] >= 0
