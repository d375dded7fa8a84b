"""The head points tracker (SyncTalk++ III-C Eq. 10): Laplacian-of-flow keypoints and their LK tracks.

Keypoints where the Laplacian of the optical flow is significant (Eq. 10), on textured skin inside the
face, tracked with pyramidal Lucas-Kanade on downscaled frames; each takes the semantic class (and
weight) of its nearest landmark.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import cv2
import numpy as np

from .. import face_template as ft
from .config import Config
from .weights import region_weights


def flow_laplacian(flow: np.ndarray) -> np.ndarray:
    """|Laplacian| of a flow field (h, w, 2) -> (h, w) float32, 1/px: sqrt(lap(u)^2 + lap(v)^2).

    Zero for any affine motion (a head translating, rotating in plane or zooming); large where the
    motion changes abruptly: depth steps (nose, brows, cheek contour) and textured features.
    """
    lu = cv2.Laplacian(np.ascontiguousarray(flow[..., 0], np.float32), cv2.CV_32F, ksize=3)
    lv = cv2.Laplacian(np.ascontiguousarray(flow[..., 1], np.float32), cv2.CV_32F, ksize=3)
    mag = np.sqrt(lu * lu + lv * lv)
    mag[[0, -1], :] = 0.0  # undefined on the border (a mirrored linear field is not linear): no keypoints
    mag[:, [0, -1]] = 0.0
    return mag


def select_laplacian_keypoints(lap: np.ndarray, mask: np.ndarray, threshold: float, max_points: int,
                               min_points: int, min_distance: int) -> np.ndarray:
    """Keypoints K' = {k : |L(F(k))| > threshold} (SyncTalk++ Eq. 10) inside ``mask``.

    lap (h, w) from :func:`flow_laplacian`; mask (h, w) bool/uint8. Local maxima at least ``min_distance``
    px apart, strongest first, at most ``max_points``; when fewer than ``min_points`` pass the threshold
    (a still head has almost no flow), the strongest maxima make up the number. Returns (K, 2) float32
    (x, y) pixel positions.
    """
    size = 2 * max(int(min_distance), 1) + 1
    peak = lap >= cv2.dilate(lap, cv2.getStructuringElement(cv2.MORPH_RECT, (size, size)))
    ys, xs = np.nonzero(peak & (mask > 0) & (lap > 0))
    strength = lap[ys, xs]
    order = np.argsort(-strength, kind="stable")
    ys, xs, strength = ys[order], xs[order], strength[order]
    keep = _spaced(np.stack([xs, ys], -1), min_distance, max_points)
    xs, ys, strength = xs[keep], ys[keep], strength[keep]
    n = max(int((strength > threshold).sum()), min(min_points, len(xs)))
    return np.stack([xs[:n], ys[:n]], -1).astype(np.float32)


def _spaced(points: np.ndarray, min_distance: float, limit: int) -> np.ndarray:
    """Indices of a greedy subset of ``points`` (in priority order) at least ``min_distance`` apart."""
    chosen: list[int] = []
    for i, p in enumerate(points):
        if len(chosen) >= limit:
            break
        if not chosen or np.min(np.abs(points[chosen] - p).max(-1)) >= min_distance:
            chosen.append(i)
    return np.asarray(chosen, int)


def nearest_regions(points: np.ndarray, landmarks2d: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """Semantic class of each point from its nearest landmark (SyncTalk++ semantic weighting mask).

    points (K, 2), landmarks2d (478, 2) in the same pixels, regions (478,) -> (K,) int8.
    """
    if len(points) == 0:
        return np.zeros(0, np.int8)
    d = ((points[:, None, :] - landmarks2d[None, :, :]) ** 2).sum(-1)
    return regions[np.argmin(d, axis=1)].astype(np.int8)


def face_seed_mask(landmarks2d: np.ndarray, shape: tuple[int, int], erode_frac: float = 0.06) -> np.ndarray:
    """uint8 mask (h, w) of the face oval shrunk by ``erode_frac`` x face width (no background at the
    contour, where the flow's Laplacian is large for the wrong reason). landmarks2d (478, 2) pixels."""
    mask = np.zeros(shape, np.uint8)
    oval = np.round(landmarks2d[list(ft.FACE_OVAL)]).astype(np.int32)
    cv2.fillPoly(mask, [oval], 1)
    width = np.ptp(landmarks2d[:, 0])
    k = max(int(round(erode_frac * width)), 1)
    return cv2.erode(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1)))


