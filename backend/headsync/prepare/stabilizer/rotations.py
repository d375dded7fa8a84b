"""Rotation helpers: Blender ``'XYZ'`` Euler angles, axis-angle vectors, and the jitter of a pose sequence.

Conventions: ``X_cam = R @ X_head + T`` in the OpenCV camera (x right, y down, z forward).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation


def rotation_to_euler_xyz(R: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) -> Euler angles (..., 3) in radians, Blender's ``'XYZ'`` order.

    ``R = Rz(e[2]) @ Ry(e[1]) @ Rx(e[0])``: rotate about x (pitch), then y (yaw), then z (roll), fixed axes.
    Unique for |e[1]| < 90 degrees (head poses are far from that gimbal lock).
    """
    R = np.asarray(R, np.float64)
    x = np.arctan2(R[..., 2, 1], R[..., 2, 2])
    y = np.arctan2(-R[..., 2, 0], np.hypot(R[..., 0, 0], R[..., 1, 0]))
    z = np.arctan2(R[..., 1, 0], R[..., 0, 0])
    return np.stack([x, y, z], -1)


def euler_xyz_to_rotation(e: np.ndarray) -> np.ndarray:
    """Euler angles (..., 3) in radians (Blender ``'XYZ'``) -> rotation matrices (..., 3, 3)."""
    e = np.asarray(e, np.float64)
    c, s = np.cos(e), np.sin(e)
    one, zero = np.ones_like(c[..., 0]), np.zeros_like(c[..., 0])
    rx = np.stack([one, zero, zero, zero, c[..., 0], -s[..., 0], zero, s[..., 0], c[..., 0]], -1)
    ry = np.stack([c[..., 1], zero, s[..., 1], zero, one, zero, -s[..., 1], zero, c[..., 1]], -1)
    rz = np.stack([c[..., 2], -s[..., 2], zero, s[..., 2], c[..., 2], zero, zero, zero, one], -1)
    shape = e.shape[:-1] + (3, 3)
    return rz.reshape(shape) @ ry.reshape(shape) @ rx.reshape(shape)


def rotvec_to_matrix(w: np.ndarray) -> np.ndarray:
    """Axis-angle vectors (..., 3), radians -> rotation matrices (..., 3, 3)."""
    w = np.asarray(w, np.float64)
    return Rotation.from_rotvec(w.reshape(-1, 3)).as_matrix().reshape(w.shape[:-1] + (3, 3))


def matrix_to_rotvec(R: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) -> axis-angle vectors (..., 3), radians."""
    R = np.asarray(R, np.float64)
    return Rotation.from_matrix(R.reshape(-1, 3, 3)).as_rotvec().reshape(R.shape[:-2] + (3,))


def pose_jitter(R: np.ndarray, T: np.ndarray) -> tuple[float, float]:
    """Mean absolute second difference of a pose sequence: (rotation, degrees; translation, units of T).

    R (N, 3, 3), T (N, 3). Rotation uses the XYZ Euler angles (unwrapped), averaged over the three angles
    and the frames; a steady pose or a constant-velocity motion scores 0, frame-to-frame shake scores high.
    """
    if len(R) < 3:
        return 0.0, 0.0
    e = np.unwrap(rotation_to_euler_xyz(R), axis=0)
    d2e = np.diff(e, 2, axis=0)
    d2t = np.diff(np.asarray(T, np.float64), 2, axis=0)
    return float(np.degrees(np.abs(d2e)).mean()), float(np.abs(d2t).mean())
