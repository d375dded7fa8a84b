"""The ``nerf`` renderer (SyncTalk's Dynamic Portrait Renderer): tri-plane hash encoder + conditions + field
+ ray marcher behind the renderer protocol (:mod:`headsync.renderers.base`).

Per frame, the conditions are computed once (:meth:`TalkingHead.conditions`): the smoothed lip feature
from a window of audio-feature rows, the seven expression coefficients, the appearance code of the
training frame (the codes' mean for any other frame). Per ray batch, :meth:`TalkingHead.render_rays`
marches the head box, evaluates the field on occupied samples only, composites, and lays the head over
the frame's background (torso + plate), as ER-NeRF's head NeRF renders on top of the torso and background.
Training follows ER-NeRF: ray sets in the coarse stage, head and lips patches in the fine stage, the hash
tables at a higher learning rate, and the occupancy grid refreshed every ``march.update_every`` steps
(:class:`OccupancyRefresh`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..base import Renderer, Sampling, SubjectMeta, TrainingCallback
from ..common.cameras import Camera, pixel_grid
from ..common.conditioning import AudioEncoder, AudioSmoother, Conditioning, ConditioningConfig
from ..common.expression_basis import ExpressionBasis, ExpressionBasisConfig
from .field import FieldConfig, HeadField
from ..common.hashgrid import HashGrid2D, HashGridConfig
from ...core.compile import compile_forward
from .raymarch import MarchConfig, OccupancyGrid, composite, sample_occupied
from ..common.triplane import TriPlaneEncoder
from ..registry import register_renderer


@dataclass(frozen=True)
class ModelConfig:
    """The ``[renderer.nerf]`` table (sub-tables ``hash``, ``cond``, ``field``, ``march``): everything that
    shapes the network and how it trains; stored in the checkpoint to rebuild it."""

    hash: HashGridConfig = dataclasses.field(default_factory=HashGridConfig)
    cond: ConditioningConfig = dataclasses.field(default_factory=ConditioningConfig)
    field: FieldConfig = dataclasses.field(default_factory=FieldConfig)
    march: MarchConfig = dataclasses.field(default_factory=MarchConfig)
    expression_basis: ExpressionBasisConfig = dataclasses.field(default_factory=ExpressionBasisConfig)
    # Head box = template bounds grown by these fractions of its extent (x, y, z each side): the
    # face-mesh template covers the face only, the box must also hold hair, ears and the back of the head.
    bound_margin: tuple[float, float, float] = (0.45, 0.45, 0.6)
    lr_hash: float = 1e-2  # AdamW on the hash tables (the papers' 1e-2)
    lr_net: float = 1e-3  # ... and on everything else
    weight_decay: float = 1e-4  # on the MLPs only (hash tables are sparse lookups)
    chunk: int = 16384  # rays per forward pass when rendering a whole image (memory, not results)


def head_box(template: np.ndarray, margin: tuple[float, float, float]) -> np.ndarray:
    """Axis-aligned head box (2, 3) in head units: template bounds grown by ``margin`` x extent."""
    lo, hi = template.min(0), template.max(0)
    ext = hi - lo
    grow = ext * np.asarray(margin)
    return np.stack([lo - grow, hi + grow]).astype(np.float32)


@register_renderer("nerf")
class TalkingHead(Renderer):
    """Audio- and expression-driven head radiance field.

    ``meta.template`` (P, 3) head-space face points (MediaPipe order) place the head box and the face
    split, ``meta.audio_dim`` is the audio-feature width, one appearance code per training frame.
    """

    Config = ModelConfig

    def __init__(self, cfg: ModelConfig, meta: SubjectMeta, device: torch.device | str = "cpu",
                 prefer_tcnn: bool = True):
        super().__init__(cfg, meta)
        template = np.asarray(meta.template, np.float32)
        expr_dim = len(meta.coefficient_names)
        aabb = torch.as_tensor(head_box(template, cfg.bound_margin))
        self.register_buffer("aabb", aabb.clone())
        # Densities are per box diagonal: sigma_head = sigma_field / diagonal, so alpha = 1 - exp(-sigma_field *
        # step / diagonal) does not depend on the template's unit.
        self.inv_scale = float(1.0 / (aabb[1] - aabb[0]).norm())
        self.encoder = TriPlaneEncoder(cfg.hash, aabb, device=device, prefer_tcnn=prefer_tcnn)
        self.audio_encoder = AudioEncoder(meta.audio_dim, cfg.cond)
        self.smoother = AudioSmoother(cfg.cond)
        self.conditioning = Conditioning(self.encoder.out_dim, expr_dim, template, cfg.cond)
        self.field = HeadField(self.encoder.out_dim, cfg.cond.audio_dim, expr_dim, cfg.field)
        self.codes = nn.Embedding(meta.n_train, cfg.field.appearance_dim)
        nn.init.zeros_(self.codes.weight)
        # Only built when enabled: a model without it draws the same
        # random initial weights as before the basis existed.
        self.expression_basis = (ExpressionBasis(cfg.expression_basis, tuple(meta.coefficient_names), aabb, template,
                                                 cfg.cond.split_softness, device=device, prefer_tcnn=prefer_tcnn)
                                 if cfg.expression_basis.enabled else None)
        self.grid = OccupancyGrid(aabb, cfg.march)
        # Subject frame -> its appearance code (-1: not a training frame); derived from meta, not saved.
        slot = torch.full((meta.n_frames,), -1, dtype=torch.long)
        slot[torch.as_tensor(meta.train_frames, dtype=torch.long)] = torch.arange(meta.n_train)
        self.register_buffer("code_slot", slot, persistent=False)
        self.audio_window = cfg.cond.smooth_window
        self.to(device)

    @classmethod
    def build(cls, cfg: ModelConfig, meta: SubjectMeta, device: torch.device | str) -> "TalkingHead":
        return cls(cfg, meta, device=device)

    def compile_hot_paths(self, enabled: bool = True) -> str:
        """``torch.compile`` the pure-PyTorch hash grid, the bulk of a training step (docs/benchmarks.md);
        tiny-cuda-nn's fused grid is left alone. Returns what :func:`~headsync.core.compile.compile_forward`
        says, or ``"fused"``."""
        if not isinstance(self.encoder.grid, HashGrid2D):
            return "fused"
        # Its two pure parts, not its forward: the lookup's lean backward (an autograd.Function that
        # recomputes the corners) then runs compiled code on both passes and keeps its bounded memory.
        state = compile_forward(self.encoder.grid, enabled, method="corners")
        if state == "compiled":
            compile_forward(self.encoder.grid, enabled, method="interpolate")
        return state

    # ---- parameters ------------------------------------------------------------------------
    def hash_parameters(self) -> list[nn.Parameter]:
        """The field's hash tables (trained at the higher learning rate, 1e-2 in the papers)."""
        return list(self.encoder.grid.parameters())

    def other_parameters(self) -> list[nn.Parameter]:
        """The MLPs, attention, audio encoder and appearance codes: all but the hash tables and the basis."""
        basis = [] if self.expression_basis is None else list(self.expression_basis.parameters())
        ids = {id(p) for p in self.hash_parameters() + basis}
        return [p for p in self.parameters() if id(p) not in ids]

    def param_groups(self, train_cfg=None) -> list[dict]:
        groups = [{"name": "hash", "params": self.hash_parameters(), "lr": self.cfg.lr_hash, "weight_decay": 0.0},
                  {"name": "net", "params": self.other_parameters(), "lr": self.cfg.lr_net,
                   "weight_decay": self.cfg.weight_decay}]
        if self.expression_basis is not None:
            groups.append(self.expression_basis.param_group())
        return groups

    # ---- training hooks --------------------------------------------------------------------
    def sampling(self, stage: str) -> Sampling:
        """ER-NeRF's schedule: ray sets (Eq. 11) in the coarse stage, patches (Eq. 12) in the fine one."""
        return Sampling.RAYS if stage == "coarse" else Sampling.PATCHES

    def callbacks(self) -> list[TrainingCallback]:
        return [OccupancyRefresh(self.cfg.march.update_every)]

    def start_training(self, train_audio: np.ndarray) -> None:
        self.audio_encoder.set_statistics(train_audio)

    # ---- conditions ------------------------------------------------------------------------
    def conditions(self, audio_window: torch.Tensor, expr: torch.Tensor, frame_index: torch.Tensor | None
                   ) -> dict[str, torch.Tensor]:
        """Per-frame conditions.

        ``audio_window`` (B, W, D) audio-feature rows around each frame, ``expr`` (B, E) in [0, 1],
        ``frame_index`` (B,) subject frames: training frames get their appearance code, the others (held
        out, new audio, None) the codes' mean. Returns ``lip`` (B, A), ``expr`` (B, E), ``code`` (B, P).
        """
        b, w, d = audio_window.shape
        lip = self.smoother(self.audio_encoder(audio_window.reshape(b * w, d)).view(b, w, -1))
        slot = None if frame_index is None else self.code_slot[frame_index.clamp(0, self.code_slot.numel() - 1)]
        if slot is None or bool((slot < 0).all()):
            code = self.codes.weight.mean(0, keepdim=True).expand(b, -1)
        elif bool((slot >= 0).all()):
            code = self.codes(slot)
        else:
            mean = self.codes.weight.mean(0, keepdim=True).expand(b, -1)
            code = torch.where((slot >= 0)[:, None], self.codes(slot.clamp(min=0)), mean)
        return {"lip": lip, "expr": expr, "code": code}
    # ---- field queries ---------------------------------------------------------------------
    def density(self, x: torch.Tensor, cond: dict[str, torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Head points (K, 3) with one frame's conditions -> (sigma (K,) per head unit, geo (K, G), the
        expression basis' colour-logit delta (K, 3), None without the basis)."""
        fx = self.encoder(x)
        lip, expr = self.conditioning(fx, x, cond["lip"], cond["expr"])
        d_rgb = d_sigma = None
        if self.expression_basis is not None:
            d_rgb, d_sigma = self.expression_basis(x, cond["expr"])
        sigma, geo = self.field.density(fx, lip, expr, d_sigma)
        return sigma * self.inv_scale, geo, d_rgb

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
            sigma, geo, d_rgb = self.density(s.points, cond)
            rgb = self.field.color(geo, dirs[s.ray], cond["code"], d_rgb)
        else:  # nothing occupied on any ray: keep the graph connected for the optimiser
            sigma = origins.new_zeros(0)
            rgb = origins.new_zeros(0, 3)
            d_rgb = None
        out = composite(sigma, rgb, s)
        if d_rgb is not None and self.training and self.cfg.expression_basis.penalty > 0:
            out["expression_delta_sq"] = d_rgb.square().mean()
        out["head"] = out["rgb"]
        out["rgb"] = out["rgb"] + (1.0 - out["opacity"])[:, None] * bg
        out["samples"] = int(s.points.shape[0])
        return out

    def losses(self, out: dict[str, torch.Tensor], target: torch.Tensor, mask: torch.Tensor,
               batch) -> dict[str, torch.Tensor]:
        """The expression basis' penalty (``expression_basis.penalty`` x mean squared colour-logit delta
        of the batch's samples), keeping the deltas local; none without it."""
        if "expression_delta_sq" not in out:
            return {}
        return {"expression_basis": self.cfg.expression_basis.penalty * out["expression_delta_sq"]}

    def render(self, camera: Camera, cond: dict[str, torch.Tensor], background: torch.Tensor,
               pixels: torch.Tensor | None = None, train: bool = False) -> dict[str, torch.Tensor]:
        """See :meth:`Renderer.render`; a whole image is marched in chunks of ``cfg.chunk`` rays."""
        if pixels is not None:
            o, d = camera.rays(pixels)
            out = self.render_rays(o, d, cond, background, perturb=train)
            out["stats"] = {"samples_per_ray": out["samples"] / max(pixels.shape[0], 1)}
            return out
        size = camera.K.size
        pix = pixel_grid(size).to(background.device)
        bg_flat = background.reshape(-1, 3)
        rgb, head, opacity = [], [], []
        for i in range(0, pix.shape[0], self.cfg.chunk):
            o, d = camera.rays(pix[i:i + self.cfg.chunk])
            out = self.render_rays(o, d, cond, bg_flat[i:i + self.cfg.chunk], perturb=train)
            rgb.append(out["rgb"])
            head.append(out["head"])
            opacity.append(out["opacity"])
        return {"rgb": torch.cat(rgb).view(size, size, 3), "head": torch.cat(head).view(size, size, 3),
                "opacity": torch.cat(opacity).view(size, size)}


class OccupancyRefresh(TrainingCallback):
    """Every ``every`` steps, refresh the occupancy grid from a random training frame's conditions (the
    codes' mean), so marching keeps skipping empty space as the head takes shape."""

    def __init__(self, every: int):
        self.every = every
        self.occupied = 1.0

    def after_step(self, it: int, ctx) -> dict[str, float]:
        if (it + 1) % self.every == 0:
            frame = ctx.random_training_frame()
            ctx.renderer.eval()
            self.occupied = ctx.renderer.update_grid(ctx.conditions(frame, neutral=True))
        return {"occupied": round(self.occupied, 4)}
