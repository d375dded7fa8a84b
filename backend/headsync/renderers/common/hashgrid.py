"""Multiresolution 2D hash encoding (Instant-NGP), in pure PyTorch, for the tri-plane representation.

A point ``(a, b)`` in ``[0, 1]^2`` is looked up in ``L`` grids whose resolution grows geometrically from
``base_resolution`` to ``finest_resolution``. Coarse levels index a dense table, fine levels a hashed one
of ``2**log2_table_size`` entries; each level returns ``F`` bilinearly interpolated features, and the
levels are concatenated into ``L * F`` channels.

The index arithmetic follows tiny-cuda-nn's ``HashGrid`` exactly (grid scale ``base * s**l - 1``, the
``+0.5`` offset, dense/hashed switch, prime-XOR hash, table sizes rounded up to 8), so a table trained here
loads into tiny-cuda-nn and back. :func:`make_hash_encoder` returns the tiny-cuda-nn module instead when it
imports on a CUDA device: the same parameters, a fused kernel.

Several 2D encoders (the three planes of the tri-plane) share one :class:`HashGrid2D` with ``planes=3``:
one gather and one scatter per step instead of three, which is what makes the CPU path usable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ...core.devices import cuda_extension_available

#: tiny-cuda-nn's coherent prime hash factors for the first two dimensions.
_PRIMES = (1, 2654435761)


@dataclass(frozen=True)
class HashGridConfig:
    """Shape of a 2D multiresolution hash grid (the papers: L=14, F=1, 64..512 per plane)."""

    levels: int = 14
    features: int = 1
    base_resolution: int = 64
    finest_resolution: int = 512
    log2_table_size: int = 14
    # Autograd keeps each lookup's corner indices and weights (8 bytes a corner) up to this many MB; a
    # bigger batch (the ``standard`` table's 32k rays: about 2 GB) recomputes them in the backward pass
    # instead, trading about a fifth of a step's time for the memory (docs/benchmarks.md, issue 10).
    keep_corners_mb: float = 512.0

    @property
    def per_level_scale(self) -> float:
        """Growth factor between levels, so the last level reaches ``finest_resolution``."""
        if self.levels <= 1:
            return 1.0
        return math.exp(math.log(self.finest_resolution / self.base_resolution) / (self.levels - 1))

    @property
    def out_dim(self) -> int:
        return self.levels * self.features


def level_layout(cfg: HashGridConfig) -> tuple[list[float], list[int], list[int], list[int]]:
    """Per-level ``scale``, grid ``resolution``, table ``size`` and ``offset`` (tiny-cuda-nn's rules).

    ``scale`` maps ``[0, 1]`` to grid units; a level is dense when its ``resolution**2`` vertices fit in
    the table and hashed otherwise. Sizes are rounded up to a multiple of 8 as tiny-cuda-nn does.
    """
    scales, resolutions, sizes, offsets = [], [], [], []
    offset = 0
    log2_s = math.log2(cfg.per_level_scale)
    for level in range(cfg.levels):
        scale = 2.0 ** (level * log2_s) * cfg.base_resolution - 1.0
        res = int(math.ceil(scale)) + 1
        size = min(_next_multiple(res * res, 8), 1 << cfg.log2_table_size)
        scales.append(scale)
        resolutions.append(res)
        sizes.append(size)
        offsets.append(offset)
        offset += size
    return scales, resolutions, sizes, offsets


def _next_multiple(v: int, m: int) -> int:
    return (v + m - 1) // m * m


class HashGrid2D(nn.Module):
    """``planes`` independent 2D multiresolution hash encoders evaluated together.

    Input ``coords`` (B, planes, 2) in ``[0, 1]``; output (B, planes * L * F), plane-major then
    level-major (plane ``p``, level ``l``, feature ``f`` at ``(p * L + l) * F + f``), as concatenating
    ``planes`` separate tiny-cuda-nn encodings would give. Parameters: ``table`` (planes, T_total, F)
    initialised uniformly in ``[-1e-4, 1e-4]`` as in Instant-NGP.
    """

    def __init__(self, cfg: HashGridConfig, planes: int = 1):
        super().__init__()
        self.cfg = cfg
        self.planes = planes
        scales, resolutions, sizes, offsets = level_layout(cfg)
        self.total = offsets[-1] + sizes[-1]
        self.table = nn.Parameter(torch.empty(planes, self.total, cfg.features).uniform_(-1e-4, 1e-4))
        self.register_buffer("scales", torch.tensor(scales, dtype=torch.float32), persistent=False)
        # Coarse levels are dense (index = x + y * res: their vertices fit in the table), fine ones hashed;
        # levels only grow, so the dense ones come first and the two groups are computed separately.
        self.n_dense = sum(r * r <= s for r, s in zip(resolutions, sizes))
        self.register_buffer("res_dense", torch.tensor(resolutions[: self.n_dense], dtype=torch.int32),
                             persistent=False)
        self.register_buffer("size_dense", torch.tensor(sizes[: self.n_dense], dtype=torch.int32),
                             persistent=False)
        # Hashed levels have power-of-two tables, so "mod size" is "& (size - 1)" and only the low bits of
        # the prime matter: the hash runs in int32 with wrap-around, exactly as the uint32 CUDA code.
        self.register_buffer("mask_hash", torch.tensor([s - 1 for s in sizes[self.n_dense:]], dtype=torch.int32),
                             persistent=False)
        assert all(s & (s - 1) == 0 for s in sizes[self.n_dense:]), "hashed tables must be powers of two"
        prime = _PRIMES[1] & ((1 << cfg.log2_table_size) - 1)
        self.prime_low = prime - (1 << 32) if prime >= 1 << 31 else prime
        # Flat-table offset of (plane, level): plane * total + level offset.
        base = torch.arange(planes)[:, None] * self.total + torch.tensor(offsets)[None, :]
        self.register_buffer("base", base.to(torch.int32), persistent=False)

    @property
    def out_dim(self) -> int:
        return self.planes * self.cfg.out_dim

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        """Encode (B, planes, 2) coordinates in [0, 1] -> (B, planes * L * F) features."""
        if (torch.is_grad_enabled() and self.table.requires_grad and not torch.compiler.is_compiling()
                and self.corner_bytes(coords.shape[0]) > self.cfg.keep_corners_mb * 2 ** 20):
            return _Lookup.apply(coords, self.table, self)
        idx, w = self.corners(coords)
        return self.interpolate(self.table, idx, w)

    def corner_bytes(self, points: int) -> int:
        """Bytes of the corner indices (int32) and weights (float32) of ``points`` lookups."""
        return points * self.planes * self.cfg.levels * 4 * 8

    def corners(self, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat table indices (B, P, L, 4) of the four corners of each point's cell at each level, corners
        (0,0) (1,0) (0,1) (1,1), and their bilinear weights (B, P, L, 4)."""
        L, P = self.cfg.levels, self.planes
        # (B, P, L, 2) continuous grid positions; tiny-cuda-nn's half-cell offset puts vertices at cell centres.
        pos = coords.unsqueeze(2) * self.scales.view(1, 1, L, 1) + 0.5
        cell = torch.floor(pos)
        frac = pos - cell
        cell = cell.to(torch.int32)
        x0, y0 = cell[..., 0], cell[..., 1]  # (B, P, L)
        idx = self._corner_index(x0, y0) + self.base.view(1, P, L, 1)
        fx, fy = frac[..., 0], frac[..., 1]
        gx, gy = 1 - fx, 1 - fy
        return idx, torch.stack([gx * gy, fx * gy, gx * fy, fx * fy], dim=-1)

    def interpolate(self, table: torch.Tensor, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Features (B, P * L * F): the corners' table rows weighted by ``w``."""
        b, (P, L, F) = idx.shape[0], (self.planes, self.cfg.levels, self.cfg.features)
        # Plain indexing: its backward (index_put with accumulate) is much faster on CPU than embedding's.
        feats = table.view(P * self.total, F)[idx.view(-1)].view(b, P, L, 4, F)
        return (feats * w.unsqueeze(-1)).sum(dim=3).reshape(b, P * L * F)

    def _corner_index(self, x0: torch.Tensor, y0: torch.Tensor) -> torch.Tensor:
        """In-level table index of the four corners of cells (B, P, L) -> (B, P, L, 4)."""
        nd = self.n_dense
        parts = []
        if nd:
            res = self.res_dense.view(1, 1, nd)
            base = x0[..., :nd] + y0[..., :nd] * res
            step = torch.stack([torch.zeros_like(res), torch.ones_like(res), res, res + 1], -1)  # (1, 1, nd, 4)
            idx = base.unsqueeze(-1) + step
            # Corners on the far border (x or y == res) wrap modulo the table size, as tiny-cuda-nn's "% size";
            # they never exceed res^2 + res < 2 * size, so one conditional subtraction is enough.
            size = self.size_dense.view(1, 1, nd, 1)
            parts.append(torch.where(idx >= size, idx - size, idx))
        if nd < self.cfg.levels:
            xa, ya = x0[..., nd:], y0[..., nd:]
            xb = xa + 1
            ha = ya * self.prime_low
            hb = ha + self.prime_low
            corners = torch.stack([xa ^ ha, xb ^ ha, xa ^ hb, xb ^ hb], -1)
            parts.append(corners & self.mask_hash.view(1, 1, -1, 1))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)


class _Lookup(torch.autograd.Function):
    """The hash-grid lookup with a lean backward: it keeps only the coordinates (B, P, 2) and recomputes
    the corner indices and weights (B, P, L, 4 each) when the gradient is needed. Autograd's own graph would
    keep both, about 2 KB a sample point at L = 14: gigabytes for the 32768-ray batches of the ``standard``
    table. The gradient is the same sum, by the same index_put (tests/test_hashgrid.py)."""

    @staticmethod
    def forward(ctx, coords, table, grid):  # noqa: D102
        idx, w = grid.corners(coords)
        ctx.save_for_backward(coords)
        ctx.grid = grid
        return grid.interpolate(table, idx, w)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        (coords,) = ctx.saved_tensors
        grid = ctx.grid
        idx, w = grid.corners(coords)
        b, (P, L, F) = coords.shape[0], (grid.planes, grid.cfg.levels, grid.cfg.features)
        rows = (grad.view(b, P, L, 1, F) * w.unsqueeze(-1)).view(-1, F)
        g = grad.new_zeros(P * grid.total, F).index_put_((idx.view(-1).long(),), rows, accumulate=True)
        return None, g.view(P, grid.total, F), None


class TcnnHashGrid2D(nn.Module):
    """tiny-cuda-nn's fused HashGrid for ``planes`` 2D encoders, same interface and parameter layout.

    Holds one ``tcnn.Encoding`` per plane; :meth:`load_table` / :meth:`table_tensor` convert to and from
    :class:`HashGrid2D`'s ``table`` so checkpoints move between the two.
    """

    def __init__(self, cfg: HashGridConfig, planes: int = 1):
        super().__init__()
        import tinycudann as tcnn

        self.cfg = cfg
        self.planes = planes
        encoding = {
            "otype": "HashGrid",
            "n_levels": cfg.levels,
            "n_features_per_level": cfg.features,
            "log2_hashmap_size": cfg.log2_table_size,
            "base_resolution": cfg.base_resolution,
            "per_level_scale": cfg.per_level_scale,
            "interpolation": "Linear",
        }
        self.encoders = nn.ModuleList(
            tcnn.Encoding(2, encoding, dtype=torch.float32) for _ in range(planes))

    @property
    def out_dim(self) -> int:
        return self.planes * self.cfg.out_dim

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        """Encode (B, planes, 2) coordinates in [0, 1] -> (B, planes * L * F) features."""
        return torch.cat([enc(coords[:, p].contiguous()).float() for p, enc in enumerate(self.encoders)], -1)

    @torch.no_grad()
    def load_table(self, table: torch.Tensor) -> None:
        """Copy a :class:`HashGrid2D` table (planes, T_total, F) into the fused encoders."""
        for p, enc in enumerate(self.encoders):
            enc.params.copy_(table[p].reshape(-1)[: enc.params.numel()].to(enc.params))

    def table_tensor(self) -> torch.Tensor:
        """The parameters as a :class:`HashGrid2D` table (planes, T_total, F)."""
        return torch.stack([enc.params.view(-1, self.cfg.features) for enc in self.encoders])


def tcnn_available(device: torch.device | str) -> bool:
    """True when tiny-cuda-nn imports and ``device`` is CUDA."""
    return cuda_extension_available("tinycudann", device)


def make_hash_encoder(cfg: HashGridConfig, planes: int, device: torch.device | str = "cpu",
                      prefer_tcnn: bool = True) -> nn.Module:
    """The fastest available encoder: tiny-cuda-nn on CUDA when importable, else :class:`HashGrid2D`."""
    if prefer_tcnn and tcnn_available(device):
        return TcnnHashGrid2D(cfg, planes).to(device)
    return HashGrid2D(cfg, planes).to(device)
