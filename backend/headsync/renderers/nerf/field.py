"""The head's radiance field: density and colour MLPs over the tri-plane feature and the conditions.

ER-NeRF Eq. 6 / SyncTalk Eq. 12: ``F(x, d, f_l, f_e; H^3) -> (c, sigma)``.

* density MLP: ``[f_x, f_l (region- and face-attended lip feature), f_e (attended expression)]`` ->
  ``sigma`` and a geometry feature;
* colour MLP: ``[geometry feature, view direction, appearance code]`` -> ``rgb``. The per-frame
  appearance code (ER-NeRF's "individual code", as in NeRF-W) absorbs exposure/lighting changes of the
  clip so the MLPs need not explain them with audio.

Density is expressed per unit of the head box's diagonal (see :class:`~headsync.renderers.nerf.model.TalkingHead`), so
the same initialisation works whatever the template's units are.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..common.conditioning import mlp


@dataclass(frozen=True)
class FieldConfig:
    """MLP widths and depths (ER-NeRF: 64-wide, 3 density layers, 2 colour layers)."""

    hidden: int = 64
    density_layers: int = 3
    geo_feat_dim: int = 64
    color_hidden: int = 64
    color_layers: int = 2
    appearance_dim: int = 4
    # Start the density MLP's expression weights at zero (issue 11). At random initial weights the seven
    # coefficients only add frame-to-frame noise, and the region attention learns to gate them off: after
    # a preview run its sigmoid on the eyes' blink channels was 0.12 / 0.32 (franck; it starts at 0.5).
    # From zero their first gradient is the loss's correlation with them alone, and the gates stayed open
    # (0.92 / 0.73), but within preview's 1,600 iterations the edits still did not act
    # (docs/benchmarks.md, issue 11), so it is off by default: an opt-in for longer schedules.
    zero_expression_init: bool = False


class _TruncExp(torch.autograd.Function):
    """``exp`` whose backward clamps its input, as Instant-NGP's trunc_exp: no exploding gradients."""

    @staticmethod
    def forward(ctx, x):  # noqa: D102
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, g):  # noqa: D102
        (x,) = ctx.saved_tensors
        return g * torch.exp(x.clamp(-15, 15))


def trunc_exp(x: torch.Tensor) -> torch.Tensor:
    return _TruncExp.apply(x)


class HeadField(nn.Module):
    """Density and colour of points given their features.

    ``density(fx (K, C), lip (K, A), expr (K, E))`` -> (sigma (K,), geo (K, G));
    ``color(geo (K, G), dirs (K, 3) unit, code (K|1, P))`` -> rgb (K, 3) in [0, 1].
    """

    def __init__(self, feat_dim: int, audio_dim: int, expr_dim: int, cfg: FieldConfig):
        super().__init__()
        self.cfg = cfg
        self.sigma_net = mlp(feat_dim + audio_dim + expr_dim, 1 + cfg.geo_feat_dim, cfg.hidden,
                             cfg.density_layers)
        self.color_net = mlp(cfg.geo_feat_dim + 3 + cfg.appearance_dim, 3, cfg.color_hidden, cfg.color_layers)
        if cfg.zero_expression_init:
            with torch.no_grad():
                self.sigma_net[0].weight[:, feat_dim + audio_dim:].zero_()

    def density(self, fx: torch.Tensor, lip: torch.Tensor, expr: torch.Tensor,
                offset: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``offset`` (K,) is added to sigma's pre-activation (the expression basis' density delta)."""
        h = self.sigma_net(torch.cat([fx, lip, expr], -1))
        pre = h[:, 0] if offset is None else h[:, 0] + offset
        return trunc_exp(pre), h[:, 1:]

    def color(self, geo: torch.Tensor, dirs: torch.Tensor, code: torch.Tensor,
              offset: torch.Tensor | None = None) -> torch.Tensor:
        """``offset`` (K, 3) is added to the colour logits (the expression basis' colour delta)."""
        code = code.expand(geo.shape[0], -1)
        logits = self.color_net(torch.cat([geo, dirs, code], -1))
        return torch.sigmoid(logits if offset is None else logits + offset)
