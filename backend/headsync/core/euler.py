"""Euler angles as Blender's ``'XYZ'`` rotation mode applies them, one conversion for the whole backend
(the stabilizer's pose, curves.json's ``head_pose.rotation_euler_xyz``, evaluation).

``R = Rz(e[2]) @ Ry(e[1]) @ Rx(e[0])``: rotate about x (pitch), then y (yaw), then z (roll), fixed axes.
"""

from __future__ import annotations

import numpy as np


def euler_xyz_to_matrix(e: np.ndarray) -> np.ndarray:
    """Euler angles (..., 3) in radians -> rotation matrices (..., 3, 3)."""
    e = np.asarray(e, np.float64)
    c, s = np.cos(e), np.sin(e)
    one, zero = np.ones_like(c[..., 0]), np.zeros_like(c[..., 0])
    rx = np.stack([one, zero, zero, zero, c[..., 0], -s[..., 0], zero, s[..., 0], c[..., 0]], -1)
    ry = np.stack([c[..., 1], zero, s[..., 1], zero, one, zero, -s[..., 1], zero, c[..., 1]], -1)
    rz = np.stack([c[..., 2], -s[..., 2], zero, s[..., 2], c[..., 2], zero, zero, zero, one], -1)
    shape = e.shape[:-1] + (3, 3)
    return rz.reshape(shape) @ ry.reshape(shape) @ rx.reshape(shape)


def matrix_to_euler_xyz(R: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) -> Euler angles (..., 3), ``e[1]`` in [-pi/2, pi/2].

    Unique for |e[1]| < 90 degrees (head poses are far from that gimbal lock). The pitch comes from
    ``atan2(-R20, hypot(R00, R10))`` rather than ``arcsin(-R20)``: as accurate near +-90 degrees and
    tolerant of matrices a rounding error away from orthonormal.
    """
    R = np.asarray(R, np.float64)
    x = np.arctan2(R[..., 2, 1], R[..., 2, 2])
    y = np.arctan2(-R[..., 2, 0], np.hypot(R[..., 0, 0], R[..., 1, 0]))
    z = np.arctan2(R[..., 1, 0], R[..., 0, 0])
    return np.stack([x, y, z], -1)
