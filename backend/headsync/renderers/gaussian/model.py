"""SyncTalk++'s Gaussian head (Sec. III-D, Eq. 16-20): canonical Gaussians from tri-plane features, deformed
by the lip feature, the expression feature and the head pose.

* Canonical Gaussians (Eq. 16-18). The centres start on the subject: the stabilizer's face-template points
  plus points filling the head box (an ellipsoid inscribed in it, seeded, so rebuilding gives the same
  set). At each centre the tri-plane hash feature ``f_mu = f_XY ⊕ f_YZ ⊕ f_XZ`` (the NeRF's
  :class:`~headsync.renderers.common.triplane.TriPlaneEncoder`) goes through ``F_can`` (an MLP with one head per attribute)
  to a position offset, rotation (quaternion), scale, opacity and SH colour. Scale and opacity are the
  MLP's output added to per-Gaussian ``log_scales`` / ``opacity_logits``: what densification edits when it
  splits a Gaussian (scale / 1.6) or resets opacities, as gsplat's strategy edits its raw parameters.
  Initial scales are ``init_scale`` x the mean distance to the three nearest centres (3DGS: 1x).
* Deformation (Eq. 19-20). ``F_deform([f_mu, f_l', f_e', pose])`` gives offsets of every attribute; the
  lip and expression features reach each Gaussian through the facial-aware masked attention of
  :class:`~headsync.renderers.common.conditioning.Conditioning` (lips only below the nose tip, expression only above),
  and the pose is the frame's camera in head space (rotation, translation / box diagonal). Its last layer
  starts at zero, so stage 2 begins where stage 1 (canonical, static) ended.
* Rendering: :func:`~headsync.renderers.gaussian.rasterizer.rasterization` from the frame's camera
  (head space is the world, the camera moves around the still head as in the NeRF), the head laid over
  the frame's background.
* Expression basis (opt-in, ``[renderer.gaussian.expression_basis]``; issue 12): the NeRF's linear basis
  (:mod:`~headsync.renderers.common.expression_basis`, NeRFBlendShape) evaluated once per Gaussian at its
  canonical centre; in stage 2 ``sum_k e_k * delta_k(mu)`` is added to the SH DC coefficient (and, with
  ``density``, to the opacity logit). Through ``F_deform`` alone, franck's blink and brow edits did not act
  (docs/benchmarks.md).

Training (the ``gaussian`` renderer of :mod:`headsync.renderers.registry`, through the one trainer):
whole frames (:attr:`Sampling.IMAGE`); stage 1 (canonical) is the ``[train]`` schedule's coarse stage,
stage 2 (deformable) its fine stage (:class:`StageSwitch`); densification and pruning after every
backward pass (:class:`Densify`, :mod:`.strategy`, the ``[renderer.gaussian.densify]`` table). Losses
(Eq. 22, 24): the trainer's pixel and silhouette terms, plus L1 + ``lpips_weight`` x the perceptual term
of :mod:`headsync.renderers.common.losses` (LPIPS with its weights installed, else ``1 - SSIM``), raised
to ``lpips_weight_deform`` in stage 2.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..base import Renderer, Sampling, SubjectMeta, TrainingCallback
from ..common.cameras import Camera, Intrinsics
from ..common.conditioning import AudioEncoder, AudioSmoother, Conditioning, ConditioningConfig, mlp
from ..common.expression_basis import ExpressionBasis, ExpressionBasisConfig
from ..common.hashgrid import HashGridConfig
from ..common.losses import perceptual_loss
from ..common.triplane import TriPlaneEncoder
from ..nerf.model import head_box
from ..registry import register_renderer
from .rasterizer import rasterization
from .strategy import DensifyConfig, DensifyStrategy

#: Per-Gaussian tensors (leading dimension N) that densification resizes.
GAUSSIAN_PARAMS = ("means", "log_scales", "opacity_logits")
STAGE_CANONICAL, STAGE_DEFORM = 1, 2
POSE_DIM = 12  # F_deform's pose input: the world-to-camera rotation (9) and translation / box diagonal (3)


@dataclass(frozen=True)
class GaussianConfig:
    """Shape of the Gaussian head and its loss weights (the ``[renderer.gaussian]`` preset table)."""

    hash: HashGridConfig = dataclasses.field(
        default_factory=lambda: HashGridConfig(levels=8, features=2, base_resolution=16, finest_resolution=256,
                                               log2_table_size=14))
    cond: ConditioningConfig = dataclasses.field(default_factory=ConditioningConfig)
    bound_margin: tuple[float, float, float] = (0.45, 0.45, 0.6)  # head box, as the NeRF's
    fill_points: int = 4096  # centres filling the head box, besides the template's
    seed: int = 0
    sh_degree: int = 1  # 0-1 on CPU presets; up to 3
    hidden: int = 64
    can_layers: int = 2
    deform_layers: int = 3
    init_opacity: float = 0.3
    init_scale: float = 0.5  # initial scale = this x the mean distance to the 3 nearest centres
    max_offset: float = 0.05  # canonical offset bound, fraction of the box diagonal (tanh)
    tile_size: int = 8  # gsplat uses 16; on the CPU 8 wastes less of each padded tile block on small splats
    l1_weight: float = 1.0
    lpips_weight: float = 0.05  # Eq. 22
    lpips_weight_deform: float = 0.2  # Eq. 24: raised in the deformation stage
    # Stage 2: L1 over the region around the lips (the trainer's Batch.lips), as the NeRF's fine stage adds a
    # lips patch. The mouth is ~1% of a frame: without it the whole-frame loss barely reaches the
    # deformation's audio path, and the mouth stays near the canonical average (docs/renderer.md).
    lips_weight: float = 1.0
    # Adam learning rates (3DGS / gsplat's for the per-Gaussian tensors, the papers' 1e-2 for hash tables).
    lr_means: float = 2e-3
    lr_log_scales: float = 5e-3
    lr_opacity_logits: float = 5e-2
    lr_hash: float = 1e-2
    lr_net: float = 2e-3
    # Eq. 19's head pose (R, T) as an input of F_deform. Every training frame has its own pose, so the
    # deformation can key the mouth on the pose (which frame this is) instead of the audio.
    pose_input: bool = True
    # Unit of F_deform's position offsets, in box diagonals (the pose translation's unit too). With raw head
    # units (1 / diagonal, about 0.02 on the sample) the lips' Gaussians moved 0.02 units between a closed
    # and an open mouth 2 units apart: the deformation painted the opening (colour, opacity) instead of
    # moving the lips, and the face mesh could not read the mouth's shape (docs/benchmarks.md).
    deform_offset: float = 1.0
    # Render and evaluate at the subject's crop resolution instead of the training one: splats are drawn at
    # any size for the same per-Gaussian work, so the head is not upscaled from a 96 px image
    # (docs/benchmarks.md: the face mesh reads the mouth of such renders more reliably).
    render_at_crop: bool = False
    densify: DensifyConfig = dataclasses.field(default_factory=DensifyConfig)
    # The linear expression basis on each Gaussian's SH DC (off: old checkpoints load, nothing changes).
    expression_basis: ExpressionBasisConfig = dataclasses.field(default_factory=ExpressionBasisConfig)


def init_centres(template: np.ndarray, aabb: np.ndarray, n_fill: int, seed: int) -> np.ndarray:
    """Initial centres (P + n_fill, 3): the template points and points uniform in the box's inscribed ellipsoid."""
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(n_fill, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    r = rng.random((n_fill, 1)) ** (1.0 / 3.0)
    centre, half = (aabb[0] + aabb[1]) / 2, (aabb[1] - aabb[0]) / 2
    return np.concatenate([np.asarray(template, np.float32), (centre + d * r * half).astype(np.float32)])


def knn_scale(points: torch.Tensor, k: int = 3, chunk: int = 2048) -> torch.Tensor:
    """Mean distance of each point (N, 3) to its ``k`` nearest others (N,), as 3DGS initialises scales."""
    out = []
    for i in range(0, points.shape[0], chunk):
        d = torch.cdist(points[i:i + chunk], points)
        out.append(d.topk(k + 1, largest=False).values[:, 1:].mean(1))
    return torch.cat(out).clamp_min(1e-6)


def viewmat(R_c2h: torch.Tensor, origin: torch.Tensor) -> torch.Tensor:
    """World (head) to camera (4, 4) from the camera-to-head rotation (3, 3) and camera centre (3,)."""
    W = torch.eye(4, dtype=R_c2h.dtype, device=R_c2h.device)
    R = R_c2h.T
    W[:3, :3] = R
    W[:3, 3] = -R @ origin
    return W


def intrinsics_matrix(K: Intrinsics, device, dtype=torch.float32) -> torch.Tensor:
    return torch.as_tensor(K.matrix(), dtype=dtype, device=device)


@register_renderer("gaussian")
class GaussianHead(Renderer):
    """Audio- and expression-driven Gaussian head.

    ``meta.template`` (P, 3) head-space face points (MediaPipe order, from the stabilizer) seed the centres,
    place the head box and the face split; ``meta.audio_dim`` is the audio-feature width.
    """

    Config = GaussianConfig

    def __init__(self, cfg: GaussianConfig, meta: SubjectMeta, device: torch.device | str = "cpu"):
        super().__init__(cfg, meta)
        if not 0 <= cfg.sh_degree <= 3:
            raise ValueError(f"sh_degree must be 0..3, got {cfg.sh_degree}")
        template = np.asarray(meta.template, np.float32)
        audio_in, expr_dim = meta.audio_dim, len(meta.coefficient_names)
        self.audio_window = cfg.cond.smooth_window
        box = head_box(np.asarray(template, np.float32), cfg.bound_margin)
        aabb = torch.as_tensor(box)
        self.register_buffer("aabb", aabb.clone())
        self.diag = float((aabb[1] - aabb[0]).norm())
        self.register_buffer("stage", torch.tensor(STAGE_CANONICAL))
        self.encoder = TriPlaneEncoder(cfg.hash, aabb, device=device)
        self.audio_encoder = AudioEncoder(audio_in, cfg.cond)
        self.smoother = AudioSmoother(cfg.cond)
        feat = self.encoder.out_dim
        self.conditioning = Conditioning(feat, expr_dim, template, cfg.cond)
        self.n_sh = (cfg.sh_degree + 1) ** 2
        # Attribute layout of both MLPs' outputs: offset 3, quaternion 4, log-scale 3, opacity 1, SH n_sh * 3.
        self.n_out = 3 + 4 + 3 + 1 + self.n_sh * 3
        self.canonical = mlp(feat, self.n_out, cfg.hidden, cfg.can_layers)
        self.deform = mlp(feat + cfg.cond.audio_dim + expr_dim + (POSE_DIM if cfg.pose_input else 0), self.n_out,
                          cfg.hidden, cfg.deform_layers)
        for net in (self.canonical, self.deform):  # start at the initial Gaussians: grey, identity rotation
            nn.init.zeros_(net[-1].weight)
            nn.init.zeros_(net[-1].bias)
        # Built only when enabled (as in the NeRF), after the modules with random initial weights so they
        # draw the same with and without it. No per-Gaussian parameters: densification leaves it alone.
        self.expression_basis = (ExpressionBasis(cfg.expression_basis, tuple(meta.coefficient_names), aabb, template,
                                                 cfg.cond.split_softness, device=device)
                                 if cfg.expression_basis.enabled else None)
        centres = torch.as_tensor(init_centres(template, box, cfg.fill_points, cfg.seed))
        self.gaussians = nn.ParameterDict({
            "means": nn.Parameter(centres),
            "log_scales": nn.Parameter(torch.log(cfg.init_scale * knn_scale(centres))[:, None].repeat(1, 3)),
            "opacity_logits": nn.Parameter(torch.full((centres.shape[0],), math.log(cfg.init_opacity / (1 - cfg.init_opacity)))),
        })
        self.to(device)

    @classmethod
    def build(cls, cfg: GaussianConfig, meta: SubjectMeta, device: torch.device | str) -> "GaussianHead":
        return cls(cfg, meta, device=device)

    @property
    def n_gaussians(self) -> int:
        return int(self.gaussians["means"].shape[0])

    # ---- protocol: conditions --------------------------------------------------------------------------
    def conditions(self, audio_window: torch.Tensor, expr: torch.Tensor, frame_index: torch.Tensor | None = None
                   ) -> dict[str, torch.Tensor]:
        """Per-frame conditions: ``audio_window`` (B, W, D) audio-feature rows around each frame, ``expr``
        (B, E) in [0, 1] -> ``lip`` (B, A) smoothed lip feature, ``expr`` (B, E). ``frame_index`` unused (no
        per-frame appearance code)."""
        b, w, d = audio_window.shape
        lip = self.smoother(self.audio_encoder(audio_window.reshape(b * w, d)).view(b, w, -1))
        return {"lip": lip, "expr": expr}

    # ---- the Gaussians of one frame ------------------------------------------------------------------
    def _split(self, h: torch.Tensor) -> tuple[torch.Tensor, ...]:
        s = self.n_sh * 3
        return h[:, :3], h[:, 3:7], h[:, 7:10], h[:, 10], h[:, 11:11 + s].view(-1, self.n_sh, 3)

    def _per_gaussian(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """What does not depend on the frame: ``f_mu`` (Eq. 16-17), ``F_can(f_mu)`` (Eq. 18), the masked
        attention's weights, ``F_deform``'s first layer applied to ``f_mu`` and, with the expression basis,
        its per-coefficient deltas at the canonical centres ``expr_bases`` (N, E, channels). Rendering
        without gradients reuses them until a parameter changes (every in-place update bumps a tensor's
        version)."""
        key = (x.shape[0],) + tuple(id(p) for p in self.gaussians.values()) + tuple(p._version for p in self.parameters())
        cache = getattr(self, "_cache", None)
        if not torch.is_grad_enabled() and cache is not None and cache[0] == key:
            return cache[1]
        f_mu = self.encoder(x)
        w_lip, w_exp = self.conditioning.weights(f_mu, x)
        first = self.deform[0]
        feat = f_mu.shape[1]
        out = {"f_mu": f_mu, "can": self.canonical(f_mu), "w_lip": w_lip, "w_exp": w_exp,
               "deform_in": f_mu @ first.weight[:, :feat].T + first.bias}
        if self.expression_basis is not None:
            # A colour field read at the centres: its spatial slope must not pull the means to where a
            # coefficient's colour is (geometry is the rasterizer's to learn).
            out["expr_bases"] = self.expression_basis.bases(x.detach())
        self._cache = None if torch.is_grad_enabled() else (key, out)
        return out

    def frame_gaussians(self, cond: dict[str, torch.Tensor] | None, R_c2h: torch.Tensor, origin: torch.Tensor
                        ) -> dict[str, torch.Tensor]:
        """Canonical Gaussians (Eq. 18), deformed (Eq. 20) when in stage 2 and ``cond`` is given.

        Returns ``means`` (N, 3) head units, ``quats`` (N, 4) wxyz, ``scales`` (N, 3), ``opacities`` (N,),
        ``sh`` (N, K, 3), and the canonical ``can_scales``, ``can_quats``, ``can_opacities`` (detached, for
        the densification strategy). In stage 2 with the expression basis, its colour delta is added to
        ``sh[:, 0]`` unscaled: one unit is ``C0`` = 0.282 in colour, as one colour-logit unit is about 0.25 at
        mid grey in the NeRF, so the basis' learning rate means the same in both; while training with a
        ``penalty``, also ``expression_delta_sq`` (the mean squared colour delta).
        """
        g, cfg = self.gaussians, self.cfg
        x = g["means"]
        pg = self._per_gaussian(x)
        d_mu, q, log_s, logit, sh = self._split(pg["can"])  # Eq. 18
        mu = x + cfg.max_offset * self.diag * torch.tanh(d_mu)
        q = q + q.new_tensor([1.0, 0.0, 0.0, 0.0])
        log_s = log_s + g["log_scales"]
        logit = logit + g["opacity_logits"]
        can = {"can_scales": torch.exp(log_s).detach(), "can_quats": q.detach(),
               "can_opacities": torch.sigmoid(logit).detach()}
        extra = {}
        if cond is not None and int(self.stage) == STAGE_DEFORM:
            lip, expr = cond["lip"] * pg["w_lip"], cond["expr"] * pg["w_exp"]  # Conditioning.forward
            frame = [lip, expr]
            if cfg.pose_input:
                R = R_c2h.T
                frame.append(torch.cat([R.reshape(9), (-R @ origin) / self.diag]).expand(lip.shape[0], POSE_DIM))
            # F_deform([f_mu, lip, expr, pose]) with its first layer split: the f_mu part is per Gaussian.
            first = self.deform[0]
            feat = pg["f_mu"].shape[1]
            frame_in = torch.cat(frame, -1) @ first.weight[:, feat:].T
            h = self.deform[1:](pg["deform_in"] + frame_in)
            dd_mu, dq, dlog_s, dlogit, dsh = self._split(h)  # Eq. 19
            mu, q, log_s, logit, sh = mu + cfg.deform_offset * self.diag * dd_mu, q + dq, log_s + dlog_s, logit + dlogit, sh + dsh  # Eq. 20
            if self.expression_basis is not None:
                d_rgb, d_opacity = self.expression_basis.combine(pg["expr_bases"], cond["expr"])
                sh = torch.cat([(sh[:, 0] + d_rgb)[:, None], sh[:, 1:]], 1)
                if d_opacity is not None:
                    logit = logit + d_opacity
                if self.training and cfg.expression_basis.penalty > 0:
                    extra["expression_delta_sq"] = d_rgb.square().mean()
        return {"means": mu, "quats": q, "scales": torch.exp(log_s), "opacities": torch.sigmoid(logit), "sh": sh,
                **can, **extra}

    # ---- protocol: render ------------------------------------------------------------------------------
    def output_resolution(self, crop_size: int) -> int:
        """The crop size with ``render_at_crop``, else the training resolution."""
        return int(crop_size) if self.cfg.render_at_crop else int(self.meta.resolution)

    def render(self, camera: Camera, cond: dict[str, torch.Tensor] | None, background: torch.Tensor,
               pixels: torch.Tensor | None = None, train: bool = False) -> dict[str, Any]:
        """Render one frame at ``camera.K.size`` (see :meth:`Renderer.render`).

        ``camera`` (:class:`~headsync.renderers.common.cameras.Camera`) in head space; ``background`` (S, S, 3) in [0, 1], or (M, 3) with ``pixels`` (M, 2) integer (x, y):
        then only those pixels are returned. Returns ``rgb`` over the background, ``head`` premultiplied,
        ``opacity``, each (S, S, ...) or (M, ...), and ``meta`` (the rasterizer's, plus the canonical
        attributes the densification strategy reads). With ``train``, ``meta["means2d"]`` keeps its gradient.
        """
        size = camera.K.size
        dev = background.device
        gs = self.frame_gaussians(cond, camera.R_c2h, camera.origin)
        W = viewmat(camera.R_c2h, camera.origin)[None]
        Kmat = intrinsics_matrix(camera.K, dev)[None]
        head, alpha, meta = rasterization(gs["means"], gs["quats"], gs["scales"], gs["opacities"], gs["sh"], W, Kmat,
                                          size, size, sh_degree=self.cfg.sh_degree, tile_size=self.cfg.tile_size)
        if train and meta["means2d"].requires_grad:
            meta["means2d"].retain_grad()
        meta.update(scales=gs["can_scales"], quats=gs["can_quats"], opacities=gs["can_opacities"])
        head, alpha = head[0], alpha[0, ..., 0]
        if pixels is not None:
            head, alpha = head[pixels[:, 1], pixels[:, 0]], alpha[pixels[:, 1], pixels[:, 0]]
        rgb = head + (1.0 - alpha)[..., None] * background
        out = {"rgb": rgb, "head": head, "opacity": alpha, "meta": meta}
        if "expression_delta_sq" in gs:
            out["expression_delta_sq"] = gs["expression_delta_sq"]
        return out

    # ---- protocol: losses, parameters, state -----------------------------------------------------------
    def losses(self, out: dict[str, Any], target: torch.Tensor, mask: torch.Tensor, batch: Any = None
               ) -> dict[str, torch.Tensor]:
        """Weighted terms of Eq. 22 (stage 1) / Eq. 24 (stage 2) for whole images (S, S, 3) in [0, 1] (the
        perceptual term needs an image; pixel sets get L1 only), and in stage 2 ``lips_weight`` x the L1
        over the region around the lips, ``batch.lips`` (:class:`~headsync.training.samplers.Batch`:
        half-open pixel bounds at the image's resolution, None without lips), and the expression basis'
        ``penalty`` x its mean squared colour delta when set. ``mask`` is the trainer's: its silhouette term
        is added there. Sum them for the loss."""
        cfg = self.cfg
        if not hasattr(self, "_perceptual"):
            self.perceptual_name, self._perceptual = perceptual_loss()
        rgb = out["rgb"]
        deform = int(self.stage) == STAGE_DEFORM
        lp_w = cfg.lpips_weight_deform if deform else cfg.lpips_weight
        terms = {"l1": cfg.l1_weight * (rgb - target).abs().mean()}
        if lp_w > 0 and rgb.dim() == 3:
            terms["lpips"] = lp_w * self._perceptual(rgb.permute(2, 0, 1)[None], target.permute(2, 0, 1)[None])
        box = getattr(batch, "lips", None)
        if deform and cfg.lips_weight > 0 and rgb.dim() == 3 and box is not None:
            x0, y0, x1, y1 = box
            terms["lips"] = cfg.lips_weight * (rgb[y0:y1, x0:x1] - target[y0:y1, x0:x1]).abs().mean()
        if "expression_delta_sq" in out:
            terms["expression_basis"] = cfg.expression_basis.penalty * out["expression_delta_sq"]
        return terms

    def param_groups(self, train_cfg: Any = None) -> list[dict[str, Any]]:
        """Optimizer groups, one per per-Gaussian tensor (densification re-indexes them) plus the tri-plane
        tables and the networks, at the config's ``lr_*`` rates, no weight decay (3DGS uses plain Adam), and
        the expression basis' own group (:meth:`ExpressionBasis.param_group`) when it is on."""
        cfg = self.cfg
        groups = [{"name": k, "params": [self.gaussians[k]], "lr": getattr(cfg, f"lr_{k}"), "weight_decay": 0.0}
                  for k in GAUSSIAN_PARAMS]
        hash_params = list(self.encoder.grid.parameters())
        basis = [] if self.expression_basis is None else list(self.expression_basis.parameters())
        ids = {id(p) for p in hash_params + basis} | {id(p) for p in self.gaussians.parameters()}
        groups.append({"name": "hash", "params": hash_params, "lr": cfg.lr_hash, "weight_decay": 0.0})
        groups.append({"name": "net", "params": [p for p in self.parameters() if id(p) not in ids],
                       "lr": cfg.lr_net, "weight_decay": 0.0})
        if self.expression_basis is not None:
            groups.append(self.expression_basis.param_group())
        return groups

    # ---- protocol: training hooks -------------------------------------------------------------------
    def sampling(self, stage: str) -> Sampling:
        """Whole frames in both stages: splatting draws an image at once, and Eq. 22/24's perceptual term
        needs one."""
        return Sampling.IMAGE

    def callbacks(self) -> list[TrainingCallback]:
        return [StageSwitch(), Densify(DensifyStrategy(self.cfg.densify, scene_scale=self.diag / 2))]

    def start_training(self, train_audio: np.ndarray) -> None:
        self.audio_encoder.set_statistics(train_audio)

    def set_stage(self, stage: int) -> None:
        """1: canonical (static) Gaussians, 2: deformable (Sec. III-D's two stages)."""
        if stage not in (STAGE_CANONICAL, STAGE_DEFORM):
            raise ValueError(f"stage must be 1 or 2, got {stage}")
        self.stage.fill_(stage)

    def load_renderer_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load a state dict whose Gaussian count may differ from this model's (densified checkpoints):
        the per-Gaussian tensors are re-allocated to the saved sizes first. Build the optimizer after."""
        for k in GAUSSIAN_PARAMS:
            saved = state[f"gaussians.{k}"]
            if saved.shape != self.gaussians[k].shape:
                self.gaussians[k] = nn.Parameter(torch.empty_like(saved, device=self.gaussians[k].device))
        self.load_state_dict(state)


class StageSwitch(TrainingCallback):
    """Stage 1 (canonical Gaussians) over the schedule's coarse stage, stage 2 (deformation) over its fine
    stage; set before every step, so a resumed run is in the right stage too."""

    def before_step(self, it: int, ctx) -> None:
        ctx.renderer.set_stage(STAGE_CANONICAL if ctx.cfg.stage(it) == "coarse" else STAGE_DEFORM)


class Densify(TrainingCallback):
    """The densification strategy after each backward pass (before the optimiser steps, which then holds
    the resized tensors and their re-indexed moments). Its gradient statistics restart on resume."""

    def __init__(self, strategy: DensifyStrategy):
        self.strategy = strategy
        self.state = strategy.initialize_state()
        self.totals = {"cloned": 0, "split": 0, "pruned": 0}  # since this process started the run

    def after_backward(self, it: int, ctx, out: dict[str, Any]) -> dict[str, float]:
        r = self.strategy.step_post_backward(ctx.renderer.gaussians, [ctx.optimizer], self.state, it, out["meta"])
        for k in self.totals:
            self.totals[k] += r[k]
        return {"gaussians": float(ctx.renderer.n_gaussians), **{k: float(v) for k, v in self.totals.items()}}
