"""Rotation helpers: axis-angle vectors and the jitter of a pose sequence (Euler angles: :mod:`headsync.core.euler`).

Conventions: ``X_cam = R @ X_head + T`` in the OpenCV camera (x right, y down, z forward).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from ...core.euler import matrix_to_euler_xyz


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
    e = np.unwrap(matrix_to_euler_xyz(R), axis=0)
    d2e = np.diff(e, 2, axis=0)
    d2t = np.diff(np.asarray(T, np.float64), 2, axis=0)
    return float(np.degrees(np.abs(d2e)).mean()), float(np.abs(d2t).mean())
