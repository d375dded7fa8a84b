"""A linear expression basis for the renderers (issues 11, 12; NeRFBlendShape, Gao et al. 2022).

The attended expression coefficients reach the field only as extra inputs of the density MLP, entangled
with the point feature and the audio: a rare conditional change (a blink in 3% of the frames) then needs
many informative steps before the MLP carves it out. NeRFBlendShape instead stores one basis per
expression coefficient in multiresolution hash grids and weights them linearly by the coefficients, so a
coefficient's effect is learnt where, and only where, the frames that carry it differ.

Here: a small tri-plane hash grid of its own (:class:`~headsync.renderers.common.triplane.TriPlaneEncoder`)
is decoded by a zero-initialised linear layer into, per coefficient ``k``, a colour delta ``delta_k(x)``
(3 channels, added to the colour MLP's logits so colour stays in (0, 1)) and optionally a density delta
(added to the density's pre-activation). The sum ``sum_k e_k * delta_k(x)`` is gated by the face split's
``M_exp(x)`` (expression acts above the nose tip only, as the region attention does) and, per
coefficient, by a soft region around the face-mesh points that coefficient moves
(:data:`~headsync.prepare.capture.COEFFICIENT_POINTS`: the left eye for ``eyeBlinkLeft``, the inner brows
for ``browInnerUp``, ...). ARKit's coefficients are local actions, but in a real clip they are correlated
(franck's eyeBlinkLeft/Right r = 0.96, browInnerUp with the outer raises 0.8, with the blinks 0.65): a
least-squares fit over the whole face splits one closed eye or one raised brow among them, and an edit of
one coefficient then shows only its share. Zero at initialisation: a model with the basis renders exactly
as one without until it has trained.

Both renderers use it: the NeRF (``[renderer.nerf.expression_basis]``) at every sample point of a ray, the
Gaussian head (``[renderer.gaussian.expression_basis]``) once per Gaussian at its canonical centre, the
colour delta added to its SH DC coefficient and the density delta to its opacity logit
(:mod:`headsync.renderers.gaussian.model`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ...prepare.capture import COEFFICIENT_POINTS
from ..common.conditioning import FaceSplit
from ..common.hashgrid import HashGridConfig
from ..common.triplane import TriPlaneEncoder


def _basis_hash() -> HashGridConfig:
    """Five levels up to the NeRF field's finest 256: a closed lid is a thin line (on franck's NeRF, going
    from 4 levels to 128 to these took the captured closed eyes' median aperture error from 92% to 46%,
    docs/benchmarks.md; the Gaussian head was measured with the former, which its presets set)."""
    return HashGridConfig(levels=5, features=2, base_resolution=16, finest_resolution=256, log2_table_size=14)


@dataclass(frozen=True)
class ExpressionBasisConfig:
    """The ``[renderer.nerf.expression_basis]`` / ``[renderer.gaussian.expression_basis]`` table; off by
    default so old checkpoints load unchanged."""

    enabled: bool = False
    hash: HashGridConfig = dataclasses.field(default_factory=_basis_hash)
    # Also a per-coefficient density delta: the NeRF's sigma pre-activation, a Gaussian's opacity logit.
    density: bool = False
    # Weight of the mean squared colour delta (the NeRF's colour logits, a Gaussian's SH DC) in the loss, so
    # the deltas stay local.
    penalty: float = 0.0
    # Learning rate of the whole basis, its tables and its decoding layer (Adam, no weight decay). The
    # basis is linear in its hash features, and its decoding layer starts at zero: at the MLPs' 1e-3 it is
    # the slow factor of the product (a two-frame fit needs ~150 steps where 1e-2 needs ~50), and the
    # rare frames that carry a coefficient (franck's closed eyes: 3%) give it few steps.
    lr: float = 1e-2
    # Width (Gaussian sigma) of each coefficient's region around its face-mesh points, in outer-eye-corner
    # distances of the template (0.15: about 13 mm on an average face; on franck's NeRF 0.08 left the blink
    # edit at 37% of the way to closed, 0.15 and 0.25 gave 71-83%; the Gaussian head's presets set 0.08
    # with wider brows, as measured there). 0: no regions, every coefficient acts on the whole upper face.
    region_radius: float = 0.15
    # Width of the brow coefficients' regions (names starting "brow"), same unit; 0: ``region_radius``. A
    # raised brow moves by about its own width, out of a region as tight as the lids need. On franck's
    # Gaussian head (3 seeds, docs/benchmarks.md) 0.16 here took the brow edit from +1-2% to +3-7% with
    # the blinks as good; 0.16 for every region did as much for the brows but widened the blinks' too.
    brow_region_radius: float = 0.0


class CoefficientRegions(nn.Module):
    """``forward(x (K, 3))`` -> (K, E) soft masks: ``exp(-d^2 / (2 sigma^2))``, ``d`` the distance from a head
    point to the nearest face-mesh point of the coefficient (``template`` (P, 3), MediaPipe order; the
    points of each of ``names`` from :data:`COEFFICIENT_POINTS`), ``sigma = radius`` (``brow_radius`` for
    the brow coefficients when > 0) x the template's outer-eye-corner distance."""

    def __init__(self, template, radius: float, names: tuple[str, ...], brow_radius: float = 0.0):
        super().__init__()
        t = torch.as_tensor(np.asarray(template, np.float32))
        if t.shape[0] < 478:
            raise ValueError(f"the expression basis' regions need the 478-point face template, got {t.shape[0]}")
        unknown = [n for n in names if n not in COEFFICIENT_POINTS]
        if unknown:
            raise ValueError(f"no face-mesh region is known for {unknown}; set expression_basis.region_radius = 0")
        owner = [k for k, n in enumerate(names) for _ in COEFFICIENT_POINTS[n]]
        # Derived from the template (saved with the run's meta), so not part of the state dict.
        self.register_buffer("points", t[[i for n in names for i in COEFFICIENT_POINTS[n]]], persistent=False)
        self.register_buffer("owner", torch.tensor(owner), persistent=False)
        self.count = len(names)
        eye = (t[263] - t[33]).norm()
        sigma = [float((brow_radius if brow_radius > 0 and n.startswith("brow") else radius) * eye) for n in names]
        self.register_buffer("two_sigma2", torch.tensor([2 * s ** 2 for s in sigma]), persistent=False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d2 = torch.cdist(x, self.points.to(x.dtype)).square()  # (K, M)
        nearest = torch.full((x.shape[0], self.count), float("inf"), dtype=x.dtype, device=x.device)
        nearest.scatter_reduce_(1, self.owner.expand(x.shape[0], -1), d2, reduce="amin")
        return torch.exp(-nearest / self.two_sigma2.to(x.dtype))


class ExpressionBasis(nn.Module):
    """``forward(x (K, 3), expr (K|1, E))`` -> (colour-logit delta (K, 3), density delta (K,) or None).

    ``names`` are the E coefficients in order (``SubjectMeta.coefficient_names``), ``aabb`` (2, 3) the head
    box, ``template`` (P, 3) the face points that place the face split (its ``softness`` as the
    conditioning's) and the coefficients' regions.
    """

    def __init__(self, cfg: ExpressionBasisConfig, names: tuple[str, ...], aabb: torch.Tensor, template,
                 softness: float, device: torch.device | str = "cpu", prefer_tcnn: bool = True):
        super().__init__()
        self.cfg = cfg
        expr_dim = self.expr_dim = len(names)
        self.channels = 4 if cfg.density else 3
        self.encoder = TriPlaneEncoder(cfg.hash, aabb, device=device, prefer_tcnn=prefer_tcnn)
        self.decode = nn.Linear(self.encoder.out_dim, expr_dim * self.channels)
        nn.init.zeros_(self.decode.weight)
        nn.init.zeros_(self.decode.bias)
        self.split = FaceSplit(template, softness)
        self.regions = (CoefficientRegions(template, cfg.region_radius, names, cfg.brow_region_radius)
                        if cfg.region_radius > 0 else None)

    def param_group(self) -> dict:
        """The basis' optimiser group: all its parameters at ``lr``, no weight decay (the deltas of a
        coefficient the clip rarely shows must not decay between the frames that carry it)."""
        return {"name": "expression_basis", "params": list(self.parameters()), "lr": self.cfg.lr,
                "weight_decay": 0.0}

    def bases(self, x: torch.Tensor) -> torch.Tensor:
        """Per-coefficient deltas at head points (K, 3), gated by ``M_exp`` and each coefficient's region:
        (K, E, channels)."""
        _, gate = self.split(x)  # (K, 1)
        if self.regions is not None:
            gate = gate * self.regions(x)  # (K, E)
        d = self.decode(self.encoder(x)).view(x.shape[0], self.expr_dim, self.channels)
        return d * gate.unsqueeze(-1)

    def combine(self, bases: torch.Tensor, expr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``bases`` (K, E, channels) from :meth:`bases` weighted by ``expr`` (K|1, E): (colour delta (K, 3),
        density delta (K,) or None). Split from :meth:`forward` for callers whose points do not move
        between frames (the Gaussians' canonical centres): they compute the bases once."""
        total = torch.einsum("ke,kec->kc", expr.expand(bases.shape[0], -1).to(bases.dtype), bases)
        return total[:, :3], (total[:, 3] if self.cfg.density else None)

    def forward(self, x: torch.Tensor, expr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.combine(self.bases(x), expr)
