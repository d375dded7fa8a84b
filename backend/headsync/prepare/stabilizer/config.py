"""Settings of the Head-Sync Stabilizer (the ``[pose]`` preset table).

Pixel-valued settings are given for a 512-px crop (:data:`REF_SIZE`) and scale with the crop side.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Crop side the pixel-valued settings refer to.
REF_SIZE = 512.0


@dataclass(frozen=True)
class Config:
    """Settings of the ``[pose]`` preset table. Pixel values are at a 512-px crop (scaled with S)."""

    # template (face_template)
    use_canonical: bool = True        # MediaPipe's canonical mesh when the face_landmarker bundle is installed
    fallback_focal: float = 2.0       # x crop side, when there is no canonical mesh to search the focal with
    identity_blend_xy: float = 0.8    # weight of the subject's own shape in the template, image axes
    identity_blend_z: float = 0.5     # ... and depth (MediaPipe's z is weaker evidence)
    # focal search (SyncTalk Eq. 5)
    focal_min: float = 0.5            # x crop side
    focal_max: float = 4.0            # x crop side
    focal_candidates: int = 16
    focal_frames: int = 24            # frames the search fits (evenly spaced)
    fit_iterations: int = 12          # Levenberg-Marquardt steps of a pose fit (at most)
    fit_landmarks: int = 128          # landmarks the fits use: a spread subset of the weighted ones
    huber_px: float = 3.0             # robust landmark fit: residuals beyond this count linearly
    # semantic weighting (SyncTalk++)
    eye_brow_weight: float = 0.15
    lower_face_weight: float = 0.0    # mouth and jaw
    # head points tracker
    flow_size: int = 160              # optical flow on frames decoded at >= this side (JPEG DCT scaling)
    flow_gap: int = 3                 # frames between the pair whose flow selects keypoints
    seed_every: int = 20              # frames between keypoint seedings
    keypoints_per_seed: int = 48
    min_keypoints: int = 16           # taken even below the threshold when the head is still
    laplacian_threshold: float = 0.05 # |Laplacian of flow| at flow resolution, 1/px
    keypoint_spacing: float = 0.04    # minimum distance between keypoints, x face width
    track_length: int = 60            # frames a keypoint is followed
    fb_error_px: float = 0.5          # forward-backward LK error that ends a track (flow resolution)
    min_track_frames: int = 6
    # bundle adjustment (SyncTalk Eqs. 7-8)
    point_iterations: int = 30        # stage 1: points only
    joint_iterations: int = 60        # stage 2: points and poses
    ba_landmarks: int = 96            # landmarks in the bundle adjustment (their weight is per frame anyway)
    learning_rate_px: float = 1.0     # Adam step of stage 1, in pixels of image motion (decays to 1/10)
    joint_step: float = 0.1           # stage 2 step relative to stage 1 (poses start close)
    landmark_sigma_px: float = 2.0    # landmark noise
    landmark_effective_points: float = 30.0  # a frame's landmarks weigh as this many independent points
    track_sigma_px: float = 0.7       # keypoint noise
    smooth_sigma_px: float = 0.3      # expected frame-to-frame change of pose velocity
    shape_sigma_cm: float = 0.5       # landmark points may leave the template by about this
    track_reject_px: float = 4.0      # tracks fitting worse than this (RMS) after stage 1 are dropped