def texture_mask(gray: np.ndarray, quality: float = 0.02) -> np.ndarray:
    """Pixels with enough texture for Lucas-Kanade: min eigenvalue of the structure tensor above
    ``quality`` x its 99th percentile. (h, w) uint8 -> (h, w) bool."""
    eig = cv2.cornerMinEigenVal(gray, blockSize=5, ksize=3)
    return eig > quality * max(float(np.percentile(eig, 99)), 1e-12)


@dataclass
class Tracks:
    """Keypoint tracks: M observations of K tracks, in continuous crop pixels."""

    frame: np.ndarray   # (M,) int32 frame of each observation
    track: np.ndarray   # (M,) int32 track of each observation
    uv: np.ndarray      # (M, 2) float32 pixel position
    region: np.ndarray  # (K,) int8 semantic class of each track
    seed: np.ndarray    # (K,) int32 frame each track started

    @property
    def count(self) -> int:
        return len(self.region)

    @staticmethod
    def empty() -> "Tracks":
        return Tracks(np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros((0, 2), np.float32),
                      np.zeros(0, np.int8), np.zeros(0, np.int32))


def _lookahead(frames: Iterable[np.ndarray], gap: int) -> Iterator[tuple[np.ndarray, np.ndarray | None, np.ndarray]]:
    """Yield (frame t, frame t+1 or None, frame min(t+gap, last)) from a stream, holding gap+1 frames."""
    buf: deque[np.ndarray] = deque()
    it = iter(frames)
    for f in it:
        buf.append(f)
        if len(buf) > gap:
            break
    while buf:
        cur = buf.popleft()  # buf now holds frames t+1 .. t+gap
        yield cur, (buf[0] if buf else None), (buf[-1] if buf else cur)
        nxt = next(it, None)
        if nxt is not None:
            buf.append(nxt)


