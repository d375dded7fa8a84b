"""Dynamic conditions of the head field: lip (audio) feature, expression, and where each may act.

* :class:`AudioEncoder` maps a per-frame audio feature row (``audio_features/KIND.npy``, e.g. 80 log-mel
  bands) to a small lip feature.
* :class:`AudioSmoother` is the temporal attention of AD-NeRF / ER-NeRF: the lip features of a window of
  neighbouring frames are convolved along time and scored, and a softmax over the window weights their
  sum, which removes frame-to-frame jitter of the audio feature.
* :class:`RegionAttention` (ER-NeRF Sec. 3.3) computes from a point's tri-plane feature a channel weight
  vector that reweights the condition (``q_out = v ⊙ q``), so static regions learn to ignore audio.
* :class:`FaceSplit` is SyncTalk's Facial-Aware Masked-Attention with SyncTalk++'s boundary: a soft mask
  along the head's vertical axis through the nose tip, so lip features act only below it and expression
  features only above it (``V_lip = V ⊙ M_lip``, ``V_exp = V ⊙ M_exp``, SyncTalk Eq. 4).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

#: MediaPipe face-mesh indices used to place the face split: nose tip, forehead top, chin.
NOSE_TIP, FOREHEAD, CHIN = 1, 10, 152


@dataclass(frozen=True)
class ConditioningConfig:
    """Sizes of the condition features and the face split's softness."""

    audio_dim: int = 32  # lip feature channels (ER-NeRF: 32)
    audio_hidden: int = 64
    smooth_window: int = 8  # frames in the temporal attention window (AD-NeRF / ER-NeRF: 8)
    attention_hidden: int = 64
    split_softness: float = 0.03  # width of the nose-tip boundary as a fraction of the face height
    use_face_split: bool = True


def mlp(in_dim: int, out_dim: int, hidden: int, layers: int) -> nn.Sequential:
    """``layers`` linear layers with ReLU between them (none after the last)."""
    dims = [in_dim] + [hidden] * (layers - 1) + [out_dim]
    mods: list[nn.Module] = []
    for i in range(layers):
        mods.append(nn.Linear(dims[i], dims[i + 1]))
        if i < layers - 1:
            mods.append(nn.ReLU(inplace=True))
    return nn.Sequential(*mods)


class AudioEncoder(nn.Module):
    """Per-frame audio feature (…, D) -> lip feature (…, A).

    ``mean``/``std`` (D,) standardise the input with the training clip's statistics (stored with the
    model, so a new audio file is normalised the same way).
    """

    def __init__(self, in_dim: int, cfg: ConditioningConfig):
        super().__init__()
        self.net = nn.Sequential(mlp(in_dim, cfg.audio_dim, cfg.audio_hidden, 2), nn.Tanh())
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("std", torch.ones(in_dim))

    def set_statistics(self, feats: np.ndarray) -> None:
        self.mean.copy_(torch.as_tensor(feats.mean(0), dtype=torch.float32))
        self.std.copy_(torch.as_tensor(feats.std(0) + 1e-5, dtype=torch.float32))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.net((feats - self.mean) / self.std)


class AudioSmoother(nn.Module):
    """Temporal attention over a window of lip features (B, W, A) -> smoothed (B, A).

    As AD-NeRF's AudioAttNet: 1D convolutions over time reduce the channels to one score per frame, a
    linear layer mixes the scores across the window, and a softmax turns them into weights.
    """

    def __init__(self, cfg: ConditioningConfig):
        super().__init__()
        a, w = cfg.audio_dim, cfg.smooth_window
        chans = [a, 16, 8, 4, 2, 1]
        layers: list[nn.Module] = []
        for i in range(len(chans) - 1):
            layers += [nn.Conv1d(chans[i], chans[i + 1], 3, padding=1), nn.LeakyReLU(0.02, inplace=True)]
        self.conv = nn.Sequential(*layers)
        self.score = nn.Linear(w, w)

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        scores = self.conv(window.transpose(1, 2)).squeeze(1)  # (B, W)
        weights = torch.softmax(self.score(scores), dim=-1)  # (B, W)
        return (weights.unsqueeze(-1) * window).sum(1)


