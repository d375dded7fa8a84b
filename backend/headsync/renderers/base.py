"""The renderer protocol: the one surface training, rendering, evaluation, the service and the CLI use.

A renderer is a :class:`Renderer` (a ``torch.nn.Module``) registered by name in
:mod:`headsync.renderers.registry`. It turns one frame's *conditions* (audio window, the seven expression
coefficients, which frame it is) and a *camera* into colour and opacity over a background, for a whole image
or for a set of pixels. What it needs to be built is its config (the preset table ``[renderer.KIND]``) and
the :class:`SubjectMeta` of the subject, which every checkpoint stores, so a checkpoint rebuilds its
renderer without the subject's data.

The trainer (:mod:`headsync.training.trainer`) knows nothing else about a renderer: parameter groups,
extra losses, what it trains on (ray sets or whole images / patches, :class:`Sampling`) and hooks run
around each optimiser step (:class:`TrainingCallback`: the NeRF's occupancy-grid refresh, a Gaussian
renderer's densify/prune) all come from the renderer.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from .common.cameras import Camera, Intrinsics

if TYPE_CHECKING:
    from ..training.trainer import StepContext


@dataclass(frozen=True)
class SubjectMeta:
    """What a renderer knows of its subject; saved in every checkpoint as a plain dict.

    ``template`` (P, 3) head-space face points (MediaPipe order, head units); ``audio_feature`` the kind of
    ``audio_features/KIND.npy`` and ``audio_dim`` its width D; ``coefficient_names`` the expression
    coefficients the conditions carry, in order; ``n_frames`` the subject's frames, ``train_frames`` /
    ``holdout_frames`` the split; ``crop_size`` the side of the subject's crops (px), ``resolution`` the side
    the renderer draws at (px), ``intrinsics`` the camera at ``resolution``; ``fps`` frames per second.
    """

    template: np.ndarray
    audio_feature: str
    audio_dim: int
    coefficient_names: tuple[str, ...]
    n_frames: int
    train_frames: tuple[int, ...]
    holdout_frames: tuple[int, ...]
    crop_size: int
    resolution: int
    intrinsics: Intrinsics
    fps: float

    @property
    def n_train(self) -> int:
        return len(self.train_frames)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["template"] = np.asarray(self.template, np.float32).tolist()
        d["intrinsics"] = dataclasses.asdict(self.intrinsics)
        for k in ("coefficient_names", "train_frames", "holdout_frames"):
            d[k] = list(d[k])
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "SubjectMeta":
        return SubjectMeta(
            template=np.asarray(d["template"], np.float32), audio_feature=str(d["audio_feature"]),
            audio_dim=int(d["audio_dim"]), coefficient_names=tuple(d["coefficient_names"]),
            n_frames=int(d["n_frames"]), train_frames=tuple(int(i) for i in d["train_frames"]),
            holdout_frames=tuple(int(i) for i in d["holdout_frames"]), crop_size=int(d["crop_size"]),
            resolution=int(d["resolution"]), intrinsics=Intrinsics(**d["intrinsics"]), fps=float(d["fps"]))


class Sampling(Enum):
    """What one training iteration renders of its frame (drawn by :mod:`headsync.training.samplers`)."""

    RAYS = "rays"  # a set of pixels, mostly on the head: no spatial structure, cheap per pixel
    PATCHES = "patches"  # square patches on the head and the lips: pixel + perceptual losses
    IMAGE = "image"  # the whole frame at the training resolution


class TrainingCallback:
    """Hooks the trainer calls around each optimiser step. ``ctx`` gives the iteration's renderer, the
    ``[train]`` settings (its schedule stage), the optimiser, its random generator (draw only from it, so
    a resumed run repeats the same sequence) and the conditions of any training frame.
    :meth:`after_backward` sees the render's output with its gradients, before the optimiser steps: where
    a renderer may change its parameters and the optimiser's state with them (Gaussians' densify/prune).
    :meth:`after_backward` and :meth:`after_step` return values to log (name -> float)."""

    def before_step(self, it: int, ctx: "StepContext") -> None:
        pass

    def after_backward(self, it: int, ctx: "StepContext", out: dict[str, Any]) -> dict[str, float]:
        return {}

    def after_step(self, it: int, ctx: "StepContext") -> dict[str, float]:
        return {}


class Renderer(nn.Module):
    """Base class of every renderer; subclasses set :attr:`kind` and :attr:`Config` and register with
    :func:`headsync.renderers.registry.register_renderer`.

    Shapes: ``B`` frames, ``W`` audio rows per window (:attr:`audio_window`), ``D`` audio-feature width,
    ``E`` expression coefficients, ``M`` pixels, ``S`` image side.
    """

    kind: ClassVar[str]
    Config: ClassVar[type]
    #: Audio-feature rows (frames) centred on a frame that :meth:`conditions` takes.
    audio_window: int = 1

    def __init__(self, cfg: Any, meta: SubjectMeta):
        super().__init__()
        self.cfg = cfg
        self.meta = meta

    @classmethod
    def build(cls, cfg: Any, meta: SubjectMeta, device: torch.device | str) -> "Renderer":
        """A fresh renderer for the subject ``meta`` describes, on ``device``."""
        return cls(cfg, meta).to(device)

    def conditions(self, audio_window: torch.Tensor, expr: torch.Tensor, frame_index: torch.Tensor | None
                   ) -> dict[str, torch.Tensor]:
        """Per-frame conditions from ``audio_window`` (B, W, D), ``expr`` (B, E) in [0, 1] and the subject
        frames they belong to, ``frame_index`` (B,) long, or None for frames of no subject frame (new
        audio): a renderer with per-frame state (appearance codes) uses a neutral one for those, and for
        frames it was not trained on."""
        raise NotImplementedError

    def render(self, camera: Camera, cond: dict[str, torch.Tensor], background: torch.Tensor,
               pixels: torch.Tensor | None = None, train: bool = False) -> dict[str, torch.Tensor]:
        """Render one frame. ``pixels`` (M, 2) integer (x, y) at ``camera.K.size`` with ``background``
        (M, 3), or None for the whole image with ``background`` (S, S, 3), colours in [0, 1].

        Returns ``rgb`` (M, 3) | (S, S, 3) over the background, ``head`` the premultiplied head colour
        alone, same shape, ``opacity`` (M,) | (S, S); plus anything the renderer's :meth:`losses` read, and
        optionally ``stats`` (name -> float) for the training log. ``train`` enables stochastic sampling.
        """
        raise NotImplementedError

    def output_resolution(self, crop_size: int) -> int:
        """Side (px) at which rendering and evaluation draw a frame of a subject whose crops are
        ``crop_size`` px: the training resolution (``meta.resolution``) unless a renderer can draw sharper."""
        return int(self.meta.resolution)

    def param_groups(self, train_cfg: Any) -> list[dict[str, Any]]:
        """Optimiser groups ``[{"name", "params", "lr", "weight_decay"}]`` covering every parameter."""
        raise NotImplementedError

    def callbacks(self) -> list[TrainingCallback]:
        """Hooks for the trainer (none by default)."""
        return []

    def losses(self, out: dict[str, torch.Tensor], target: torch.Tensor, mask: torch.Tensor,
               batch: Any) -> dict[str, torch.Tensor]:
        """Renderer-specific loss terms, already weighted (the trainer adds the pixel, silhouette and
        perceptual terms itself). ``target`` and ``mask`` are shaped as ``out["rgb"]`` / ``out["opacity"]``;
        ``batch`` is the iteration's :class:`~headsync.training.samplers.Batch` (its pixels, patches and the
        region around the lips)."""
        return {}

    def sampling(self, stage: str) -> Sampling:
        """What to train on in schedule stage ``stage`` (``"coarse"`` or ``"fine"``, see ``[train]``)."""
        return Sampling.IMAGE

    def start_training(self, train_audio: np.ndarray) -> None:
        """Called once before the first iteration of a new run with the training frames' audio-feature
        rows (N, D), e.g. to store their statistics; not called on resume (the state has them)."""

    def compile_hot_paths(self, enabled: bool = True) -> str:
        """``torch.compile`` the parts where most of a training step goes, when ``enabled``; returns what
        was done (:func:`headsync.core.compile.compile_forward`'s answer). Default: nothing, ``"none"``."""
        return "none"

    def load_renderer_state(self, state: dict[str, Any]) -> None:
        """Load ``state_dict()`` output. Renderers whose size changes in training (Gaussians' count)
        resize themselves here first; a mismatch raises ``RuntimeError``."""
        self.load_state_dict(state)
