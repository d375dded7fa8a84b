"""Mouth-region crops and the aligned audio/video windows the lip-sync networks read.

A *mouth crop* is a small grayscale image (``height`` x ``width``, 1:2) cut from a frame by an affine warp
fixed to the face, not to the lips: its x axis runs along the line between the outer eye corners, its
scale is the distance between them (inter-ocular distance, IOD), and its top edge sits at the point below
the nose (landmark 164). The jaw and lower lip therefore move *inside* a steady box when the mouth opens,
and head roll or distance to the camera do not change what the box shows.

Windows (the one convention every lip-sync module shares, so the audio and the video line up):

* video window of frame ``i``: crops ``i - T//2 .. i + T//2`` (``T`` odd), clipped at the ends;
* audio window of frame ``i``: ``R`` log-mel rows (100 rows/s, row ``r`` centred on ``r / 100`` s) starting
  at ``round(100 * i / fps) - R // 2``, i.e. centred on ``t = i / fps`` like row ``i`` of ``mel.npy``
  (edge rows repeat past either end). With 25 fps, ``T = 5`` frames and ``R = 20`` rows both span 0.2 s.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np

from ..prepare.audio_features import HOP, log_mel
from ..core.errors import UserError
from ..core.media import AUDIO_RATE
from ..core.progress import Reporter
from ..subject.folder import Subject

MEL_RATE = AUDIO_RATE / HOP  # log-mel rows per second (100)

#: MediaPipe face-mesh indices the crop is anchored to: outer eye corners and the point below the nose.
EYE_OUTER_RIGHT, EYE_OUTER_LEFT, BELOW_NOSE = 33, 263, 164
#: Crop width in IOD units, and where its top edge is (IOD units above ``BELOW_NOSE``). The jaw of an open
#: mouth reaches about 0.75 IOD below the nose, so a 1.6 IOD wide 1:2 box (0.8 IOD tall) holds both lips.
SPAN_IOD = 1.6
TOP_IOD = 0.05


@dataclass
class Clip:
    """One audio-visual clip as the sync networks see it.

    ``crops`` (N, H, W) uint8 grayscale mouth crops, one per video frame; ``mel`` (M, n_mels) float32
    log-mel at 100 rows/s of the clip's sound; ``fps`` the video frame rate; ``valid`` (N,) bool, False where
    the face was not found (those crops are interpolated and must not be trained on).
    """

    crops: np.ndarray
    mel: np.ndarray
    fps: float
    valid: np.ndarray

    @property
    def n_frames(self) -> int:
        return int(self.crops.shape[0])


# ---- geometry (pure) -----------------------------------------------------------------------------------
def crop_affines(landmarks: np.ndarray, height: int, width: int, smooth_frames: float = 1.0) -> np.ndarray:
    """Affine maps image px -> mouth-crop px, one per frame: (N, 2, 3) float64.

    ``landmarks`` (N, 478, 2+) in image pixels, NaN rows where no face was found (those frames take the
    geometry of their nearest found neighbours). ``smooth_frames``: Gaussian sigma, in frames, applied to
    the box's centre, scale and angle, since per-frame mesh jitter would otherwise shake the crop.
    Raises :class:`UserError` when no frame has a face.
    """
    lm = np.asarray(landmarks, np.float64)[:, :, :2]
    right, left, anchor = lm[:, EYE_OUTER_RIGHT], lm[:, EYE_OUTER_LEFT], lm[:, BELOW_NOSE]
    eye = left - right  # image-right pointing: the subject's left eye appears on the image's right
    iod = np.linalg.norm(eye, axis=1)
    angle = np.arctan2(eye[:, 1], eye[:, 0])
    ok = np.isfinite(iod) & np.isfinite(anchor).all(1) & (iod > 1e-3)
    if not ok.any():
        raise UserError("no face landmarks in this clip, so the mouth cannot be located",
                        "use footage where the speaker's face is visible and frontal")
    log_iod = np.log(np.where(ok, iod, 1.0))
    params = np.stack([anchor[:, 0], anchor[:, 1], log_iod, np.unwrap(np.where(ok, angle, 0))], 1)
    params = _fill_gaps(params, ok)
    if smooth_frames > 0 and params.shape[0] > 1:
        from scipy.ndimage import gaussian_filter1d

        params = gaussian_filter1d(params, smooth_frames, axis=0, mode="nearest")
    ax, ay, log_iod, ang = params.T
    scale = width / (SPAN_IOD * np.exp(log_iod))  # crop px per image px
    c, s = np.cos(ang), np.sin(ang)
    # Crop coordinates: u along the eye line, v perpendicular (down the face); the anchor maps to
    # (width / 2, TOP_IOD * IOD in crop px).
    out = np.zeros((lm.shape[0], 2, 3))
    out[:, 0, 0], out[:, 0, 1] = scale * c, scale * s
    out[:, 1, 0], out[:, 1, 1] = -scale * s, scale * c
    top = TOP_IOD * width / SPAN_IOD
    out[:, 0, 2] = width / 2 - (out[:, 0, 0] * ax + out[:, 0, 1] * ay)
    out[:, 1, 2] = top - (out[:, 1, 0] * ax + out[:, 1, 1] * ay)
    return out


def _fill_gaps(params: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Linearly interpolate rows of ``params`` where ``ok`` is False (ends take the nearest good row)."""
    if ok.all():
        return params
    t = np.arange(params.shape[0])
    return np.stack([np.interp(t, t[ok], params[ok, k]) for k in range(params.shape[1])], 1)


