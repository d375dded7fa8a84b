"""A second, deliberately trivial renderer that lives in the test suite: ``colour``.

The head is a learned soft silhouette (a small grid of opacity logits, bilinearly upsampled to the image)
filled with one colour per frame that a small MLP computes from the frame's conditions (mean audio row of
the window, the expression coefficients, a per-frame code). It implements the renderer protocol with
whole-image sampling and one callback, so the trainer, render, eval, CLI and service are exercised
through the protocol alone. Visible to the service's workers through ``HEADSYNC_PLUGINS=colour_renderer``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from headsync.renderers.base import Renderer, Sampling, SubjectMeta, TrainingCallback
from headsync.renderers.registry import register_renderer


@dataclass(frozen=True)
class ColourConfig:
    """The ``[renderer.colour]`` table."""

    grid: int = 8  # side of the silhouette's logit grid
    hidden: int = 16
    lr: float = 0.05
    smoothness_weight: float = 0.01  # total variation of the silhouette logits


class CountSteps(TrainingCallback):
    """Counts the steps it saw (a callback whose effect the test can read)."""

    def __init__(self):
        self.steps = 0

    def after_step(self, it, ctx):
        self.steps += 1
        return {"callback_steps": float(self.steps)}


@register_renderer("colour")
class ColourHead(Renderer):
    Config = ColourConfig
    audio_window = 3

    def __init__(self, cfg: ColourConfig, meta: SubjectMeta):
        super().__init__(cfg, meta)
        e = len(meta.coefficient_names)
        self.logits = nn.Parameter(torch.zeros(1, 1, cfg.grid, cfg.grid))
        self.codes = nn.Embedding(meta.n_frames, 2)
        nn.init.zeros_(self.codes.weight)
        self.mlp = nn.Sequential(nn.Linear(meta.audio_dim + e + 2, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, 3))
        self.counter = CountSteps()

    def conditions(self, audio_window, expr, frame_index):
        code = (self.codes.weight.mean(0, keepdim=True).expand(expr.shape[0], -1) if frame_index is None
                else self.codes(frame_index))
        return {"colour": torch.sigmoid(self.mlp(torch.cat([audio_window.mean(1), expr, code], -1)))}

    def render(self, camera, cond, background, pixels=None, train=False):
        size = camera.K.size
        alpha = torch.sigmoid(F.interpolate(self.logits, size=(size, size), mode="bilinear",
                                            align_corners=False))[0, 0]
        if pixels is not None:
            alpha = alpha[pixels[:, 1], pixels[:, 0]]
        head = alpha[..., None] * cond["colour"][0]
        return {"rgb": head + (1 - alpha[..., None]) * background, "head": head, "opacity": alpha}

    def param_groups(self, train_cfg):
        return [{"name": "all", "params": list(self.parameters()), "lr": self.cfg.lr, "weight_decay": 0.0}]

    def callbacks(self):
        return [self.counter]

    def losses(self, out, target, mask, batch):
        tv = (self.logits[..., 1:, :] - self.logits[..., :-1, :]).abs().mean()
        return {"smoothness": self.cfg.smoothness_weight * tv}

    def sampling(self, stage):
        return Sampling.IMAGE

    def start_training(self, train_audio: np.ndarray) -> None:
        self.audio_mean = float(train_audio.mean())  # exercised, not needed