def track_keypoints(frames: Iterable[np.ndarray], scale: float, landmarks: np.ndarray, regions: np.ndarray,
                    cfg: Config, progress: Callable[[int], None] | None = None) -> Tracks:
    """The head points tracker on a stream of grayscale frames (h, w) uint8 decoded at 1/``scale`` of the
    crop. landmarks (N, 478, 3) crop pixels (NaN rows allowed); regions (478,) landmark classes.

    At every ``seed_every``-th frame with landmarks, the Farneback flow to ``flow_gap`` frames later picks
    keypoints by its Laplacian inside the face (textured pixels, away from live tracks); mouth, jaw and iris
    keypoints are dropped. Tracks follow by pyramidal LK with a forward-backward check, for at most
    ``track_length`` frames. Returns :class:`Tracks` in crop pixels.
    """
    n = len(landmarks)
    valid = np.isfinite(landmarks).all(axis=(1, 2))
    small = landmarks[..., :2] / scale - 0.5  # crop continuous pixels -> OpenCV pixel centres at 1/scale
    keep_region = region_weights(1.0, 0.0) > 0  # rigid, eye, brow: dropped classes never get a track
    lk = dict(winSize=(15, 15), maxLevel=3, criteria=(cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 20, 0.03))
    fb_max = cfg.fb_error_px
    obs_f: list[np.ndarray] = []
    obs_k: list[np.ndarray] = []
    obs_p: list[np.ndarray] = []
    regions_out: list[np.ndarray] = []
    seeds_out: list[np.ndarray] = []
    pts = np.zeros((0, 2), np.float32)
    ids = np.zeros(0, np.int32)
    born = np.zeros(0, np.int32)
    next_id, last_seed = 0, -cfg.seed_every
    for t, (cur, nxt, ahead) in enumerate(_lookahead(frames, cfg.flow_gap)):
        if t >= n:
            break
        if valid[t] and t - last_seed >= cfg.seed_every:
            new = _seed_keypoints(cur, ahead, small[t], pts, cfg)
            cls = nearest_regions(new, small[t], regions)
            new, cls = new[keep_region[cls]], cls[keep_region[cls]]
            k = len(new)
            pts = np.concatenate([pts, new])
            ids = np.concatenate([ids, np.arange(next_id, next_id + k, dtype=np.int32)])
            born = np.concatenate([born, np.full(k, t, np.int32)])
            regions_out.append(cls)
            seeds_out.append(np.full(k, t, np.int32))
            next_id += k
            last_seed = t
        if len(pts):
            obs_f.append(np.full(len(pts), t, np.int32))
            obs_k.append(ids.copy())
            obs_p.append(pts.copy())
        if nxt is not None and len(pts):
            p1, found, _ = cv2.calcOpticalFlowPyrLK(cur, nxt, pts.reshape(-1, 1, 2), None, **lk)
            p0, found_back, _ = cv2.calcOpticalFlowPyrLK(nxt, cur, p1, None, **lk)
            p1, p0 = p1.reshape(-1, 2), p0.reshape(-1, 2)
            h, w = cur.shape
            # forward-backward check: a point that does not track back to where it was has slipped
            ok = ((found.ravel() == 1) & (found_back.ravel() == 1) & (np.abs(p0 - pts).max(-1) < fb_max)
                  & (p1[:, 0] >= 0) & (p1[:, 1] >= 0) & (p1[:, 0] <= w - 1) & (p1[:, 1] <= h - 1)
                  & (t + 1 - born < cfg.track_length))
            pts, ids, born = p1[ok], ids[ok], born[ok]
        if progress:
            progress(1)
    if not obs_f:
        return Tracks.empty()
    frame, track, uv = np.concatenate(obs_f), np.concatenate(obs_k), np.concatenate(obs_p)
    region, seed = np.concatenate(regions_out), np.concatenate(seeds_out)
    return _drop_short(Tracks(frame, track, ((uv + 0.5) * scale).astype(np.float32), region, seed),
                       cfg.min_track_frames)


def _seed_keypoints(cur: np.ndarray, ahead: np.ndarray, lm2d: np.ndarray, live: np.ndarray, cfg: Config
                    ) -> np.ndarray:
    """Laplacian-of-flow keypoints in one frame (flow-resolution pixels), away from live tracks."""
    flow = cv2.calcOpticalFlowFarneback(cur, ahead, None, 0.5, 3, 13, 3, 5, 1.1, 0)
    face_w = float(np.ptp(lm2d[:, 0]))
    spacing = max(int(round(cfg.keypoint_spacing * face_w)), 2)
    mask = face_seed_mask(lm2d, cur.shape) & texture_mask(cur)
    for x, y in live:  # no new keypoint on top of a live one
        cv2.circle(mask, (int(round(x)), int(round(y))), spacing, 0, -1)
    return select_laplacian_keypoints(flow_laplacian(flow), mask, cfg.laplacian_threshold,
                                      cfg.keypoints_per_seed, cfg.min_keypoints, spacing)


def _drop_short(tracks: Tracks, min_frames: int) -> Tracks:
    """Remove tracks with fewer than ``min_frames`` observations and renumber the rest 0..K-1."""
    counts = np.bincount(tracks.track, minlength=tracks.count)
    keep = counts >= min_frames
    new_id = np.cumsum(keep) - 1
    m = keep[tracks.track]
    return Tracks(tracks.frame[m], new_id[tracks.track[m]].astype(np.int32), tracks.uv[m],
                  tracks.region[keep], tracks.seed[keep])
