"""Tri-plane hash representation (ER-NeRF Eq. 4-5, SyncTalk Eq. 10-11).

A head-space point ``x = (x, y, z)`` inside the head's bounding box is normalised to ``[0, 1]^3`` and its
three projections ``(x, y)``, ``(y, z)``, ``(x, z)`` are encoded by three 2D multiresolution hash grids;
the features are concatenated into ``f_x`` with ``3 * L * F`` channels. Factorising the volume into planes
is what keeps hash collisions (and the MLP's burden of untangling them) low when the decoder must also
follow audio.
"""

from __future__ import annotations

import torch
from torch import nn

from .hashgrid import HashGridConfig, make_hash_encoder

#: Axis pairs of the three planes, in the order their features are concatenated: XY, YZ, XZ.
PLANES = ((0, 1), (1, 2), (0, 2))


class TriPlaneEncoder(nn.Module):
    """``f_x = H_XY(x, y) ⊕ H_YZ(y, z) ⊕ H_XZ(x, z)``.

    ``aabb`` (2, 3) is the head box in head units; points are normalised by it, and points outside it are
    clamped to its faces (the ray marcher never asks for them, but the occupancy-grid update may).
    """

    def __init__(self, cfg: HashGridConfig, aabb: torch.Tensor, device: torch.device | str = "cpu",
                 prefer_tcnn: bool = True):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("aabb", torch.as_tensor(aabb, dtype=torch.float32).clone())
        self.grid = make_hash_encoder(cfg, planes=3, device=device, prefer_tcnn=prefer_tcnn)
        self.register_buffer("plane_axes", torch.tensor(PLANES, dtype=torch.int64), persistent=False)

    @property
    def out_dim(self) -> int:
        return 3 * self.cfg.out_dim

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Head-space points (B, 3) -> box coordinates in [0, 1]^3."""
        lo, hi = self.aabb[0], self.aabb[1]
        return ((x - lo) / (hi - lo)).clamp(0.0, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Head-space points (B, 3) -> tri-plane features (B, 3 * L * F)."""
        u = self.normalise(x)
        coords = u[:, self.plane_axes]  # (B, 3 planes, 2)
        return self.grid(coords)
