"""Pinhole cameras from the Head-Sync Stabilizer's head pose.

``pose.npz`` gives ``X_cam = R @ X_head + T`` (OpenCV camera: x right, y down, z forward) and intrinsics
``focal, cx, cy`` in pixels of the square crop of side ``image_size``. A static camera watching a moving
head is the same as a moving camera around a static head, so rays are generated in *head* coordinates:
the camera centre is ``-R^T T`` and a camera direction ``d`` becomes ``R^T d``.

Pixel convention: continuous coordinates with pixel ``i`` covering ``[i, i + 1)`` (landmark = normalised
position x image size), so the centre of pixel ``i`` at render resolution ``r`` is ``(i + 0.5) * S / r``
crop pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics in pixels of a square image of side ``size``."""

    focal: float
    cx: float
    cy: float
    size: int

    def scaled(self, size: int) -> "Intrinsics":
        """The same camera at another image side (render resolution vs crop resolution)."""
        s = size / self.size
        return Intrinsics(self.focal * s, self.cx * s, self.cy * s, size)

    def matrix(self) -> np.ndarray:
        """K (3, 3), pixels (the pinhole matrix of rasterizers)."""
        return np.array([[self.focal, 0, self.cx], [0, self.focal, self.cy], [0, 0, 1]], np.float64)



@dataclass(frozen=True)
class Camera:
    """One frame's view of the head: intrinsics at the render resolution, and the camera-to-head rotation
    ``R_c2h`` (3, 3) and camera centre ``origin`` (3,) in head units (:func:`camera_to_head`)."""

    K: Intrinsics
    R_c2h: torch.Tensor
    origin: torch.Tensor

    def rays(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Head-space rays (origins (M, 3), unit directions (M, 3)) through ``pixels`` (M, 2)."""
        return rays(self.K, self.R_c2h, self.origin, pixels)


def camera_to_head(R: np.ndarray, T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Invert the head pose: returns ``(R_c2h (…, 3, 3), o (…, 3))`` with ``X_head = R_c2h @ X_cam + o``.

    ``o`` is the camera centre in head coordinates.
    """
    Rt = np.swapaxes(R, -1, -2)
    o = -(Rt @ T[..., None])[..., 0]
    return Rt, o


def pixel_grid(size: int) -> torch.Tensor:
    """Integer pixel coordinates (size * size, 2) as (x, y), row-major (y outer)."""
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], -1)


def rays(K: Intrinsics, R_c2h: torch.Tensor, origin: torch.Tensor, pixels: torch.Tensor
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays through ``pixels`` (M, 2) (x, y, integer or float, at resolution ``K.size``) in head space.

    ``R_c2h`` (3, 3) and ``origin`` (3,) from :func:`camera_to_head`. Returns origins (M, 3) and unit
    directions (M, 3), in head units.
    """
    p = pixels.to(R_c2h.dtype) + 0.5
    d_cam = torch.stack([(p[:, 0] - K.cx) / K.focal, (p[:, 1] - K.cy) / K.focal, torch.ones_like(p[:, 0])], -1)
    d = d_cam @ R_c2h.T
    d = d / d.norm(dim=-1, keepdim=True)
    return origin.expand_as(d), d


def project(K: Intrinsics, R: np.ndarray, T: np.ndarray, X_head: np.ndarray) -> np.ndarray:
    """Project head-space points (P, 3) with one pose -> pixel coordinates (P, 2) at ``K.size``."""
    Xc = X_head @ R.T + T
    return np.stack([K.focal * Xc[:, 0] / Xc[:, 2] + K.cx, K.focal * Xc[:, 1] / Xc[:, 2] + K.cy], -1)
