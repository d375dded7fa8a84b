"""The neck follows an edited head pose (ER-NeRF Sec. 3.4's reading of the key points: they sit on the neck,
which joins the head to the shoulders).

A head pose edit (or a generated pose) differs from the source frame's pose; the shoulders do not take part
in a head turn, the top of the neck does. The torso field's N = 3 key points, projected with the source
frame's pose and with the output pose (the Adaptive Pose Encoding of both), give a map ``A`` of the
image plane (the least-squares similarity: translation, rotation, uniform scale). The torso layer is
warped by that map at and above the top of the neck, by nothing at the shoulder line, and by a linear
blend in between: pixel ``x`` at row ``y`` takes the layer at ``x - w(y) (A(x) - x)``. So the neck bends to
meet the moved head while the shoulders stay; with the source pose the warp is the identity.

Pure array code; images (S, S, C) float32, label maps (S, S) as in DESIGN.md, points (N, 2) pixels at S.
"""

from __future__ import annotations

import cv2
import numpy as np

from ...subject.labels import NECK, TORSO


def neck_span(labels: np.ndarray) -> tuple[int, int] | None:
    """Rows (top, shoulder) of the neck in a label map (S, S): its first row (under the chin) and the first
    row of torso within the neck's columns (the crop's last row when the torso is not below it). None
    without a neck label."""
    neck = labels == NECK
    rows = np.nonzero(neck.any(1))[0]
    if not rows.size:
        return None
    cols = np.nonzero(neck.any(0))[0]
    under = (labels[:, cols[0]:cols[-1] + 1] == TORSO).any(1)
    under[: rows[0]] = False
    torso_rows = np.nonzero(under)[0]
    shoulder = int(torso_rows[0]) if torso_rows.size else labels.shape[0] - 1
    return int(rows[0]), max(shoulder, int(rows[0]) + 1)


def follow_weight(side: int, top: int, shoulder: int) -> np.ndarray:
    """w(y) (side,): 1 at and above the neck's top row, 0 at and below the shoulder row, linear between."""
    y = np.arange(side, dtype=np.float32)
    return np.clip((shoulder - y) / float(shoulder - top), 0.0, 1.0)


def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The least-squares similarity (rotation, uniform scale, translation) taking points ``a`` (N, 2) to
    ``b`` (N, 2), as a (2, 3) matrix (Umeyama's closed form; the key points are often nearly collinear,
    which leaves a general affine map undetermined)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ca, cb = a.mean(0), b.mean(0)
    za, zb = (a - ca) @ [1, 1j], (b - cb) @ [1, 1j]  # points as complex numbers: b = k a + t
    den = float(np.vdot(za, za).real)
    k = complex(np.vdot(za, zb) / den) if den > 1e-12 else 1.0 + 0j
    R = np.array([[k.real, -k.imag], [k.imag, k.real]])
    return np.concatenate([R, (cb - R @ ca)[:, None]], 1)


def follow_maps(keys_source: np.ndarray, keys_out: np.ndarray, labels: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray] | None:
    """``cv2.remap`` maps (S, S) float32 (x, y) that bend the neck from the key points' source projection
    ``keys_source`` (N, 2) px to ``keys_out`` (N, 2) px; None when nothing moves or there is no neck."""
    span = neck_span(labels)
    if span is None or np.allclose(keys_source, keys_out, atol=1e-3):
        return None
    A = similarity(keys_source, keys_out)
    s = labels.shape[0]
    ys, xs = np.mgrid[:s, :s].astype(np.float32)
    dx = A[0, 0] * xs + A[0, 1] * ys + A[0, 2] - xs
    dy = A[1, 0] * xs + A[1, 1] * ys + A[1, 2] - ys
    w = follow_weight(s, *span)[:, None]
    return (xs - w * dx).astype(np.float32), (ys - w * dy).astype(np.float32)


def warp(image: np.ndarray, maps: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """``image`` (S, S[, C]) moved by :func:`follow_maps` (unchanged for None); edges replicated."""
    if maps is None:
        return image
    return cv2.remap(image, maps[0], maps[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
