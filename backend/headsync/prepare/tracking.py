"""Face tracking: one consistent subject, a stable square crop, and MediaPipe's 478-point face mesh.

Two stages:

``crop`` (this module's :func:`run_crop`): a fast pass over downscaled frames finds the subject's face in
a sample of frames (MediaPipe face detection, full-range model) and fixes one square crop box for the
whole clip, so the training crops do not jitter. With several faces in view, the subject is the largest
face of the first frames where one is found, then whichever face stays closest to it.

``landmarks`` (:func:`run_landmarks`): decodes every frame at full resolution, cuts the crop (the box may
extend past the image edge; edges are replicated), writes ``frames/*.jpg`` and runs the face mesh on the
crop, giving ``landmarks.npy`` (N, 478, 3) in crop pixels (z is MediaPipe's relative depth times the crop
side). Frames where the face is lost get NaN rows.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..core import media
from ..core.errors import UserError
from ..core.progress import Reporter
from .stages import Stage
from ..core.atomic import save_npy_atomic, staging_dir
from ..subject.folder import Subject

N_LANDMARKS = 478


@dataclass(frozen=True)
class CropConfig:
    """Settings of the crop stage. ``video``/``sha256`` identify the input, so a new video redoes it."""

    video: str = ""
    sha256: str = ""
    fps: float = 25.0
    detect_side: int = 640  # frames are downscaled to this for detection
    detect_samples: int = 150  # detect on about this many evenly spaced frames
    scale: float = 2.6  # crop side / face-box side: head, hair and some shoulders
    down_shift: float = 0.15  # move the crop down by this x face size, to include the neck
    min_duration_s: float = 3.0
    min_face_fraction: float = 0.5  # below this share of sampled frames with a face: error


@dataclass(frozen=True)
class LandmarksConfig:
    resolution: int = 512
    jpeg_quality: int = 92
    min_face_fraction: float = 0.5  # error below this
    warn_face_fraction: float = 0.98  # warning below this


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


# ---- pure logic ----------------------------------------------------------------------------------------
def pick_subject(boxes: list[np.ndarray], prev: np.ndarray | None) -> np.ndarray | None:
    """Choose the subject's face among ``boxes`` (each (4,) x0, y0, w, h in pixels).

    Without a previous box: the largest. Otherwise: the box whose centre is nearest the previous one,
    so a second person walking through does not steal the track.
    """
    if not boxes:
        return None
    arr = np.stack(boxes)
    if prev is None:
        return arr[np.argmax(arr[:, 2] * arr[:, 3])]
    c = arr[:, :2] + arr[:, 2:] / 2
    pc = prev[:2] + prev[2:] / 2
    return arr[np.argmin(np.linalg.norm(c - pc, axis=1))]


def stable_crop_box(face_boxes: np.ndarray, scale: float, down_shift: float,
                    image_size: tuple[int, int] | None = None) -> tuple[float, float, float]:
    """One square crop for the clip from per-frame face boxes (M, 4) x0, y0, w, h in source pixels.

    The face size is a robust high percentile (so the head always fits); the centre is the middle of the
    face centres' range, widened to contain the whole range of motion. With ``image_size`` (W, H) the box
    is kept inside the image where it can be (no side larger than the image's shorter side), because
    replicated border pixels make poor training data. Returns (x0, y0, side) in source pixels.
    """
    c = face_boxes[:, :2] + face_boxes[:, 2:] / 2
    size = float(np.percentile(np.maximum(face_boxes[:, 2], face_boxes[:, 3]), 90))
    lo, hi = np.percentile(c, 2, axis=0), np.percentile(c, 98, axis=0)
    centre = (lo + hi) / 2
    centre[1] += down_shift * size
    side = size * scale + float(np.max(hi - lo))
    x0, y0 = centre[0] - side / 2, centre[1] - side / 2
    if image_size is not None:
        w, h = image_size
        side = min(side, float(min(w, h)))
        x0 = float(np.clip(centre[0] - side / 2, 0, w - side))
        y0 = float(np.clip(centre[1] - side / 2, 0, h - side))
    return float(x0), float(y0), float(side)


def crop_affine(box: tuple[float, float, float], out_size: int, src_scale: float = 1.0) -> np.ndarray:
    """2x3 affine taking source pixels (scaled by ``src_scale``) to crop pixels of side ``out_size``."""
    x0, y0, side = box
    s = out_size / (side * src_scale)
    return np.array([[s, 0, -x0 * src_scale * s], [0, s, -y0 * src_scale * s]], np.float64)


def cut_crop(frame: np.ndarray, box: tuple[float, float, float], out_size: int) -> np.ndarray:
    """The square crop (out_size, out_size, 3) of ``frame``; outside the image, edges are replicated."""
    return cv2.warpAffine(frame, crop_affine(box, out_size), (out_size, out_size), flags=cv2.INTER_AREA,
                          borderMode=cv2.BORDER_REPLICATE)


# ---- stage: crop ---------------------------------------------------------------------------------------
def detect_faces(rgb: np.ndarray, detector) -> list[np.ndarray]:
    """Face boxes (x0, y0, w, h) in the pixels of ``rgb`` from a MediaPipe FaceDetection instance."""
    h, w = rgb.shape[:2]
    res = detector.process(rgb)
    out = []
    for d in res.detections or []:
        b = d.location_data.relative_bounding_box
        out.append(np.array([b.xmin * w, b.ymin * h, b.width * w, b.height * h], np.float64))
    return out


def run_crop(subject: Subject, cfg: CropConfig, reporter: Reporter) -> dict:
    """Stage ``crop``: probe the video, count frames at ``cfg.fps``, fix the crop box."""
    import mediapipe as mp

    info = media.probe(cfg.video)
    if not info.has_video:
        raise UserError(f"{cfg.video} has no video stream (audio only?)",
                        "pass a video of the subject; give separate dialogue with --audio")
    if info.fps == 0 or info.duration_s <= 1.5 / info.fps:  # one frame: an image, or a video of one frame
        raise UserError(f"{cfg.video} is a still image, not a video",
                        f"prepare needs a clip of the subject talking (at least {cfg.min_duration_s:.0f} s)")
    if info.duration_s and info.duration_s < cfg.min_duration_s:
        raise UserError(f"the video is {info.duration_s:.1f} s long; at least {cfg.min_duration_s:.0f} s are needed",
                        "a few minutes of the subject talking gives the best results")
    expected = max(int(info.duration_s * cfg.fps), 1)
    stride = max(1, expected // cfg.detect_samples)
    reporter.start("detect", expected)
    boxes, prev, n, sampled, scale = [], None, 0, 0, 1.0
    with mp.solutions.face_detection.FaceDetection(model_selection=1, min_detection_confidence=0.5) as det:
        for i, frame in enumerate(media.iter_frames(cfg.video, cfg.fps, max_side=cfg.detect_side)):
            n += 1
            if i % stride == 0:
                sampled += 1
                scale = max(info.width, info.height) / max(frame.shape[:2])
                box = pick_subject(detect_faces(frame, det), prev)
                if box is not None:
                    boxes.append(box * scale)
                    prev = box
            if n % 25 == 0:
                reporter.set(min(n, expected))
    reporter.set(expected)
    if n == 0:
        raise UserError(f"ffmpeg decoded no frames from {cfg.video}", "the file may be truncated; re-export it")
    if n / cfg.fps < cfg.min_duration_s:
        raise UserError(f"the video has {n} frames ({n / cfg.fps:.1f} s at {cfg.fps:g} fps); "
                        f"at least {cfg.min_duration_s:.0f} s are needed", "use a longer clip of the subject")
    if not boxes:
        raise UserError("no face was found in the video", "use footage where the subject's face is visible and frontal")
    frac = len(boxes) / sampled
    if frac < cfg.min_face_fraction:
        raise UserError(f"the face was found in only {frac:.0%} of sampled frames",
                        "trim the clip to the part where the subject faces the camera")
    x0, y0, side = stable_crop_box(np.stack(boxes), cfg.scale, cfg.down_shift, (info.width, info.height))
    subject.update(
        source={"path": str(Path(cfg.video).resolve()), "sha256": cfg.sha256, "fps": cfg.fps, "frame_count": n,
                "width": info.width, "height": info.height, "source_fps": info.fps, "duration_s": n / cfg.fps,
                "has_audio": info.has_audio, "sample_aspect": round(info.sample_aspect, 4)},
        crop={"mode": "fixed", "box": [x0, y0, side]},
    )
    return {"frames": n, "face_fraction_sampled": round(frac, 4), "box": [round(v, 2) for v in (x0, y0, side)]}


# ---- stage: landmarks ----------------------------------------------------------------------------------
def mesh_landmarks(result, size: int, prev_centre: np.ndarray | None) -> np.ndarray | None:
    """(478, 3) crop-pixel landmarks of the subject's face from a FaceMesh result (None if no face)."""
    faces = result.multi_face_landmarks or []
    if not faces:
        return None
    arrs = [np.array([(p.x, p.y, p.z) for p in f.landmark], np.float32) * size for f in faces]
    if len(arrs) == 1 or prev_centre is None:
        return arrs[0]
    d = [np.linalg.norm(a[:, :2].mean(0) - prev_centre) for a in arrs]
    return arrs[int(np.argmin(d))]


def run_landmarks(subject: Subject, cfg: LandmarksConfig, reporter: Reporter) -> dict:
    """Stage ``landmarks``: write ``frames/*.jpg`` crops and ``landmarks.npy`` (N, 478, 3)."""
    import mediapipe as mp

    m = subject.load()
    src, box = m["source"], tuple(m["crop"]["box"])
    n, size = int(src["frame_count"]), cfg.resolution
    lms = np.full((n, N_LANDMARKS, 3), np.nan, np.float32)
    reporter.start("landmarks", n)
    found, prev = 0, None
    params = [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality]
    # JPEG encoding releases the GIL: overlap it with the face mesh on the second core.
    with staging_dir(subject.frames_dir) as tmp, ThreadPoolExecutor(1) as pool, \
            mp.solutions.face_mesh.FaceMesh(static_image_mode=False, max_num_faces=2, refine_landmarks=True,
                                            min_detection_confidence=0.5, min_tracking_confidence=0.5) as mesh:
        pending = []
        i = -1
        for i, frame in enumerate(media.iter_frames(src["path"], src["fps"])):
            if i >= n:
                break
            crop = cut_crop(frame, box, size)
            pending.append(pool.submit(cv2.imwrite, str(tmp / f"{i:06d}.jpg"),
                                       cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), params))
            lm = mesh_landmarks(mesh.process(crop), size, prev)
            if lm is not None:
                lms[i] = lm
                prev = lm[:, :2].mean(0)
                found += 1
            reporter.advance(1)
            if len(pending) > 16:
                pending.pop(0).result()
        for p in pending:
            if not p.result():
                raise OSError(f"could not write frames into {tmp} (disk full?)")
        if i + 1 < n:  # the second decode came up short (rare; variable frame rate): keep it consistent
            raise UserError(f"the video decoded to {i + 1} frames, expected {n}", "re-encode it to a constant frame rate")
        frac = found / n
        if frac < cfg.min_face_fraction:
            raise UserError(f"the face mesh found the face in only {frac:.0%} of frames",
                            "trim the clip to where the subject faces the camera, or use better-lit footage")
    save_npy_atomic(subject.path("landmarks.npy"), lms)
    subject.update(crop={**m["crop"], "size": size})
    if frac < cfg.warn_face_fraction:
        msg = f"face mesh lost the face in {n - found} of {n} frames ({1 - frac:.1%}); those frames are interpolated"
        subject.warn(msg)
        reporter.message(msg, level="warning")
    return {"face_fraction": round(frac, 4), "frames": n}


CROP = Stage("crop", 1, (), CropConfig, run_crop)
LANDMARKS = Stage("landmarks", 1, ("crop",), LandmarksConfig, run_landmarks)
