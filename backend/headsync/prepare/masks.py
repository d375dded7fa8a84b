"""Preparation stage ``masks``: per-frame semantic label maps and a clean background plate.

Each frame gets a single-channel label map ``masks/000000.png`` (uint8)::

    0 background   1 face skin   2 lips+mouth   3 eyes+brows   4 hair/other head   5 neck   6 torso

The face parts come from the face mesh (``landmarks.npy``): the face-oval polygon is skin, the outer lip
contour is lips+mouth (mouth interior included), the eye contours and a band around each eyebrow are
eyes+brows. Person versus background comes from MediaPipe selfie segmentation (bundled in the wheel), run
at a fixed small size and smoothed over three frames so that the silhouette does not flicker. Person
pixels outside the face are split with simple face-aligned geometry: above the chin and within the head's
width -> hair/other head; a band under the jaw about as wide as the jaw -> neck; every other person pixel
(shoulders, chest, a raised hand) -> torso.

``background.jpg`` is the per-pixel temporal median of the pixels labelled background over a subsample of
frames; pixels the person always covers are filled by inpainting and their fraction is recorded.

Pure logic (geometry, label rasterisation, temporal smoothing, plate median) is separate from the I/O in
:func:`run`, so it can be tested on synthetic frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import cv2
import numpy as np

from ..core.errors import UserError
from ..core.progress import Reporter
from ..core.atomic import staging_dir, write_bytes_atomic
from ..subject.folder import Subject
from . import face_template as ft
from ..subject.labels import BACKGROUND, EYES_BROWS, FACE, HEAD, LABEL_NAMES, LIPS, NECK, TORSO

NAME = "masks"
VERSION = 1
REQUIRES = ("landmarks",)


#: Outer eye corners, which define the face's horizontal axis (roll).
EYE_OUTER = (ft.RIGHT_EYE_OUTER, ft.LEFT_EYE_OUTER)
#: Mouth corners: the neck band starts at their height (the face oval is painted over it above the jaw).
MOUTH_CORNERS = (61, 291)


@dataclass(frozen=True)
class Config:
    """Settings of the ``masks`` stage (preset table ``[masks]``). Lengths are relative to the face."""

    segmenter_size: int = 256        # px; the selfie segmenter runs at this square size
    model_selection: int = 0         # 0 = general (square 256 input), 1 = landscape (faster, coarser)
    person_threshold: float = 0.5    # segmenter probability above which a pixel is the person
    temporal_weights: tuple = (0.25, 0.5, 0.25)  # centred filter on the person probability (anti-flicker)
    brow_band: float = 0.07          # brow outline thickness, in inter-ocular distances
    eye_band: float = 0.03           # eye outline thickness (lashes), in inter-ocular distances
    head_width: float = 1.6          # head extent across, in face widths (hair and ears beside the face)
    neck_width: float = 0.85         # neck band width, in jaw widths
    neck_depth: float = 0.45         # neck band length below the chin, in face heights
    plate_frames: int = 60           # frames sampled for the background median
    plate_margin: float = 0.012      # person silhouette grown by this fraction of the crop for the plate
    plate_min_samples: int = 2       # fewer background samples than this -> the pixel is inpainted
    inpaint_radius: int = 5          # px, cv2.inpaint (Telea) neighbourhood
    png_compression: int = 1         # 0..9; label maps are tiny either way, 1 is the fastest


# ---- face geometry ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class FaceFrame:
    """A face-aligned 2D frame in crop pixels: ``u`` across the face (image left->right when upright),
    ``v`` down the face. ``to_image`` maps (K, 2) face coordinates (u, v) to image pixels (x, y)."""

    origin: np.ndarray   # (2,) px, centre of the face oval
    u_axis: np.ndarray   # (2,) unit vector along the eye line
    v_axis: np.ndarray   # (2,) unit vector perpendicular to it, pointing to the chin
    width: float         # px, face-oval extent along u (cheek to cheek, about the jaw width)
    height: float        # px, face-oval extent along v (forehead to chin)
    chin_v: float        # px, v of the lowest face-oval point
    iod: float           # px, distance between the outer eye corners

    def to_face(self, xy: np.ndarray) -> np.ndarray:
        """(K, 2) image px -> (K, 2) face coordinates (u, v) px."""
        d = np.asarray(xy, np.float64) - self.origin
        return np.stack([d @ self.u_axis, d @ self.v_axis], axis=-1)

    def to_image(self, uv: np.ndarray) -> np.ndarray:
        """(K, 2) face coordinates (u, v) px -> (K, 2) image px."""
        uv = np.asarray(uv, np.float64)
        return self.origin + uv[:, :1] * self.u_axis + uv[:, 1:2] * self.v_axis


def face_frame(landmarks: np.ndarray) -> FaceFrame:
    """The face-aligned frame of one face-mesh (478, >=2) in crop pixels (only x, y are used)."""
    xy = np.asarray(landmarks, np.float64)[:, :2]
    oval = xy[list(ft.FACE_OVAL)]
    eye_line = xy[EYE_OUTER[1]] - xy[EYE_OUTER[0]]
    iod = float(np.linalg.norm(eye_line))
    u = eye_line / max(iod, 1e-9)
    v = np.array([-u[1], u[0]])  # u rotated +90 deg in image coordinates (y down): points to the chin
    origin = oval.mean(axis=0)
    ou, ov = (oval - origin) @ u, (oval - origin) @ v
    return FaceFrame(origin, u, v, width=float(np.ptp(ou)), height=float(np.ptp(ov)),
                     chin_v=float(ov.max()), iod=iod)


def _poly(points: np.ndarray) -> np.ndarray:
    """(K, 2) float px -> int32 polygon for cv2 (rounded to the pixel centre)."""
    return np.round(points).astype(np.int32).reshape(-1, 1, 2)


def body_regions(fr: FaceFrame, mouth_v: float, shape: tuple[int, int], cfg: Config) -> np.ndarray:
    """Where a person pixel outside the face counts as head (4), neck (5) or torso (6).

    Returns ``shape`` (H, W) uint8 filled with TORSO, the head extent (above the chin, ``head_width`` face
    widths across, up to the top of the image) as HEAD, and the neck band (``neck_width`` jaw widths
    across, from mouth height to ``neck_depth`` face heights below the chin) as NECK. All shapes are
    rectangles in the face frame, so they follow the head's roll.
    """
    region = np.full(shape, TORSO, np.uint8)
    far = 4.0 * max(shape)  # "to the top of the image", whatever the roll
    hw = 0.5 * cfg.head_width * fr.width
    head = np.array([[-hw, -far], [hw, -far], [hw, fr.chin_v], [-hw, fr.chin_v]])
    cv2.fillPoly(region, [_poly(fr.to_image(head))], HEAD)
    nw = 0.5 * cfg.neck_width * fr.width
    bottom = fr.chin_v + cfg.neck_depth * fr.height
    neck = np.array([[-nw, mouth_v], [nw, mouth_v], [nw, bottom], [-nw, bottom]])
    cv2.fillPoly(region, [_poly(fr.to_image(neck))], NECK)
    return region


def label_map(landmarks: np.ndarray | None, person: np.ndarray, cfg: Config,
              nearest_face: np.ndarray | None = None) -> np.ndarray:
    """The label map of one frame.

    landmarks: (478, >=2) face mesh in crop px, or None when no face was found in this frame.
    person: (H, W) bool, the segmenter's person pixels. nearest_face: the nearest frame's face mesh, used
    only to split the person into head/neck/torso when this frame has none (its face parts then stay
    "other head": no face was seen to place them).
    Returns (H, W) uint8 with values 0..6.
    """
    mesh = landmarks if landmarks is not None else nearest_face
    if mesh is None:
        return np.where(person, TORSO, BACKGROUND).astype(np.uint8)
    xy = np.asarray(mesh, np.float64)[:, :2]
    fr = face_frame(xy)
    mouth_v = float(fr.to_face(xy[list(MOUTH_CORNERS)])[:, 1].mean())
    labels = np.where(person, body_regions(fr, mouth_v, person.shape, cfg), BACKGROUND).astype(np.uint8)
    oval = _poly(xy[list(ft.FACE_OVAL)])
    if landmarks is None:
        cv2.fillPoly(labels, [oval], HEAD)
        return labels
    cv2.fillPoly(labels, [oval], FACE)
    _paint_eyes_brows(labels, xy, fr.iod, cfg)
    cv2.fillPoly(labels, [_poly(xy[list(ft.LIPS_OUTER)])], LIPS)
    return labels


def _paint_eyes_brows(labels: np.ndarray, xy: np.ndarray, iod: float, cfg: Config) -> None:
    """Fill the eye contours and the brows, each grown by a band (lashes, brow hair) of relative width."""
    eyes = [_poly(xy[list(idx)]) for idx in (ft.RIGHT_EYE, ft.LEFT_EYE)]
    brows = [_poly(xy[list(idx)]) for idx in (ft.RIGHT_BROW, ft.LEFT_BROW)]
    cv2.fillPoly(labels, eyes + brows, EYES_BROWS)
    eye_t = max(1, int(round(cfg.eye_band * iod)))
    brow_t = max(1, int(round(cfg.brow_band * iod)))
    cv2.polylines(labels, eyes, True, EYES_BROWS, thickness=eye_t, lineType=cv2.LINE_8)
    cv2.polylines(labels, brows, True, EYES_BROWS, thickness=brow_t, lineType=cv2.LINE_8)


# ---- temporal smoothing ------------------------------------------------------------------------------
def smooth_sequence(maps: Iterable[np.ndarray], weights: tuple = (0.25, 0.5, 0.25)) -> Iterator[np.ndarray]:
    """Centred FIR filter over a stream of equally shaped arrays, yielding one output per input.

    ``weights`` has odd length 2h+1; output i mixes inputs i-h..i+h, renormalised at the ends of the
    stream. Holds only 2h+1 arrays in memory (a lookahead of h), so it streams long videos.
    """
    w = np.asarray(weights, np.float64)
    if w.ndim != 1 or len(w) % 2 != 1 or w.sum() <= 0:
        raise ValueError(f"weights must be an odd-length positive kernel, got {weights}")
    h = len(w) // 2
    buf: list[np.ndarray] = []   # inputs first_index .. first_index+len-1
    first = 0                    # stream index of buf[0]
    nxt = 0                      # next output index

    def emit(i: int, last: int) -> np.ndarray:
        lo, hi = max(i - h, first, 0), min(i + h, last)
        idx = range(lo, hi + 1)
        ws = np.array([w[j - i + h] for j in idx])
        acc = sum(wj * buf[j - first] for wj, j in zip(ws, idx))
        return (acc / ws.sum()).astype(buf[0].dtype)

    count = 0
    for m in maps:
        buf.append(m)
        count += 1
        while nxt + h < count:  # enough lookahead for output nxt
            yield emit(nxt, count - 1)
            nxt += 1
            while nxt - h > first:  # drop inputs no output needs any more
                buf.pop(0)
                first += 1
    while nxt < count:
        yield emit(nxt, count - 1)
        nxt += 1


# ---- background plate ---------------------------------------------------------------------------------
def plate_median(frames: np.ndarray, background: np.ndarray, min_samples: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel median of the background samples.

    frames: (M, H, W, 3) uint8; background: (M, H, W) bool, True where the frame shows background.
    Returns (plate (H, W, 3) uint8, holes (H, W) bool) where ``holes`` marks pixels with fewer than
    ``min_samples`` background samples (their plate value is 0, to be inpainted).
    Masked samples are pushed past 255 and sorted to the end, so the median is a lookup at index
    (k-1)//2 of the sorted samples; this avoids the much slower ``nanmedian``.
    """
    m = frames.shape[0]
    vals = np.moveaxis(frames, 0, -1).astype(np.uint16)           # (H, W, 3, M)
    valid = np.moveaxis(background, 0, -1)[:, :, None, :]         # (H, W, 1, M)
    vals = np.where(valid, vals, np.uint16(1000))
    vals.sort(axis=-1)
    k = valid.sum(axis=-1)                                        # (H, W, 1) samples per pixel
    idx = np.clip((k - 1) // 2, 0, m - 1)
    med = np.take_along_axis(vals, np.broadcast_to(idx, vals.shape[:3])[..., None], axis=-1)[..., 0]
    holes = k[:, :, 0] < max(1, min_samples)
    plate = np.where(holes[:, :, None], 0, med).astype(np.uint8)
    return plate, holes


def fill_holes(plate: np.ndarray, holes: np.ndarray, radius: int = 5) -> np.ndarray:
    """Inpaint ``holes`` (H, W) bool of ``plate`` (H, W, 3) uint8 with Telea's method.

    Telea's cost grows with the hole area times radius squared, and the hole behind a person is a large
    part of the frame, so a large hole is filled at a quarter of the size first; then only a band of
    ``radius`` px along the hole's border is inpainted again at full size, so the seam stays sharp.
    """
    if not holes.any():
        return plate
    if holes.all():
        return np.full_like(plate, 127)  # nothing to inpaint from: a neutral grey
    h, w = holes.shape
    mask = holes.astype(np.uint8) * 255
    if holes.mean() < 0.02 or min(h, w) < 128:
        return cv2.inpaint(plate, mask, radius, cv2.INPAINT_TELEA)
    sw, sh = w // 4, h // 4
    small = cv2.resize(plate, (sw, sh), interpolation=cv2.INTER_AREA)
    small_mask = (cv2.resize(mask, (sw, sh), interpolation=cv2.INTER_AREA) > 0).astype(np.uint8)
    coarse = cv2.resize(cv2.inpaint(small, small_mask, max(1, radius // 2), cv2.INPAINT_TELEA), (w, h),
                        interpolation=cv2.INTER_LINEAR)
    plate = np.where(holes[:, :, None], coarse, plate)
    border = cv2.subtract(mask, cv2.erode(mask, np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)))
    return cv2.inpaint(plate, border, radius, cv2.INPAINT_TELEA)


def plate_background(labels: np.ndarray, margin: float) -> np.ndarray:
    """(H, W) labels -> bool, True where the pixel shows background for the plate: label 0 at least
    ``margin`` x the frame size away from the person, so the silhouette's soft edge stays out of it."""
    r = max(1, int(round(margin * max(labels.shape))))
    grown = cv2.dilate((labels != BACKGROUND).astype(np.uint8), np.ones((2 * r + 1, 2 * r + 1), np.uint8))
    return grown == 0


def plate_indices(n: int, m: int) -> np.ndarray:
    """Up to ``m`` frame indices spread evenly over ``n`` frames (sorted, unique)."""
    return np.unique(np.linspace(0, n - 1, num=min(n, max(1, m))).round().astype(int))


def label_fractions(counts: np.ndarray) -> dict[str, float]:
    """(7,) pixel counts per label -> {label name: fraction of all pixels}, rounded for the manifest."""
    total = max(int(counts.sum()), 1)
    return {name: round(float(c) / total, 5) for name, c in zip(LABEL_NAMES, counts)}


# ---- I/O ------------------------------------------------------------------------------------------------
class PersonSegmenter:
    """MediaPipe selfie segmentation at a fixed square size; returns person probability (s, s) float32."""

    def __init__(self, size: int, model_selection: int):
        import mediapipe as mp

        self.size = size
        self._seg = mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=model_selection)

    def __call__(self, bgr: np.ndarray) -> np.ndarray:
        small = cv2.resize(bgr, (self.size, self.size), interpolation=cv2.INTER_AREA)
        res = self._seg.process(cv2.cvtColor(small, cv2.COLOR_BGR2RGB))
        return np.asarray(res.segmentation_mask, np.float32)

    def close(self) -> None:
        self._seg.close()


_REDUCED = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8}


