"""The Head-Sync Stabilizer (SyncTalk 3.3, SyncTalk++ III-C): stage ``pose``, writing ``pose.npz``.

Pipeline (all frames at once, vectorised; see docs/stabilizer.md for the choices), one module a step:

1. Focal search (SyncTalk Eq. 5) with MediaPipe's canonical face mesh: :mod:`.pose_fit`.
2. Raw poses (Eq. 6) on semantically weighted landmarks: :mod:`.pose_fit`, weights in :mod:`.weights`.
3. Head points tracker, Laplacian-of-flow keypoints (Eq. 10) with LK tracks: :mod:`.keypoints`.
4. Two-stage bundle adjustment (Eqs. 7-8) with Adam: :mod:`.bundle`; on arrays with the ``pose.npz``
   contents in :mod:`.result`.

Settings in :mod:`.config`, rotation helpers in :mod:`.rotations`; this module is the stage (I/O) and
re-exports the public API (``from headsync import stabilizer; stabilizer.fit_raw_poses(...)``).

Conventions: ``X_cam = R @ X_head + T`` in the OpenCV camera (x right, y down, z forward), head
coordinates as in :mod:`headsync.prepare.face_template` (cm). Pixel coordinates are continuous crop pixels with
pixel ``i`` covering ``[i, i + 1)`` (MediaPipe's normalised landmark x crop side), so ``cx = cy = S / 2``.
Pixel-valued settings are given for a 512-px crop and scale with the crop side.
"""

from __future__ import annotations

import time
from typing import Iterator

import cv2
import numpy as np

from .. import face_template as ft
from ...core.errors import UserError
from ...core.progress import Reporter
from ...core.atomic import save_npz_atomic
from ...subject.folder import Subject
from .bundle import BundleResult, bundle_adjust, init_track_points, rodrigues
from .config import REF_SIZE, Config
from .keypoints import (Tracks, face_seed_mask, flow_laplacian, nearest_regions, select_laplacian_keypoints,
                        texture_mask, track_keypoints)
from .keypoints import _lookahead  # noqa: F401  (the tests drive it directly)
from .pose_fit import (RawFit, choose_focal, fill_invalid_poses, fit_poses, fit_raw_poses, initial_poses, project,
                       refine_poses, search_focal, weighted_mse)
from .result import PoseResult, stabilize
from ...core.euler import euler_xyz_to_matrix, matrix_to_euler_xyz
from .rotations import matrix_to_rotvec, pose_jitter, rotvec_to_matrix
from .weights import fit_weights, landmark_inputs, region_weights, semantic_weights, spread_subset

__all__ = [
    "NAME", "VERSION", "REQUIRES", "REF_SIZE", "Config", "run", "flow_scale", "iter_gray_frames",
    "matrix_to_euler_xyz", "euler_xyz_to_matrix", "rotvec_to_matrix", "matrix_to_rotvec", "pose_jitter",
    "region_weights", "semantic_weights", "spread_subset", "fit_weights", "landmark_inputs",
    "project", "initial_poses", "refine_poses", "weighted_mse", "fit_poses", "choose_focal", "search_focal",
    "fill_invalid_poses", "RawFit", "fit_raw_poses",
    "flow_laplacian", "select_laplacian_keypoints", "nearest_regions", "face_seed_mask", "texture_mask",
    "Tracks", "track_keypoints",
    "rodrigues", "BundleResult", "init_track_points", "bundle_adjust",
    "PoseResult", "stabilize",
]

NAME = "pose"
VERSION = 1
REQUIRES = ("landmarks",)


def flow_scale(size: int, flow_size: int) -> int:
    """JPEG decoding reduction (1, 2, 4 or 8): the largest that keeps the side >= ``flow_size``."""
    r = 1
    while r < 8 and size // (2 * r) >= flow_size:
        r *= 2
    return r


_REDUCED = {1: cv2.IMREAD_GRAYSCALE, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
            8: cv2.IMREAD_REDUCED_GRAYSCALE_8}


def iter_gray_frames(subject: Subject, n: int, reduction: int) -> Iterator[np.ndarray]:
    """Grayscale crops decoded at 1/``reduction`` size (the JPEG decoder scales in the DCT: fast)."""
    for i in range(n):
        img = cv2.imread(str(subject.frame_path(i)), _REDUCED[reduction])
        if img is None:
            raise UserError(f"frame {subject.frame_path(i)} is missing or unreadable",
                            "re-run `headsync prepare` (the landmarks stage writes the frames)")
        yield img


def run(subject: Subject, cfg: Config, reporter: Reporter) -> dict:
    """Stage ``pose``: read landmarks and frames, write ``pose.npz``; returns the manifest info."""
    t0 = time.perf_counter()
    landmarks = np.load(subject.path("landmarks.npy")).astype(np.float64)
    n = len(landmarks)
    size = int(subject.load().get("crop", {}).get("size") or 0)
    if not size:
        first = cv2.imread(str(subject.frame_path(0)), cv2.IMREAD_GRAYSCALE)
        if first is None:
            raise UserError(f"{subject.root} has no frames", "re-run `headsync prepare`")
        size = first.shape[0]
    reporter.start(NAME, n + cfg.point_iterations + cfg.joint_iterations)
    raw = fit_raw_poses(landmarks, ft.load_canonical(cfg.use_canonical), size, cfg)
    reduction = flow_scale(size, cfg.flow_size)
    tracks = track_keypoints(iter_gray_frames(subject, n, reduction), size / -(-size // reduction), landmarks,
                             raw.template.regions, cfg, reporter.advance)
    result = stabilize(landmarks, raw, tracks, size, cfg, reporter.advance)
    save_npz_atomic(subject.path("pose.npz"), **result.arrays())
    info = result.info()
    info["fps"] = round(n / max(time.perf_counter() - t0, 1e-9), 1)
    if info["interpolated_frames"]:
        reporter.message(f"pose: {info['interpolated_frames']} frames without landmarks got interpolated poses")
    if raw.focal_source == "search" and raw.focal in (raw.candidates[0], raw.candidates[-1]):
        reporter.message(f"pose: the focal search ended at the edge of its range ({raw.focal:.0f} px)",
                         level="warning")
    return info
