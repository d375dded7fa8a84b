"""The talking head: tri-plane encoder + conditions + field + ray marcher in one ``nn.Module``.

Per frame, the conditions are computed once (:meth:`TalkingHead.frame_conditions`): the smoothed lip
feature from a window of audio-feature rows, the seven expression coefficients, the appearance code.
Per ray batch, :meth:`TalkingHead.render_rays` marches the head box, evaluates the field on occupied
samples only, composites, and lays the head over the frame's background (torso + plate), as ER-NeRF's head
NeRF renders on top of the torso and background.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..common.cameras import Intrinsics, pixel_grid, rays
from ..common.conditioning import AudioEncoder, AudioSmoother, Conditioning, ConditioningConfig
from .field import FieldConfig, HeadField
from ..common.hashgrid import HashGrid2D, HashGridConfig
from ...core.compile import compile_forward
from .raymarch import MarchConfig, OccupancyGrid, composite, sample_occupied
from ..common.triplane import TriPlaneEncoder


@dataclass(frozen=True)
class ModelConfig:
    """Everything that shapes the network; stored in the checkpoint to rebuild it."""

    hash: HashGridConfig = dataclasses.field(default_factory=HashGridConfig)
    cond: ConditioningConfig = dataclasses.field(default_factory=ConditioningConfig)
    field: FieldConfig = dataclasses.field(default_factory=FieldConfig)
    march: MarchConfig = dataclasses.field(default_factory=MarchConfig)
    # Head box = template bounds grown by these fractions of its extent (x, y, z each side): the
    # face-mesh template covers the face only, the box must also hold hair, ears and the back of the head.
    bound_margin: tuple[float, float, float] = (0.45, 0.45, 0.6)


def head_box(template: np.ndarray, margin: tuple[float, float, float]) -> np.ndarray:
    """Axis-aligned head box (2, 3) in head units: template bounds grown by ``margin`` x extent."""
    lo, hi = template.min(0), template.max(0)
    ext = hi - lo
    grow = ext * np.asarray(margin)
    return np.stack([lo - grow, hi + grow]).astype(np.float32)


class TalkingHead(nn.Module):
    """Audio- and expression-driven head radiance field.

    ``template`` (P, 3) head-space face points (MediaPipe order), ``audio_in`` the audio-feature width,
    ``n_codes`` the number of training frames (one appearance code each), ``expr_dim`` 7.
    """

    def __init__(self, cfg: ModelConfig, template: np.ndarray, audio_in: int, n_codes: int, expr_dim: int = 7,
                 device: torch.device | str = "cpu", prefer_tcnn: bool = True):
        super().__init__()
        self.cfg = cfg
        aabb = torch.as_tensor(head_box(template, cfg.bound_margin))
        self.register_buffer("aabb", aabb.clone())
        # Densities are per box diagonal: sigma_head = sigma_field / diagonal, so alpha = 1 - exp(-sigma_field *
        # step / diagonal) does not depend on the template's unit.
        self.inv_scale = float(1.0 / (aabb[1] - aabb[0]).norm())
        self.encoder = TriPlaneEncoder(cfg.hash, aabb, device=device, prefer_tcnn=prefer_tcnn)
        self.audio_encoder = AudioEncoder(audio_in, cfg.cond)
        self.smoother = AudioSmoother(cfg.cond)
        self.conditioning = Conditioning(self.encoder.out_dim, expr_dim, template, cfg.cond)
        self.field = HeadField(self.encoder.out_dim, cfg.cond.audio_dim, expr_dim, cfg.field)
        self.codes = nn.Embedding(n_codes, cfg.field.appearance_dim)
        nn.init.zeros_(self.codes.weight)
        self.grid = OccupancyGrid(aabb, cfg.march)
        self.to(device)

    def compile_hot_paths(self, enabled: bool = True) -> str:
        """``torch.compile`` the pure-PyTorch hash grid, the bulk of a training step (docs/benchmarks.md);
        tiny-cuda-nn's fused grid is left alone. Returns what :func:`~headsync.core.compile.compile_forward`
        says, or ``"fused"``."""
        if not isinstance(self.encoder.grid, HashGrid2D):
            return "fused"
        return compile_forward(self.encoder.grid, enabled)

    # ---- parameters ------------------------------------------------------------------------
    def hash_parameters(self) -> list[nn.Parameter]:
        """The hash tables (trained at the higher learning rate, 1e-2 in the papers)."""
        return list(self.encoder.grid.parameters())

    def other_parameters(self) -> list[nn.Parameter]:
        ids = {id(p) for p in self.hash_parameters()}
        return [p for p in self.parameters() if id(p) not in ids]

    # ---- conditions ------------------------------------------------------------------------
    def frame_conditions(self, audio_window: torch.Tensor, expr: torch.Tensor, code_index: torch.Tensor | None
                         ) -> dict[str, torch.Tensor]:
        """Per-frame conditions.

        ``audio_window`` (B, W, D) audio-feature rows around each frame, ``expr`` (B, E) in [0, 1],
        ``code_index`` (B,) training-frame indices, or None for frames without a code (held out, new
        audio), which get the mean code. Returns ``lip`` (B, A), ``expr`` (B, E), ``code`` (B, P).
        """
        b, w, d = audio_window.shape
        lip = self.smoother(self.audio_encoder(audio_window.reshape(b * w, d)).view(b, w, -1))
        if code_index is None:
            code = self.codes.weight.mean(0, keepdim=True).expand(b, -1)
        else:
            code = self.codes(code_index)
        return {"lip": lip, "expr": expr, "code": code}

    # ---- field queries ---------------------------------------------------------------------
    def density(self, x: torch.Tensor, cond: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Head points (K, 3) with one frame's conditions -> (sigma (K,) per head unit, geo, fx)."""
        fx = self.encoder(x)
        lip, expr = self.conditioning(fx, x, cond["lip"], cond["expr"])
        sigma, geo = self.field.density(fx, lip, expr)
        return sigma * self.inv_scale, geo, fx

    @torch.no_grad()
    def update_grid(self, cond: dict[str, torch.Tensor]) -> float:
        """Refresh the occupancy grid with one frame's conditions; returns the occupied fraction."""
        return self.grid.update(lambda x: self.density(x, cond)[0])

    def render_rays(self, origins: torch.Tensor, dirs: torch.Tensor, cond: dict[str, torch.Tensor],
                    bg: torch.Tensor, perturb: bool = False) -> dict[str, torch.Tensor]:
        """Render rays (M, 3) of one frame over ``bg`` (M, 3) in [0, 1].

        Returns ``rgb`` (M, 3) final colour, ``head`` (M, 3) premultiplied head colour, ``opacity`` (M,),
        ``depth`` (M,), ``samples`` (int, field evaluations).
        """
        mc = self.cfg.march
        s = sample_occupied(origins, dirs, self.grid, mc.samples, mc.probes, perturb, mc.depth)
        if s.points.shape[0] > 0:
            sigma, geo, _ = self.density(s.points, cond)
            rgb = self.field.color(geo, dirs[s.ray], cond["code"])
        else:  # nothing occupied on any ray: keep the graph connected for the optimiser
            sigma = origins.new_zeros(0)
            rgb = origins.new_zeros(0, 3)
        out = composite(sigma, rgb, s)
        out["head"] = out["rgb"]
        out["rgb"] = out["rgb"] + (1.0 - out["opacity"])[:, None] * bg
        out["samples"] = int(s.points.shape[0])
        return out

    @torch.no_grad()
    def render_image(self, K: Intrinsics, R_c2h: torch.Tensor, origin: torch.Tensor, cond: dict[str, torch.Tensor],
                     bg: torch.Tensor, chunk: int = 16384) -> dict[str, torch.Tensor]:
        """A whole frame at ``K.size``: ``bg`` (S, S, 3) -> ``rgb`` (S, S, 3) over ``bg``, ``head`` (S, S, 3)
        premultiplied head alone, ``opacity`` (S, S)."""
        size = K.size
        pix = pixel_grid(size).to(bg.device)
        bg_flat = bg.reshape(-1, 3)
        rgb, head, opacity = [], [], []
        for i in range(0, pix.shape[0], chunk):
            o, d = rays(K, R_c2h, origin, pix[i:i + chunk])
            out = self.render_rays(o, d, cond, bg_flat[i:i + chunk])
            rgb.append(out["rgb"])
            head.append(out["head"])
            opacity.append(out["opacity"])
        return {"rgb": torch.cat(rgb).view(size, size, 3), "head": torch.cat(head).view(size, size, 3),
                "opacity": torch.cat(opacity).view(size, size)}