def _read_frame(subject: Subject, i: int, reduce: int = 1) -> np.ndarray:
    """Frame ``i`` as BGR, decoded at 1/``reduce`` of its size (1, 2, 4 or 8)."""
    img = cv2.imread(str(subject.frame_path(i)), _REDUCED[reduce])
    if img is None:
        raise UserError(f"cannot read {subject.frame_path(i)}", "run `headsync prepare` again to rewrite the frames")
    return img


def _encode(path: Path, img: np.ndarray, params: list[int] | None = None) -> bytes:
    """``img`` encoded in the format of ``path``'s suffix."""
    ok, buf = cv2.imencode(path.suffix, img, params or [])
    if not ok:
        raise OSError(f"could not encode {path}")
    return buf.tobytes()


def _nearest_valid(valid: np.ndarray) -> np.ndarray:
    """(N,) bool -> (N,) index of the nearest frame with a face (ties go to the earlier one)."""
    idx = np.flatnonzero(valid)
    at = np.arange(len(valid))
    pos = np.searchsorted(idx, at)                       # first face frame at or after each frame
    left = idx[np.clip(pos - 1, 0, len(idx) - 1)]
    right = idx[np.clip(pos, 0, len(idx) - 1)]
    return np.where(np.abs(at - left) <= np.abs(right - at), left, right)


