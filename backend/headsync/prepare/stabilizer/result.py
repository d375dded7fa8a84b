"""Step 4 on arrays (:func:`stabilize`) and its result: the contents of ``pose.npz`` and the manifest info."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .bundle import BundleResult, bundle_adjust
from .config import Config
from .keypoints import Tracks
from .pose_fit import RawFit
from .rotations import pose_jitter
from .weights import fit_weights, semantic_weights


@dataclass
class PoseResult:
    """Everything the stabilizer found for one clip; ``size`` is the crop side S."""

    raw: RawFit
    bundle: BundleResult
    tracks: Tracks
    size: int

    def arrays(self) -> dict[str, np.ndarray]:
        """The contents of ``pose.npz`` (layout in docs/stabilizer.md)."""
        b, r, t, size = self.bundle, self.raw, self.tracks, self.size
        return {
            "R": b.R.astype(np.float32), "T": b.T.astype(np.float32),
            "focal": np.float32(r.focal), "cx": np.float32(size / 2), "cy": np.float32(size / 2),
            "image_size": np.int32(size),
            "R_raw": r.R.astype(np.float32), "T_raw": r.T.astype(np.float32),
            "focal_candidates": r.candidates.astype(np.float32), "focal_errors": r.errors.astype(np.float32),
            "template": r.template.points.astype(np.float32),
            "template_regions": r.template.regions.astype(np.int8),
            "landmarks3d": b.landmarks3d.astype(np.float32),
            "track_points": t.uv.astype(np.float32),
            "track_index": np.stack([t.frame, t.track], -1).astype(np.int32),
            "track_residuals": b.track_residuals.astype(np.float32),
            "track_weights": b.track_weight.astype(np.float32),
            "points3d": b.points3d.astype(np.float32),
            "landmark_residuals": b.landmark_residuals.astype(np.float32),
            "valid": r.valid,
        }

    def info(self) -> dict:
        """Small JSON-able summary for the manifest."""
        jr, jt = pose_jitter(self.raw.R, self.raw.T)
        sr, st = pose_jitter(self.bundle.R, self.bundle.T)
        live = self.bundle.track_weight[self.tracks.track] > 0
        return {
            "focal": round(self.raw.focal, 2),
            "focal_source": self.raw.focal_source,
            "template": self.raw.template.source,
            "reproj_px": round(float(np.nanmean(self.bundle.landmark_residuals)), 3),
            "track_reproj_px": round(float(np.median(self.bundle.track_residuals[live])), 3) if live.any() else None,
            "jitter_raw": [round(jr, 4), round(jt, 4)],
            "jitter": [round(sr, 4), round(st, 4)],
            "tracks": int((self.bundle.track_weight > 0).sum()),
            "interpolated_frames": int((~self.raw.valid).sum()),
        }


def stabilize(landmarks: np.ndarray, raw: RawFit, tracks: Tracks, size: int, cfg: Config,
              progress: Callable[[int], None] | None = None) -> PoseResult:
    """Step 4 on arrays: bundle adjustment of the raw fit with the keypoint tracks (may be empty).
    landmarks (N, 478, 3) crop pixels; ``progress`` is called once per Adam iteration."""
    lm_w = fit_weights(raw.template, cfg, cfg.ba_landmarks)
    tr_w = semantic_weights(tracks.region, cfg)
    ba = bundle_adjust(landmarks, lm_w, raw.template.points, tracks, tr_w, raw.R, raw.T, raw.focal, size, cfg,
                       progress)
    return PoseResult(raw, ba, tracks, size)
