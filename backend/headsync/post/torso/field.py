"""Torso field with Adaptive Pose Encoding (ER-NeRF Sec. 3.4).

N = 3 trainable key points live in head space. Each frame's head pose ``X_cam = R X_head + T`` (the
inverse of ER-NeRF's camera-to-world ``P``, so ``P^-1 X_keys``) carries them into the camera, where they
are projected to the image plane; their normalised 2D coordinates (N, 2) in [-1, 1] are the encoding. A 2D
deformable neural field (RAD-NeRF's torso field, which ER-NeRF uses) maps an image position ``x`` and the
encoding to an offset ``dx``, reads dense multi-resolution 2D feature grids at ``x + dx`` and decodes
colour and alpha of the torso (neck and shoulders) there. A pose edit moves the key points, so the torso
moves with the head instead of staying where the source frame had it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ...renderers.common.cameras import Intrinsics
from . import weights

#: ER-NeRF's number of key points.
N_KEYS = 3
PE_FREQUENCIES = 4


def initial_keypoints(template: np.ndarray, R: np.ndarray, T: np.ndarray) -> np.ndarray:
    """Key points (3, 3) in head space to start from: below the chin (centre, left, right), half a face
    width apart, at the face's mean depth, found through one frame's pose (R (3, 3), T (3,))."""
    cam = template @ R.T + T
    lo, hi = cam.min(0), cam.max(0)
    w, h = hi[0] - lo[0], hi[1] - lo[1]
    y, z, xc = hi[1] + 0.3 * h, cam[:, 2].mean(), (lo[0] + hi[0]) / 2  # OpenCV camera: y down
    keys_cam = np.array([[xc, y, z], [xc - 0.5 * w, y, z], [xc + 0.5 * w, y, z]])
    return ((keys_cam - T) @ R).astype(np.float32)  # R^T (X - T), row-wise


def project_keypoints(keys: torch.Tensor, R: torch.Tensor, T: torch.Tensor, K: Intrinsics) -> torch.Tensor:
    """Adaptive Pose Encoding: key points (N, 3) head space, poses R (B, 3, 3), T (B, 3) -> (B, N, 2)
    image coordinates normalised to [-1, 1] over the square image of ``K`` (x right, y down)."""
    cam = torch.einsum("bij,nj->bni", R, keys) + T[:, None, :]
    z = cam[..., 2:3].clamp_min(1e-3)
    uv = K.focal * cam[..., :2] / z + torch.tensor([K.cx, K.cy], dtype=cam.dtype, device=cam.device)
    return uv / K.size * 2 - 1


def positional(x: torch.Tensor, n: int = PE_FREQUENCIES) -> torch.Tensor:
    """(M, 2) -> (M, 2 + 4 n) sin/cos encoding."""
    f = (2.0 ** torch.arange(n, dtype=x.dtype, device=x.device)) * torch.pi
    xf = x[..., None] * f
    return torch.cat([x, torch.sin(xf).flatten(-2), torch.cos(xf).flatten(-2)], -1)


class TorsoField(nn.Module):
    """The 2D deformable torso field conditioned on the projected key points."""

    def __init__(self, keys: np.ndarray, hidden: int = 64, levels: int = 4, base_resolution: int = 16,
                 features: int = 4):
        super().__init__()
        self.hparams = {"hidden": hidden, "levels": levels, "base_resolution": base_resolution, "features": features}
        self.keys = nn.Parameter(torch.as_tensor(keys, dtype=torch.float32).reshape(N_KEYS, 3))
        self.grids = nn.ParameterList([nn.Parameter(1e-2 * torch.randn(1, features, base_resolution * 2 ** l,
                                                                        base_resolution * 2 ** l))
                                       for l in range(levels)])
        d_in = 2 + 4 * PE_FREQUENCIES + 2 * N_KEYS
        self.deform = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                    nn.Linear(hidden, 2))
        nn.init.zeros_(self.deform[-1].weight)
        nn.init.zeros_(self.deform[-1].bias)
        self.decode = nn.Sequential(nn.Linear(levels * features + d_in, hidden), nn.ReLU(),
                                    nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 4))

    def encode(self, R: torch.Tensor, T: torch.Tensor, K: Intrinsics) -> torch.Tensor:
        """The pose encoding (B, 2 N) of poses R (B, 3, 3), T (B, 3)."""
        return project_keypoints(self.keys, R, T, K).flatten(1)

    def forward(self, x: torch.Tensor, enc: torch.Tensor) -> dict[str, torch.Tensor]:
        """Positions ``x`` (B, M, 2) in [-1, 1] (x right, y down) and encodings ``enc`` (B, 2 N) ->
        ``rgb`` (B, M, 3), ``alpha`` (B, M), ``dx`` (B, M, 2)."""
        B, M, _ = x.shape
        h = torch.cat([positional(x.reshape(-1, 2)), enc[:, None, :].expand(B, M, -1).reshape(B * M, -1)], -1)
        dx = self.deform(h).reshape(B, M, 2)
        xd = (x + dx).clamp(-1, 1)
        feats = [F.grid_sample(g.expand(B, -1, -1, -1), xd[:, :, None, :], mode="bilinear", align_corners=False)
                 [..., 0].permute(0, 2, 1) for g in self.grids]
        out = self.decode(torch.cat(feats + [h.reshape(B, M, -1)], -1))
        return {"rgb": torch.sigmoid(out[..., 1:]), "alpha": torch.sigmoid(out[..., 0]), "dx": dx}

    def render(self, R: torch.Tensor, T: torch.Tensor, K: Intrinsics, side: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The torso of one pose (R (3, 3), T (3,)) on a ``side`` x ``side`` grid of pixel centres:
        ``rgb`` (side, side, 3) and ``alpha`` (side, side)."""
        x = pixel_positions(side, R.device)[None]
        out = self(x, self.encode(R[None], T[None], K))
        return out["rgb"][0].reshape(side, side, 3), out["alpha"][0].reshape(side, side)


def pixel_positions(side: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Pixel centres of a ``side`` grid as (side * side, 2) positions in [-1, 1], row-major, (x, y)."""
    c = (torch.arange(side, dtype=torch.float32, device=device) + 0.5) / side * 2 - 1
    ys, xs = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], -1)


def record(field: TorsoField, side: int, info: dict) -> dict:
    """What is saved: shape, render side, weights and the training record (see :func:`load`)."""
    return {"hparams": field.hparams, "side": side, "state": field.state_dict(), "info": info}


def load(path: Path, device: torch.device | str = "cpu") -> TorsoField:
    """Load a field saved from :func:`record`; a clear error when it is missing or damaged."""
    return weights.load(path, "field", lambda d: TorsoField(np.zeros((N_KEYS, 3), np.float32), **d["hparams"]), device)