def run(subject: Subject, cfg: Config, reporter: Reporter) -> dict:
    """Write ``masks/`` (one label PNG per frame) and ``background.jpg``; return label fractions etc."""
    n = subject.frame_count()
    lm = np.load(subject.path("landmarks.npy"))
    if lm.shape[0] != n:
        raise UserError(f"landmarks.npy has {lm.shape[0]} rows for {n} frames", "run `headsync prepare` again")
    valid = ~np.isnan(lm).any(axis=(1, 2))
    if not valid.any():
        raise UserError("no face was found in any frame", "use a video where the face is visible and frontal")
    nearest = _nearest_valid(valid)
    plate_at = set(plate_indices(n, cfg.plate_frames).tolist())
    plate_frames, plate_bg = [], []
    counts = np.zeros(7, np.int64)

    reporter.start(NAME, n)
    seg = PersonSegmenter(cfg.segmenter_size, cfg.model_selection)
    size = int(subject.load()["crop"]["size"])
    # The segmenter sees a small image: let the JPEG decoder scale down (2-8x faster than a full decode).
    reduce = max((r for r in (1, 2, 4, 8) if size / r >= cfg.segmenter_size), default=1)

    def probabilities() -> Iterator[np.ndarray]:
        for i in range(n):
            yield seg(_read_frame(subject, i, reduce))

    try:
        with staging_dir(subject.masks_dir) as tmp:
            for i, prob in enumerate(smooth_sequence(probabilities(), cfg.temporal_weights)):
                person = cv2.resize(prob, (size, size), interpolation=cv2.INTER_LINEAR) > cfg.person_threshold
                labels = label_map(lm[i] if valid[i] else None, person, cfg, nearest_face=lm[nearest[i]])
                (tmp / f"{i:06d}.png").write_bytes(_encode(tmp / f"{i:06d}.png", labels, [cv2.IMWRITE_PNG_COMPRESSION, cfg.png_compression]))
                counts += np.bincount(labels.ravel(), minlength=7)[:7]
                if i in plate_at:
                    plate_frames.append(_read_frame(subject, i))
                    plate_bg.append(plate_background(labels, cfg.plate_margin))
                reporter.advance(1)
    finally:
        seg.close()

    plate, holes = plate_median(np.stack(plate_frames), np.stack(plate_bg), cfg.plate_min_samples)
    plate = fill_holes(plate, holes, cfg.inpaint_radius)
    write_bytes_atomic(subject.path("background.jpg"), _encode(subject.path("background.jpg"), plate, [cv2.IMWRITE_JPEG_QUALITY, 95]))
    filled = float(holes.mean())
    if filled > 0.75:
        subject.warn(f"masks: the person covers {filled:.0%} of the background in every sampled frame; "
                     "the background plate is mostly inpainted")
    return {
        "label_fractions": label_fractions(counts),
        "frames_without_face": int((~valid).sum()),
        "background_filled_fraction": round(filled, 5),
        "background_frames": len(plate_frames),
    }