def cut_mouth(image: np.ndarray, affine: np.ndarray, height: int, width: int) -> np.ndarray:
    """One grayscale mouth crop (height, width) uint8 from an RGB or gray image and a :func:`crop_affines` map."""
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    # INTER_AREA has no warp variant: blur first when shrinking a lot, so small crops do not alias.
    shrink = 1.0 / max(np.hypot(affine[0, 0], affine[0, 1]), 1e-6)
    if shrink > 1.5:
        k = int(2 * round(shrink / 2) + 1)
        gray = cv2.GaussianBlur(gray, (k, k), shrink / 2.5)
    return cv2.warpAffine(gray, affine, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


# ---- windows (pure) ------------------------------------------------------------------------------------
def video_windows(crops: np.ndarray, centres: np.ndarray, frames: int) -> np.ndarray:
    """Windows of ``frames`` consecutive crops centred on each of ``centres``: (B, frames, H, W), same dtype.

    Indices past either end are clipped (the first/last crop repeats)."""
    offsets = np.arange(frames) - frames // 2
    idx = np.clip(np.asarray(centres)[:, None] + offsets[None, :], 0, crops.shape[0] - 1)
    return crops[idx]


def audio_row_start(frame: np.ndarray | float, fps: float, rows: int) -> np.ndarray:
    """First log-mel row of the audio window of video frame(s) ``frame`` (see the module docstring)."""
    return np.round(np.asarray(frame, np.float64) * MEL_RATE / fps).astype(np.int64) - rows // 2


def audio_windows(mel: np.ndarray, centres: np.ndarray, fps: float, rows: int) -> np.ndarray:
    """Log-mel windows of ``rows`` rows centred on video frames ``centres``: (B, n_mels, rows) float32.

    ``centres`` may be fractional or outside the clip (shifted negatives, offset scans); rows outside the
    audio repeat its first/last row."""
    start = audio_row_start(centres, fps, rows)
    idx = np.clip(start[:, None] + np.arange(rows)[None, :], 0, mel.shape[0] - 1)
    return np.ascontiguousarray(mel[idx].transpose(0, 2, 1), dtype=np.float32)


# ---- I/O -----------------------------------------------------------------------------------------------
def crops_from_frames(frames: Iterable[np.ndarray], landmarks: np.ndarray, height: int, width: int,
                      reporter: Reporter | None = None) -> np.ndarray:
    """Mouth crops (N, height, width) uint8 of ``frames`` (RGB, any size) given their landmarks (N, 478, 3)."""
    affines = crop_affines(landmarks, height, width)
    out = np.zeros((len(affines), height, width), np.uint8)
    for i, img in enumerate(frames):
        if i >= len(out):
            break
        out[i] = cut_mouth(img, affines[i], height, width)
        if reporter:
            reporter.advance(1)
    return out


def subject_clip(subject: Subject, height: int, width: int, reporter: Reporter | None = None) -> Clip:
    """The prepared subject as a :class:`Clip`: crops from ``frames/*.jpg`` and ``landmarks.npy``, log-mel of
    ``audio.wav``."""
    import soundfile as sf

    n = subject.frame_count()
    lms = np.load(subject.path("landmarks.npy"))
    if lms.shape[0] != n:
        raise UserError(f"landmarks.npy has {lms.shape[0]} rows for {n} frames",
                        f"prepare the subject again: `headsync prepare VIDEO --subject {subject.root}`")

    def frames():
        for i in range(n):
            img = cv2.imread(str(subject.frame_path(i)), cv2.IMREAD_GRAYSCALE)
            if img is None:
                raise UserError(f"cannot read {subject.frame_path(i)}", "prepare the subject again")
            yield img

    if reporter:
        reporter.start("mouth crops", n)
    crops = crops_from_frames(frames(), lms, height, width, reporter)
    audio, rate = sf.read(str(subject.path("audio.wav")), dtype="float32")
    if rate != AUDIO_RATE:
        raise UserError(f"{subject.path('audio.wav')} is {rate} Hz, expected {AUDIO_RATE}",
                        "prepare the subject again")
    return Clip(crops, log_mel(audio), float(subject.source()["fps"]), np.isfinite(lms).all(axis=(1, 2)))


def video_clip(path: str | Path, fps: float, height: int, width: int, audio: str | Path | None = None,
               reporter: Reporter | None = None) -> Clip:
    """Any talking-head video as a :class:`Clip`: MediaPipe face mesh on every frame locates the mouth.

    ``audio`` replaces the video's own sound track. Frames are resampled to ``fps``. Raises
    :class:`UserError` when the face is found in fewer than half of the frames.
    """
    import mediapipe as mp

    from ..core import media

    # Two decodes (landmarks, then crops) instead of holding every full frame in memory.
    n = int(round(media.probe(path).duration_s * fps)) + 1
    if reporter:
        reporter.start("face mesh", n)
    found: list[np.ndarray] = []
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=False, max_num_faces=1, refine_landmarks=True,
                                         min_detection_confidence=0.5, min_tracking_confidence=0.5) as mesh:
        for img in media.iter_frames(path, fps, max_side=720):
            res = mesh.process(np.ascontiguousarray(img))
            pts = np.full((478, 3), np.nan, np.float32)
            if res.multi_face_landmarks:
                h, w = img.shape[:2]
                pts = np.array([(p.x, p.y, p.z) for p in res.multi_face_landmarks[0].landmark], np.float32)
                pts *= np.array([w, h, w], np.float32)
            found.append(pts)
            if reporter:
                reporter.advance(1)
    if not found:
        raise UserError(f"{path} has no video frames", "pass a video of a speaking face")
    if reporter:  # the count from the container's duration is an estimate: close the bar on the real one
        reporter.total = len(found)
        reporter.set(len(found))
    lms = np.stack(found)
    valid = np.isfinite(lms).all(axis=(1, 2))
    if valid.mean() < 0.5:
        raise UserError(f"the face was found in only {valid.mean():.0%} of the frames of {path}",
                        "use a clip where one speaker faces the camera")
    crops = crops_from_frames(media.iter_frames(path, fps, max_side=720), lms, height, width)
    sound = media.read_audio(audio if audio is not None else path)
    return Clip(crops, log_mel(sound), float(fps), valid)