def window_indices(frames: np.ndarray, n_frames: int, window: int) -> np.ndarray:
    """Indices (B, W) of the ``window`` frames centred on each of ``frames``, clamped to [0, n_frames)."""
    offsets = np.arange(window) - window // 2
    return np.clip(np.asarray(frames)[:, None] + offsets[None, :], 0, n_frames - 1)


class RegionAttention(nn.Module):
    """ER-NeRF's region attention: ``v = MLP(f_x)`` (two layers) reweighting a condition's channels.

    ``gate='none'`` leaves ``v`` unbounded (audio, ER-NeRF Eq. 9); ``'sigmoid'`` bounds it to (0, 1)
    (eye blink / expression, ER-NeRF Eq. 10).
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: int, gate: str = "none"):
        super().__init__()
        self.net = mlp(in_dim, out_dim, hidden, 2)
        self.gate = gate

    def forward(self, fx: torch.Tensor) -> torch.Tensor:
        v = self.net(fx)
        return torch.sigmoid(v) if self.gate == "sigmoid" else v


class FaceSplit(nn.Module):
    """Soft lower/upper face masks from the nose tip along the head's vertical axis (head coordinates).

    ``down`` is the unit vector from forehead to chin of the stabilizer's template, ``nose`` the nose-tip
    point; ``M_lip(x) = sigmoid(((x - nose) · down) / width)`` and ``M_exp = 1 - M_lip``, ``width`` being
    ``softness`` x the forehead-chin distance. Deriving the axis from landmarks rather than assuming a sign
    keeps it right whatever the template's axis convention.
    """

    def __init__(self, template: np.ndarray, softness: float):
        super().__init__()
        template = np.asarray(template, np.float64)
        down = template[CHIN] - template[FOREHEAD]
        height = float(np.linalg.norm(down))
        self.register_buffer("nose", torch.as_tensor(template[NOSE_TIP], dtype=torch.float32))
        self.register_buffer("down", torch.as_tensor(down / height, dtype=torch.float32))
        self.width = max(softness * height, 1e-6)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Head points (K, 3) -> (M_lip (K, 1), M_exp (K, 1))."""
        lip = torch.sigmoid(((x - self.nose) @ self.down) / self.width).unsqueeze(-1)
        return lip, 1.0 - lip


class Conditioning(nn.Module):
    """Region- and face-aware conditions for each sampled point.

    ``forward(fx (K, C), x (K, 3), lip (K|1, A), expr (K|1, E))`` ->
    ``(lip_att (K, A), expr_att (K, E))`` with ``lip_att = lip ⊙ v_a(f_x) ⊙ M_lip(x)`` and
    ``expr_att = expr ⊙ sigmoid(v_e(f_x)) ⊙ M_exp(x)``.
    """

    def __init__(self, feat_dim: int, expr_dim: int, template: np.ndarray, cfg: ConditioningConfig):
        super().__init__()
        self.audio_att = RegionAttention(feat_dim, cfg.audio_dim, cfg.attention_hidden, gate="none")
        self.expr_att = RegionAttention(feat_dim, expr_dim, cfg.attention_hidden, gate="sigmoid")
        self.split = FaceSplit(template, cfg.split_softness) if cfg.use_face_split else None

    def weights(self, fx: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The points' channel weights ``(v_a ⊙ M_lip (K, A), sigmoid(v_e) ⊙ M_exp (K, E))``: they depend on
        the points only, so a caller whose points do not move between frames may keep them."""
        v_a = self.audio_att(fx)
        v_e = self.expr_att(fx)
        if self.split is not None:
            m_lip, m_exp = self.split(x)
            v_a = v_a * m_lip
            v_e = v_e * m_exp
        return v_a, v_e

    def forward(self, fx: torch.Tensor, x: torch.Tensor, lip: torch.Tensor, expr: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        v_a, v_e = self.weights(fx, x)
        return lip * v_a, expr * v_e
