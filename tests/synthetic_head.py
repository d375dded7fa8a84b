"""A tiny synthetic prepared subject for the renderer's tests (no MediaPipe, no real video needed).

The "head" is an ellipsoid ray-cast from known poses: a smooth texture, two eyes whose opening follows the
eyeBlink coefficients, and a mouth whose opening follows the loudness of a synthetic audio track. Every
file of DESIGN.md's subject folder is written (frames, masks, plate, pose, expression, mel, a full-size
source video with the crop box partly outside the image), so training, rendering and the portrait
compositing run on it end to end, and what they learn can be checked against the known truth.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from headsync.core import media
from headsync.prepare.audio_features import mel_features
from headsync.subject.folder import CORE_EXPRESSIONS

RADII = np.array([0.8, 1.0, 0.85])  # head units; y is down, z away from the camera (OpenCV-like)
EYES = {"eyeBlinkRight": np.array([-0.3, -0.2]), "eyeBlinkLeft": np.array([0.3, -0.2])}  # (x, y) on the face
MOUTH_Y = 0.5
FOCAL_FRAC = 2.0  # focal length in crop widths


def template_points() -> np.ndarray:
    """478 head-space points on the face side of the ellipsoid; nose tip (1), forehead (10), chin (152)."""
    rng = np.random.default_rng(0)
    u = rng.uniform(-0.7, 0.7, (478, 2))
    pts = np.zeros((478, 3))
    pts[:, 0] = u[:, 0] * RADII[0]
    pts[:, 1] = u[:, 1] * RADII[1]
    for i, (x, y) in {1: (0.0, 0.1), 10: (0.0, -0.85), 152: (0.0, 0.9)}.items():
        pts[i, :2] = (x * RADII[0], y * RADII[1])
    r = 1 - (pts[:, 0] / RADII[0]) ** 2 - (pts[:, 1] / RADII[1]) ** 2
    pts[:, 2] = -RADII[2] * np.sqrt(np.clip(r, 0.0, 1.0))
    return pts.astype(np.float32)


def euler(rx: float, ry: float, rz: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    Rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    Ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    Rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return Rz @ Ry @ Rx


def render_head(size: int, R: np.ndarray, T: np.ndarray, mouth: float, blink: dict[str, float],
                background: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ray-cast the ellipsoid head at ``size``: (image uint8 (S, S, 3), labels uint8 (S, S))."""
    f = FOCAL_FRAC * size
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    d_cam = np.stack([(xs - size / 2) / f, (ys - size / 2) / f, np.ones_like(xs)], -1)
    d = d_cam @ R  # R^T d in row form
    o = -R.T @ T
    # |(o + t d) / radii|^2 = 1
    a = ((d / RADII) ** 2).sum(-1)
    b = 2 * ((o / RADII) * (d / RADII)).sum(-1)
    c = ((o / RADII) ** 2).sum() - 1
    disc = b * b - 4 * a * c
    hit = disc > 0
    t = (-b - np.sqrt(np.where(hit, disc, 0))) / (2 * a)
    p = o + t[..., None] * d
    img = background.astype(np.float64).copy()
    labels = np.zeros((size, size), np.uint8)
    # torso: a block at the bottom, neck above it
    labels[int(size * 0.85):, :] = 6
    img[int(size * 0.85):, :] = (60, 90, 160)
    front = hit & (p[..., 2] < 0)
    skin = np.stack([0.85 + 0.1 * np.sin(6 * p[..., 0]), 0.65 + 0.1 * np.cos(5 * p[..., 1]),
                     0.55 + 0.05 * np.sin(4 * p[..., 2])], -1) * 255
    lab = np.where(front, 1, 4).astype(np.uint8)
    col = np.where(front[..., None], skin, np.array([70.0, 50.0, 30.0]))  # hair at the back and sides
    col = np.where((hit & (p[..., 1] < -0.55 * RADII[1]))[..., None], np.array([70.0, 50.0, 30.0]), col)
    lab = np.where(hit & (p[..., 1] < -0.55 * RADII[1]), 4, lab)
    for name, (ex, ey) in EYES.items():
        open_h = 0.12 * (1 - blink[name])
        region = front & (np.abs(p[..., 0] - ex) < 0.16) & (np.abs(p[..., 1] - ey) < 0.14)
        eye = region & (np.abs(p[..., 1] - ey) < max(open_h, 1e-3)) & (np.abs(p[..., 0] - ex) < 0.14)
        col = np.where(eye[..., None], np.array([245.0, 245.0, 245.0]), col)
        pupil = eye & (np.hypot(p[..., 0] - ex, p[..., 1] - ey) < 0.06)
        col = np.where(pupil[..., None], np.array([20.0, 20.0, 60.0]), col)
        lab = np.where(region, 3, lab)
    half = 0.03 + 0.12 * mouth
    mouth_region = front & (np.abs(p[..., 0]) < 0.3) & (np.abs(p[..., 1] - MOUTH_Y) < 0.2)
    inner = front & (np.abs(p[..., 0]) < 0.25) & (np.abs(p[..., 1] - MOUTH_Y) < half)
    col = np.where(mouth_region[..., None], np.array([200.0, 90.0, 90.0]), col)
    col = np.where(inner[..., None], np.array([60.0, 10.0, 20.0]), col)
    lab = np.where(mouth_region, 2, lab)
    img = np.where(hit[..., None], col, img)
    labels = np.where(hit, lab, labels)
    return np.clip(img, 0, 255).astype(np.uint8), labels


