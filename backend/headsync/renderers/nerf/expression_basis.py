"""A linear expression basis in the radiance field (issue 11; NeRFBlendShape, Gao et al. 2022).

The attended expression coefficients reach the field only as extra inputs of the density MLP, entangled
with the point feature and the audio: a rare conditional change (a blink in 3% of the frames) then needs
many informative steps before the MLP carves it out. NeRFBlendShape instead stores one basis per
expression coefficient in multiresolution hash grids and weights them linearly by the coefficients, so a
coefficient's effect is learnt where, and only where, the frames that carry it differ.

Here: a small tri-plane hash grid of its own (:class:`~headsync.renderers.common.triplane.TriPlaneEncoder`)
is decoded by a zero-initialised linear layer into, per coefficient ``k``, a colour delta ``delta_k(x)``
(3 channels, added to the colour MLP's logits so colour stays in (0, 1)) and optionally a density delta
(added to the density's pre-activation). The sum ``sum_k e_k * delta_k(x)`` is gated by the face split's
``M_exp(x)`` (expression acts above the nose tip only, as the region attention does). Zero at
initialisation: a model with the basis renders exactly as one without until it has trained.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from ..common.conditioning import FaceSplit
from ..common.hashgrid import HashGridConfig
from ..common.triplane import TriPlaneEncoder


def _basis_hash() -> HashGridConfig:
    """A few coarse levels: expression changes are smooth, local patches (lids, brows)."""
    return HashGridConfig(levels=4, features=2, base_resolution=16, finest_resolution=128, log2_table_size=12)


@dataclass(frozen=True)
class ExpressionBasisConfig:
    """The ``[renderer.nerf.expression_basis]`` table; off by default so old checkpoints load unchanged."""

    enabled: bool = False
    hash: HashGridConfig = dataclasses.field(default_factory=_basis_hash)
    density: bool = False  # also a per-coefficient density delta (pre-activation of sigma)
    # Weight of the mean squared delta (colour logits and density) in the loss, so the deltas stay local.
    penalty: float = 0.0


class ExpressionBasis(nn.Module):
    """``forward(x (K, 3), expr (K|1, E))`` -> (colour-logit delta (K, 3), density delta (K,) or None).

    ``aabb`` (2, 3) is the head box, ``template`` (P, 3) the face points that place the face split (its
    ``softness`` as the conditioning's).
    """

    def __init__(self, cfg: ExpressionBasisConfig, expr_dim: int, aabb: torch.Tensor, template,
                 softness: float, device: torch.device | str = "cpu", prefer_tcnn: bool = True):
        super().__init__()
        self.cfg = cfg
        self.expr_dim = expr_dim
        self.channels = 4 if cfg.density else 3
        self.encoder = TriPlaneEncoder(cfg.hash, aabb, device=device, prefer_tcnn=prefer_tcnn)
        self.decode = nn.Linear(self.encoder.out_dim, expr_dim * self.channels)
        nn.init.zeros_(self.decode.weight)
        nn.init.zeros_(self.decode.bias)
        self.split = FaceSplit(template, softness)

    def grid_parameters(self) -> list[nn.Parameter]:
        """The basis' hash tables (trained with the field's, at the hash learning rate)."""
        return list(self.encoder.grid.parameters())

    def bases(self, x: torch.Tensor) -> torch.Tensor:
        """Per-coefficient deltas at head points (K, 3), gated by ``M_exp``: (K, E, channels)."""
        _, m_exp = self.split(x)
        d = self.decode(self.encoder(x)).view(x.shape[0], self.expr_dim, self.channels)
        return d * m_exp.unsqueeze(-1)

    def forward(self, x: torch.Tensor, expr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        d = self.bases(x)
        total = torch.einsum("ke,kec->kc", expr.expand(x.shape[0], -1).to(d.dtype), d)
        return total[:, :3], (total[:, 3] if self.cfg.density else None)