def make_subject(root: Path, n_frames: int = 40, size: int = 48, fps: float = 25.0, seed: int = 0) -> Path:
    """Write a prepared synthetic subject into ``root`` and return it."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    (root / "frames").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    (root / "audio_features").mkdir(exist_ok=True)
    # audio: a buzz whose loudness is the mouth opening (syllables ~4 Hz)
    sr = media.AUDIO_RATE
    n_audio = int(n_frames / fps * sr)
    ts = np.arange(n_audio) / sr
    env = np.clip(np.sin(2 * np.pi * 3.1 * ts) * 0.6 + 0.4 * np.sin(2 * np.pi * 0.7 * ts + 1), 0, 1)
    audio = (0.6 * env * np.sign(np.sin(2 * np.pi * 180 * ts))).astype(np.float32)
    media.write_wav(root / "audio.wav", audio)
    mouth = np.array([env[min(int(i / fps * sr), n_audio - 1)] for i in range(n_frames)])
    # expression: blinks on a few frames, brows still
    expr = np.zeros((n_frames, 7), np.float32)
    for start in rng.choice(np.arange(2, n_frames - 4), size=max(1, n_frames // 8), replace=False):
        expr[start:start + 3, 5:7] = 1.0
    # pose: a small smooth sway
    k = np.arange(n_frames)
    rot = np.stack([0.08 * np.sin(k / 7), 0.12 * np.sin(k / 5), 0.03 * np.sin(k / 9)], -1)
    R = np.stack([euler(*r) for r in rot])
    T = np.stack([0.05 * np.sin(k / 6), 0.03 * np.cos(k / 8), np.full(n_frames, 4.2)], -1)
    plate = np.zeros((size, size, 3), np.uint8)
    plate[..., 0] = np.linspace(30, 90, size)[None, :]
    plate[..., 1] = np.linspace(60, 120, size)[:, None]
    plate[..., 2] = 110
    template = template_points()
    K_f = FOCAL_FRAC * size
    lms = np.zeros((n_frames, 478, 3), np.float32)
    # full-resolution source: the crop box (scale 2: side = 2 * size) pokes out of the top edge
    side = 2 * size
    box = [12.0, -6.0, float(side)]
    src_w, src_h = side + 30, side + 10
    sources = []
    for i in range(n_frames):
        blink = {"eyeBlinkLeft": float(expr[i, 5]), "eyeBlinkRight": float(expr[i, 6])}
        img, lab = render_head(size, R[i], T[i], float(mouth[i]), blink, plate)
        cv2.imwrite(str(root / "frames" / f"{i:06d}.jpg"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, 98])
        cv2.imwrite(str(root / "masks" / f"{i:06d}.png"), lab)
        Xc = template @ R[i].T + T[i]
        lms[i, :, 0] = K_f * Xc[:, 0] / Xc[:, 2] + size / 2
        lms[i, :, 1] = K_f * Xc[:, 1] / Xc[:, 2] + size / 2
        lms[i, :, 2] = Xc[:, 2]
        src = np.full((src_h, src_w, 3), 40, np.uint8)
        big = cv2.resize(img, (side, side), interpolation=cv2.INTER_LINEAR)
        x0, y0 = int(box[0]), int(box[1])
        src[max(y0, 0):y0 + side, x0:x0 + side] = big[max(-y0, 0):]
        sources.append(src)
    cv2.imwrite(str(root / "background.jpg"), cv2.cvtColor(plate, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 98])
    media.write_video(root / "source.mp4", iter(sources), fps, audio=root / "audio.wav", crf=10)
    np.save(root / "landmarks.npy", lms)
    np.save(root / "expression.npy", expr)
    np.savez(root / "pose.npz", R=R.astype(np.float32), T=T.astype(np.float32), focal=np.float32(K_f),
             cx=np.float32(size / 2), cy=np.float32(size / 2), image_size=np.array([size, size]), template=template)
    np.save(root / "audio_features" / "mel.npy", mel_features(audio, fps, n_frames))
    np.save(root / "mouth_truth.npy", mouth.astype(np.float32))
    manifest = {
        "schema": "headsync.subject/1",
        "source": {"path": str((root / "source.mp4").resolve()), "fps": fps, "frame_count": n_frames,
                   "width": src_w, "height": src_h},
        "crop": {"mode": "fixed", "box": box, "size": size},
        "stages": {}, "warnings": [],
        "expression_names": list(CORE_EXPRESSIONS),
    }
    (root / "subject.json").write_text(json.dumps(manifest, indent=1))
    return root


#: A [train] table small enough for tests (a 32-pixel head, a few hundred iterations in seconds).
TINY_TRAIN = {
    "resolution": 32, "coarse_iters": 200, "fine_iters": 40, "rays": 384, "patch": 16, "lips_patch": 8,
    "checkpoint_every": 100, "log_every": 20, "threads": 2,
    "audio_feature": "mel",  # the synthetic subject has no audio-visual encoder
    "compile": False,  # compiling costs more than these few iterations
}
#: The tiny NeRF: the [renderer.nerf] table and its sub-tables.
TINY_NERF = {
    "hash": {"levels": 8, "base_resolution": 8, "finest_resolution": 64, "log2_table_size": 12},
    "field": {"hidden": 32, "color_hidden": 32, "geo_feat_dim": 16},
    "march": {"samples": 24, "probes": 64, "grid_resolution": 32},
}


def toml_tables(tables: dict, prefix: str = "") -> list[str]:
    """Nested dicts as TOML tables (scalars and lists of numbers only)."""
    lines, subs = [], []
    for k, v in tables.items():
        if isinstance(v, dict):
            subs.append((k, v))
        else:
            lines.append(f"{k} = {str(v).lower() if isinstance(v, bool) else json.dumps(v)}")
    out = ([f"[{prefix}]"] + lines if prefix and lines else lines)
    for k, v in subs:
        out += toml_tables(v, f"{prefix}.{k}" if prefix else k)
    return out


def write_preset(path: Path, renderer: dict | None = None, **overrides) -> Path:
    """A preset file with the tiny [train] table (``overrides`` replace its values) and the tiny
    [renderer.nerf] tables (``renderer``: extra renderer tables, e.g. ``{"constant": {...}}``)."""
    tables = {"train": {**TINY_TRAIN, **overrides}, "renderer": {"nerf": TINY_NERF, **(renderer or {})}}
    path.write_text("\n".join(toml_tables(tables)) + "\n")
    return path


def trained_subject(root: Path, **overrides) -> Path:
    """A synthetic subject with a tiny trained run ``default`` (seconds on two cores)."""
    from headsync import tasks
    from headsync.core.progress import silent

    make_subject(root)
    preset = write_preset(root.parent / "tiny.toml", **overrides)
    tasks.run("train", {"subject": str(root), "preset": str(preset)}, silent())
    return root
