#!/usr/bin/env python3
"""Make the HeadSync sample subject `backend/headsync/sample/` (package data).

A still portrait (scikit-image's public-domain NASA photo of Eileen Collins,
``skimage.data.astronaut()``) is animated into a 25 fps talking-head video by
real image warping driven by real speech (public-domain LibriVox clips in
``sample_projects/speech/``):

* the jaw and lower lip drop with a per-frame mouth opening computed from the
  audio (RMS envelope + vowel-weighted spectral shaping), and a dark soft-edged
  mouth cavity appears between the lips;
* random blinks (sometimes a partial single-eye one) squash the eye towards
  the lower lid while the upper-lid skin is stretched down over it;
* occasional brow raises and frowns move the brow region up/down;
* a small smooth 3D head motion (yaw/pitch/roll + translation) is applied by
  giving the head a depth surface (ellipsoid + MediaPipe face-mesh relief),
  rotating it about a pivot behind the face and re-projecting it through a
  pinhole camera, blended into a still background with a soft head mask.

Everything the warps do is written as ground truth to ``ground_truth.npz``.
MediaPipe FaceMesh / SelfieSegmentation run once, on the still image.
The result is deterministic (fixed seed).

Usage::

    python sample_projects/make_sample.py [--out DIR] [--seconds S] [--png DIR]

Run time is well under two minutes on two CPU cores.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SPEECH_DIR = HERE / "speech"
DEFAULT_OUT = HERE.parent / "backend" / "headsync" / "sample"  # package data: the installed demo finds it

CLIPS = [f"sense_and_sensibility_01_austen_64kb-0{n}.wav" for n in (870, 880, 890, 920, 930)]
LEAD_IN_S, GAP_S, TAIL_S = 0.2, 0.25, 0.2  # silence around / between the clips

FPS = 25
SR = 16000
SIZE = 512
SEED = 20250521
FOCAL = 1100.0  # pinhole focal length in pixels; principal point = image centre

CORE_NAMES = ["browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft",
              "browOuterUpRight", "eyeBlinkLeft", "eyeBlinkRight"]
BROW_NAMES = ["browInnerUp", "browOuterUpLeft", "browOuterUpRight", "browDownLeft", "browDownRight"]

# MediaPipe FaceMesh indices.  "R" = the subject's right (image left),
# "L" = the subject's left (image right), as ARKit names them.
LIP_UPPER_INNER = [78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308]
LIP_LOWER_INNER = [78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308]
EYE_R_UPPER = [33, 246, 161, 160, 159, 158, 157, 173, 133]
EYE_R_LOWER = [33, 7, 163, 144, 145, 153, 154, 155, 133]
EYE_L_UPPER = [263, 466, 388, 387, 386, 385, 384, 398, 362]
EYE_L_LOWER = [263, 249, 390, 373, 374, 380, 381, 382, 362]
BROW_R_UPPER, BROW_R_LOWER = [70, 63, 105, 66, 107], [46, 53, 52, 65, 55]
BROW_L_UPPER, BROW_L_LOWER = [300, 293, 334, 296, 336], [276, 283, 282, 295, 285]
JAW = [234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397,
       288, 361, 323, 454]
FACE_OVAL = [10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378,
             400, 377, 152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54,
             103, 67, 109]


def smoothstep(t):
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def curve(lm, ids):
    """y(x) of a landmark chain, as (xs, ys) sorted by x (for np.interp)."""
    pts = lm[ids, :2]
    order = np.argsort(pts[:, 0], kind="stable")
    xs, ys = pts[order, 0], pts[order, 1]
    # np.interp needs increasing xs; nudge duplicates apart.
    xs = xs + np.arange(len(xs)) * 1e-6
    return xs, ys


# --------------------------------------------------------------------------------------------
# audio and the ground-truth tracks
# --------------------------------------------------------------------------------------------

def load_speech(speech_dir: Path) -> np.ndarray:
    import soundfile as sf

    parts = [np.zeros(int(LEAD_IN_S * SR), np.float32)]
    for i, name in enumerate(CLIPS):
        path = speech_dir / name
        if not path.exists():
            sys.exit(f"missing speech clip {path} (the committed copies live in {speech_dir})")
        x, sr = sf.read(str(path), dtype="float32", always_2d=True)
        if sr != SR:
            sys.exit(f"{path}: expected {SR} Hz, got {sr}")
        parts.append(x.mean(axis=1))
        if i < len(CLIPS) - 1:
            parts.append(np.zeros(int(GAP_S * SR), np.float32))
    parts.append(np.zeros(int(TAIL_S * SR), np.float32))
    audio = np.concatenate(parts)
    hop = SR // FPS
    n_frames = int(np.ceil(len(audio) / hop))
    return np.pad(audio, (0, n_frames * hop - len(audio)))  # exactly n_frames * hop samples


def mouth_opening(audio: np.ndarray, n_frames: int) -> np.ndarray:
    """Per-video-frame mouth opening in [0, 1].

    40 ms window centred on the middle of each frame's display interval,
    t_i = (i + 0.5) / fps.  RMS energy, weighted by how much of the spectrum
    lies in the vowel/first-formant band (250-1500 Hz) rather than the
    fricative band (2.5-8 kHz), loudness-compressed, gated, smoothed and
    normalised by the 97th percentile.
    """
    from scipy.ndimage import gaussian_filter1d

    win = int(0.040 * SR)
    hop = SR // FPS
    padded = np.pad(audio, (win, win))
    centres = ((np.arange(n_frames) + 0.5) * hop).astype(int) + win
    idx = centres[:, None] + np.arange(win)[None, :] - win // 2
    seg = padded[idx]  # (N, win)
    rms = np.sqrt(np.mean(seg ** 2, axis=1))
    spec = np.abs(np.fft.rfft(seg * np.hanning(win)[None, :], n=1024, axis=1)) ** 2
    freqs = np.fft.rfftfreq(1024, 1.0 / SR)
    vowel = spec[:, (freqs >= 250) & (freqs < 1500)].sum(1)
    fric = spec[:, (freqs >= 2500) & (freqs < 8000)].sum(1)
    ratio = vowel / (vowel + fric + 1e-12)
    o = (rms * (0.3 + 0.7 * ratio)) ** 0.8
    p97 = np.percentile(o, 97)
    o = np.clip((o - 0.15 * p97) / (0.85 * p97), 0.0, None)  # gate: lips close in pauses
    o = gaussian_filter1d(o, 0.9, mode="nearest")
    o = o / max(np.percentile(o, 97), 1e-9)
    return np.clip(o, 0.0, 1.0).astype(np.float32)


def dub_truth(out: Path) -> dict[str, np.ndarray]:
    """The mouth opening of the held-back dubbing audio ``out/dub.wav`` at FPS (what eval correlates a
    render of it with), and the sha256 of that file; empty without it. Stored in ground_truth.npz so that
    eval reads data only and never runs this script."""
    import hashlib

    import soundfile as sf

    dub = out / "dub.wav"
    if not dub.is_file():
        return {}
    audio, sr = sf.read(str(dub), dtype="float32", always_2d=True)
    if sr != SR:
        sys.exit(f"{dub}: expected {SR} Hz, got {sr}")
    audio = audio.mean(axis=1)
    n = int(round(audio.size / SR * FPS))
    return {"dub_mouth_open": mouth_opening(audio, n),
            "dub_sha256": np.array(hashlib.sha256(dub.read_bytes()).hexdigest())}


def add_dub_truth(out: Path) -> None:
    """Add (or refresh) the dub's truth in an existing ``out/ground_truth.npz``, the rest unchanged."""
    path = out / "ground_truth.npz"
    gt = dict(np.load(path))
    gt.update(dub_truth(out))
    tmp = path.with_name(".ground_truth.tmp.npz")
    np.savez_compressed(tmp, **gt)
    os.replace(tmp, path)


def blink_track(n: int, rng: np.random.Generator):
    """(N, 2) eyeBlinkLeft/Right in [0, 1] and (K, 3) events [start, end, eye]."""
    blink = np.zeros((n, 2), np.float32)
    events = []
    t = rng.uniform(0.8, 2.0)
    frames = np.arange(n) / FPS
    while True:
        dur = rng.uniform(0.15, 0.25)
        peak = round((t + 0.4 * dur) * FPS) / FPS  # the closed instant falls on a frame
        t0 = peak - 0.4 * dur
        if t0 + dur > (n - 1) / FPS:
            break
        u = (frames - t0) / dur
        prof = np.where(u < 0.4, np.sin(0.5 * np.pi * np.clip(u / 0.4, 0, 1)) ** 2,
                        np.cos(0.5 * np.pi * np.clip((u - 0.4) / 0.6, 0, 1)) ** 2)
        prof[(u < 0) | (u > 1)] = 0.0
        if rng.uniform() < 0.2:  # occasional partial single-eye blink
            eye = int(rng.integers(0, 2))
            amp = np.zeros(2)
            amp[eye] = rng.uniform(0.35, 0.65)
        else:
            eye = 2
            amp = np.full(2, rng.uniform(0.9, 1.0))
        vals = prof[:, None] * amp[None, :]
        blink = np.maximum(blink, vals.astype(np.float32))
        active = np.nonzero(prof > 0.02)[0]
        events.append([int(active[0]), int(active[-1]), eye])
        t = t0 + dur + rng.uniform(2.0, 6.0) - dur
    return blink, np.array(events, dtype=np.int64).reshape(-1, 3)


def envelope(frames_t, t0, dur, attack, release):
    """Smooth 0-1-0 envelope: raised-cosine attack, hold, raised-cosine release."""
    a = smoothstep((frames_t - t0) / attack)
    r = smoothstep((t0 + dur - frames_t) / release)
    return np.minimum(a, r)


def brow_track(n: int, rng: np.random.Generator) -> np.ndarray:
    """(N, 5) in BROW_NAMES order: raises (both brows, sometimes one) and frowns."""
    brow = np.zeros((n, 5), np.float32)
    ft = np.arange(n) / FPS
    t = rng.uniform(1.5, 3.0)
    while True:
        kind = rng.choice(["raise", "raise_one", "frown"], p=[0.55, 0.15, 0.30])
        dur = rng.uniform(0.5, 1.5) if kind != "frown" else rng.uniform(0.8, 2.0)
        if t + dur > (n - 2) / FPS:
            break
        env = envelope(ft, t, dur, 0.15, 0.25)
        v = np.zeros(5)
        if kind == "raise":
            v[0] = rng.uniform(0.6, 1.0)
            v[1] = rng.uniform(0.5, 0.9)
            v[2] = np.clip(v[1] + rng.uniform(-0.1, 0.1), 0, 1)
        elif kind == "raise_one":
            side = int(rng.integers(0, 2))
            v[0] = rng.uniform(0.1, 0.3)
            v[1 + side] = rng.uniform(0.6, 0.9)
        else:
            v[3] = rng.uniform(0.5, 0.9)
            v[4] = np.clip(v[3] + rng.uniform(-0.1, 0.1), 0, 1)
        brow = np.maximum(brow, (env[:, None] * v[None, :]).astype(np.float32))
        t = t + dur + rng.uniform(1.5, 4.0)
    return brow


def head_pose_track(n: int, rng: np.random.Generator):
    """Smooth euler (pitch, yaw, roll) in radians and translation, sums of slow sinusoids."""
    ft = np.arange(n) / FPS

    def signal(limit):
        s = np.zeros(n)
        for _ in range(3):
            f = rng.uniform(0.06, 0.35)
            s += rng.uniform(0.4, 1.0) * np.sin(2 * np.pi * f * ft + rng.uniform(0, 2 * np.pi))
        return s * (0.95 * limit / np.abs(s).max())

    euler = np.stack([np.radians(signal(5.0)), np.radians(signal(8.0)), np.radians(signal(4.0))], 1)
    trans = np.stack([signal(5.0), signal(3.0), signal(20.0)], 1)
    return euler.astype(np.float64), trans.astype(np.float64)


def euler_to_matrix(e):
    """R = Rz(roll) @ Ry(yaw) @ Rx(pitch) (x applied first) in the OpenCV camera frame."""
    rx, ry, rz = e
    cx_, sx = np.cos(rx), np.sin(rx)
    cy_, sy = np.cos(ry), np.sin(ry)
    cz, sz = np.cos(rz), np.sin(rz)
    Rx = np.array([[1, 0, 0], [0, cx_, -sx], [0, sx, cx_]])
    Ry = np.array([[cy_, 0, sy], [0, 1, 0], [-sy, 0, cy_]])
    Rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return Rz @ Ry @ Rx


# --------------------------------------------------------------------------------------------
# the face rig: expression warps in the canonical (still) image
# --------------------------------------------------------------------------------------------

class FaceRig:
    """Vertical displacement fields for jaw, eyelids and brows, plus overlays.

    All expression warps move pixels vertically, so the forward field
    y -> y + D(x, y) is monotone per column and is inverted exactly, column by
    column, with one vectorised np.interp.
    """

    def __init__(self, img: np.ndarray, lm: np.ndarray):
        self.img = img
        self.lm = lm
        h, w = img.shape[:2]
        self.face_h = float(np.linalg.norm(lm[10, :2] - lm[152, :2]))
        self.half_w = 0.5 * float(abs(lm[454, 0] - lm[234, 0]))
        fh = self.face_h

        # mouth
        self.xm = 0.5 * (lm[78, 0] + lm[308, 0])
        self.mw = 0.5 * abs(lm[308, 0] - lm[78, 0])
        self.lower_inner = curve(lm, LIP_LOWER_INNER)
        self.upper_inner = curve(lm, LIP_UPPER_INNER)
        self.jaw = curve(lm, JAW)
        self.jaw_amp = 0.085 * fh  # lower-lip drop at mouth_open = 1 (pixels)

        # eyes: (x range, upper lid, lower lid, anchor above = brow lower edge)
        self.eyes = []
        for up, lo, bl in ((EYE_L_UPPER, EYE_L_LOWER, BROW_L_LOWER),
                           (EYE_R_UPPER, EYE_R_LOWER, BROW_R_LOWER)):
            xu, yu = curve(lm, up)
            xl, yl = curve(lm, lo)
            xb, yb = curve(lm, bl)
            self.eyes.append(dict(x0=xu[0], x1=xu[-1], up=(xu, yu), lo=(xl, yl), brow=(xb, yb),
                                  skin=None))

        # brows: centre line, inner/outer ends; index 0 = subject's left (image right)
        self.brows = []
        for up, lo, eye in ((BROW_L_UPPER, BROW_L_LOWER, self.eyes[0]),
                            (BROW_R_UPPER, BROW_R_LOWER, self.eyes[1])):
            xu, yu = curve(lm, up)
            xl, yl = curve(lm, lo)
            xs = np.linspace(min(xu[0], xl[0]), max(xu[-1], xl[-1]), 24)
            yc = 0.5 * (np.interp(xs, xu, yu) + np.interp(xs, xl, yl))
            inner_x = lm[up[-1], 0]
            outer_x = lm[up[0], 0]
            self.brows.append(dict(xs=xs, yc=yc, inner_x=inner_x, outer_x=outer_x, eye=eye))
        self.brow_up_amp = 0.065 * fh
        self.brow_down_amp = 0.04 * fh

        # region of interest: all fields are zero outside it
        x0 = int(lm[FACE_OVAL, 0].min() - 0.3 * fh)
        x1 = int(lm[FACE_OVAL, 0].max() + 0.3 * fh)
        y0 = int(min(b["yc"].min() for b in self.brows) - 0.45 * fh)
        y1 = int(lm[152, 1] + 0.45 * fh)
        self.roi = (max(x0, 0), min(x1, w), max(y0, 0), min(y1, h))
        X0, X1, Y0, Y1 = self.roi
        self.step = 0.25
        self.ys_fine = np.arange(Y0, Y1 - 1 + 1e-6, self.step)
        self.xs = np.arange(X0, X1, dtype=np.float64)

        # skin colour above each eye (between brow and lid) for the closed lid
        for e in self.eyes:
            xx = np.arange(int(e["x0"]) + 2, int(e["x1"]) - 1)
            ya = np.interp(xx, *e["brow"]) + 2
            yu = np.interp(xx, *e["up"]) - 2
            samples = []
            for x, a, b in zip(xx, ya, yu):
                for y in range(int(np.ceil(a)), int(np.floor(b)) + 1):
                    samples.append(img[y, x])
            e["skin"] = np.median(np.array(samples, np.float32), axis=0) if samples else \
                np.array([200, 160, 140], np.float32)

        self._static_curves()

    def _static_curves(self):
        xs = self.xs
        fh, hw = self.face_h, self.half_w
        dx = np.abs(xs - self.xm)
        # lip split: just above the lower lip's inner edge (bottom of the upper teeth)
        xl, yl = self.lower_inner
        self.split = np.interp(xs, xl, yl) - 0.5
        J = 1.0 - smoothstep((dx - 0.45 * hw) / (0.65 * hw))
        lens = np.sqrt(np.clip(1.0 - (dx / self.mw) ** 2, 0.0, 1.0)) ** 0.8
        self.J, self.lens = J, lens * J
        self.jaw_y = np.interp(xs, *self.jaw)
        self.chin_fall = 0.3 * fh
        self.slow_len = max(float(self.lm[152, 1] - self.split.max()), 6.0)
        # brows: horizontal weights for inner/outer raise and frown per brow
        self.brow_h = []
        for b in self.brows:
            lo, hi = min(b["inner_x"], b["outer_x"]), max(b["inner_x"], b["outer_x"])
            s = np.clip((xs - b["inner_x"]) / (b["outer_x"] - b["inner_x"]), 0.0, 1.0)
            outside = np.maximum(lo - xs, 0) + np.maximum(xs - hi, 0)
            fade = np.exp(-0.5 * (outside / (0.07 * fh)) ** 2)
            w_out = smoothstep(s)
            yc = np.interp(xs, b["xs"], b["yc"])
            e = b["eye"]
            in_eye = (xs > e["x0"]) & (xs < e["x1"])
            lid = np.where(in_eye, np.interp(xs, *e["up"]) - 0.5, yc + 0.1 * fh)
            below = np.maximum(lid - yc, 2.0)
            self.brow_h.append(dict(inner=(1 - w_out) * fade, outer=w_out * fade,
                                    down=(1.0 - 0.4 * s) * fade, yc=yc, below=below))
        # eyes
        self.eye_c = []
        for e in self.eyes:
            inside = (xs > e["x0"]) & (xs < e["x1"])
            yu = np.interp(xs, *e["up"])
            yl = np.maximum(np.interp(xs, *e["lo"]), yu)
            ya = np.minimum(np.interp(xs, *e["brow"]) + 1.5, yu - 3.0)
            self.eye_c.append(dict(inside=inside, yu=yu, yl=yl, ya=ya, h=(yl - yu) * inside))

    # forward vertical displacement D(x, y) on the ROI grid (columns xs, rows ys)
    def displacement(self, ys, mouth, blink, brow):
        Y = ys[:, None]
        D = np.zeros((len(ys), len(self.xs)))
        # jaw / lower lip
        if mouth > 1e-4:
            A = self.jaw_amp * mouth
            t = Y - self.split[None, :]
            fast = smoothstep(t / 1.5)
            slow = smoothstep(t / self.slow_len)
            cf = 1.0 - smoothstep((Y - (self.jaw_y[None, :] - 4.0)) / self.chin_fall)
            D += A * (fast * self.lens + slow * (self.J - self.lens)) * cf
            up = -0.15 * (1.0 - smoothstep(-t / 10.0)) * (t < 0) * self.lens
            D += A * up
        # brows
        vals = dict(zip(BROW_NAMES, brow))
        for side, bh in zip(("Left", "Right"), self.brow_h):
            v = (-self.brow_up_amp * (vals["browInnerUp"] * bh["inner"]
                                      + vals[f"browOuterUp{side}"] * bh["outer"])
                 + self.brow_down_amp * vals[f"browDown{side}"] * bh["down"])
            if np.abs(v).max() < 1e-4:
                continue
            t = Y - bh["yc"][None, :]
            P = np.where(t >= 0, 1.0 - smoothstep(t / bh["below"][None, :]),
                         1.0 - smoothstep(-t / (0.35 * self.face_h)))
            D += v[None, :] * P
        # eyelids (index 0 = left eye = image right)
        for b, ec in zip(blink, self.eye_c):
            b = min(float(b), 0.985)
            if b < 1e-4:
                continue
            ya, yu, yl, h = ec["ya"][None, :], ec["yu"][None, :], ec["yl"][None, :], ec["h"][None, :]
            r1 = (Y >= ya) & (Y <= yu)
            r2 = (Y > yu) & (Y <= yl)
            D += np.where(r1, b * h * (Y - ya) / np.maximum(yu - ya, 1e-3), 0.0)
            D += np.where(r2, b * (yl - Y), 0.0) * (h > 0)
        return D

    def maps(self, mouth, blink, brow):
        """Backward maps (map_x, map_y) of the full image and an RGBA overlay layer."""
        H, W = self.img.shape[:2]
        X0, X1, Y0, Y1 = self.roi
        map_x, map_y = np.meshgrid(np.arange(W, dtype=np.float32), np.arange(H, dtype=np.float32))
        D = self.displacement(self.ys_fine, mouth, blink, brow)
        fwd = self.ys_fine[:, None] + D  # (R, C), non-decreasing down each column
        ncol = fwd.shape[1]
        big = 4.0 * H
        offs = np.arange(ncol) * big
        xp = (fwd + offs[None, :]).T.ravel()
        fp = np.tile(self.ys_fine, ncol)
        rows = np.arange(Y0, Y1 - 1, dtype=np.float64)
        q = (rows[:, None] + offs[None, :]).T.ravel()
        src = np.interp(q, xp, fp).reshape(ncol, len(rows)).T
        map_y[Y0:Y1 - 1, X0:X1] = src.astype(np.float32)

        overlay = np.zeros((H, W, 4), np.float32)
        Yp = rows[:, None]
        ov = overlay[Y0:Y1 - 1, X0:X1]
        # mouth cavity between the (raised) upper teeth edge and the dropped lower lip
        if mouth > 1e-3:
            A = self.jaw_amp * mouth
            top = self.split - 0.15 * A * self.lens - 0.2
            gap = A * self.lens
            bot = self.split + gap + 0.6
            a = smoothstep((Yp - top[None, :]) / 1.2 + 0.5) * smoothstep((bot[None, :] - Yp) / 1.2 + 0.5)
            a *= np.clip(gap / 2.0, 0, 1)[None, :] * 0.96
            f = np.clip((Yp - top[None, :]) / np.maximum(bot - top, 1.0)[None, :], 0, 1)
            col = (np.array([22, 9, 8])[None, None, :] * (1 - f[..., None])
                   + np.array([78, 30, 28])[None, None, :] * f[..., None] ** 1.5)
            # a faint hint of the lower teeth just above the lower lip
            teeth_h = np.minimum(0.22 * gap, 2.5)
            tz = smoothstep((Yp - (bot - 0.6 - teeth_h)[None, :]) / 1.0) * \
                smoothstep((bot[None, :] - 0.3 - Yp) / 1.0)
            tz *= (np.abs(self.xs - self.xm) < 0.55 * self.mw)[None, :] * np.clip(gap / 6.0, 0, 1)
            col = col * (1 - 0.4 * tz[..., None]) + np.array([200, 190, 178]) * 0.4 * tz[..., None]
            ov[..., :3] = col * a[..., None]
            ov[..., 3] = a
        # closed lids: blend the stretched lid skin towards the sampled lid colour
        for b, ec, e in zip(blink, self.eye_c, self.eyes):
            b = min(float(b), 0.985)
            if b < 0.05:
                continue
            top = ec["yu"] - 0.5
            bot = ec["yu"] + b * ec["h"] - 1.0
            a = smoothstep((Yp - top[None, :]) / 1.5) * smoothstep((bot[None, :] - Yp) / 1.5)
            a *= (ec["h"] > 0.5)[None, :] * 0.5 * b
            # premultiplied "over" compositing onto the existing overlay
            ov[..., :3] = ov[..., :3] * (1 - a[..., None]) + e["skin"][None, None, :] * a[..., None]
            ov[..., 3] = ov[..., 3] * (1 - a) + a
        return map_x, map_y, overlay


# --------------------------------------------------------------------------------------------
# the head rig: 3D head motion
# --------------------------------------------------------------------------------------------

class HeadRig:
    def __init__(self, img, lm, person_mask, focal=FOCAL):
        from scipy.interpolate import griddata
        from scipy.ndimage import gaussian_filter
        import cv2

        H, W = img.shape[:2]
        self.H, self.W = H, W
        self.f = float(focal)
        self.cx, self.cy = W / 2.0, H / 2.0
        self.z0 = self.f  # reference depth: 1 camera unit ~ 1 pixel at the face
        fh = float(np.linalg.norm(lm[10, :2] - lm[152, :2]))
        hw = 0.5 * float(abs(lm[454, 0] - lm[234, 0]))
        xf = 0.5 * (lm[234, 0] + lm[454, 0])
        yf = 0.5 * (lm[10, 1] + lm[152, 1])

        xx, yy = np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64))
        # ellipsoid head (hair included)
        ax, ay, az = 1.25 * hw, 0.8 * fh, 1.1 * hw
        hx, hy = xf, yf - 0.1 * fh
        r2 = ((xx - hx) / ax) ** 2 + ((yy - hy) / ay) ** 2
        z_ell = -az * np.sqrt(np.clip(1.0 - r2, 0.0, 1.0))
        z_ell = gaussian_filter(z_ell, 4.0)
        # face relief from the face mesh (MediaPipe z is in the same scale as x)
        zl = lm[:, 2]
        ze = z_ell[np.clip(lm[:, 1].round().astype(int), 0, H - 1),
                   np.clip(lm[:, 0].round().astype(int), 0, W - 1)]
        res = zl - ze
        res -= np.median(res[FACE_OVAL])
        rel = griddata(lm[:, :2], res, (xx, yy), method="linear", fill_value=0.0)
        oval = np.zeros((H, W), np.float32)
        cv2.fillPoly(oval, [lm[FACE_OVAL, :2].round().astype(np.int32)], 1.0)
        oval = gaussian_filter(cv2.erode(oval, np.ones((7, 7), np.uint8)), 3.0)
        rel = gaussian_filter(rel * oval, 1.5)
        self.Z = self.z0 + z_ell + rel
        self.depth_relief = self.Z - self.z0

        # soft head weight: person mask x head ellipse x fade below the chin
        pm = gaussian_filter(person_mask.astype(np.float64), 2.0)
        e2 = ((xx - hx) / (ax * 1.3)) ** 2 + ((yy - hy) / (ay * 1.25)) ** 2
        ell = 1.0 - smoothstep((np.sqrt(e2) - 0.85) / 0.3)
        chin = lm[152, 1]
        fade = 1.0 - smoothstep((yy - (chin + 4.0)) / (0.35 * fh))
        self.weight = gaussian_filter(pm * ell * fade, 5.0)

        # canonical 3D points (camera frame, OpenCV axes)
        self.P = np.stack([(xx - self.cx) * self.Z / self.f, (yy - self.cy) * self.Z / self.f, self.Z], -1)
        # pivot: behind the face, at the level of the mouth (top of the neck)
        pz = self.z0 + 0.6 * az
        self.pivot = np.array([(xf - self.cx) * pz / self.f, (lm[13, 1] - self.cy) * pz / self.f, pz])
        self.xx, self.yy = xx, yy

    def maps(self, R, T):
        import cv2

        P = self.P - self.pivot
        Pr = P @ R.T + self.pivot + T
        u = self.f * Pr[..., 0] / Pr[..., 2] + self.cx
        v = self.f * Pr[..., 1] / Pr[..., 2] + self.cy
        d = np.stack([(u - self.xx) * self.weight, (v - self.yy) * self.weight], -1).astype(np.float32)
        px, py = self.xx.astype(np.float32), self.yy.astype(np.float32)
        qx, qy = px - d[..., 0], py - d[..., 1]
        for _ in range(5):  # fixed point of q = p - d(q)
            dq = cv2.remap(d, qx, qy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            qx, qy = px - dq[..., 0], py - dq[..., 1]
        return qx, qy


# --------------------------------------------------------------------------------------------

def analyse_still(img):
    import mediapipe as mp

    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True,
                                         max_num_faces=1) as fm:
        res = fm.process(img)
    if not res.multi_face_landmarks:
        sys.exit("MediaPipe found no face in the still image")
    H, W = img.shape[:2]
    lm = np.array([[p.x * W, p.y * H, p.z * W] for p in res.multi_face_landmarks[0].landmark])
    with mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0) as seg:
        mask = seg.process(img).segmentation_mask
    return lm, np.asarray(mask, np.float32)


def render_frame(img, face, head, mouth, blink, brow, R, T):
    import cv2

    ex, ey, ov = face.maps(mouth, blink, brow)
    qx, qy = head.maps(R, T)
    fx = cv2.remap(ex, qx, qy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    fy = cv2.remap(ey, qx, qy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    out = cv2.remap(img, fx, fy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT).astype(np.float32)
    ovw = cv2.remap(ov, qx, qy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    out = out * (1.0 - ovw[..., 3:4]) + ovw[..., :3]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    ap.add_argument("--speech", type=Path, default=SPEECH_DIR, help="folder with the speech clips")
    ap.add_argument("--seconds", type=float, default=None, help="only render the first S seconds (testing)")
    ap.add_argument("--png", type=Path, default=None, help="also write every frame as PNG here (inspection)")
    ap.add_argument("--crf", type=int, default=27)
    ap.add_argument("--dub-truth-only", action="store_true",
                    help="only add the truth of OUT/dub.wav to an existing OUT/ground_truth.npz")
    args = ap.parse_args(argv)
    if args.dub_truth_only:
        add_dub_truth(args.out)
        print(f"added the truth of {args.out / 'dub.wav'} to {args.out / 'ground_truth.npz'}")
        return

    import cv2
    import imageio_ffmpeg
    import skimage.data
    import soundfile as sf

    t_start = time.time()
    os.environ.setdefault("GLOG_minloglevel", "2")
    rng = np.random.default_rng(SEED)
    img = np.ascontiguousarray(skimage.data.astronaut()[..., :3])
    H, W = img.shape[:2]
    audio = load_speech(args.speech)
    n = len(audio) // (SR // FPS)
    if args.seconds:
        n = min(n, int(round(args.seconds * FPS)))
        audio = audio[: n * (SR // FPS)]

    mouth = mouth_opening(audio, n)
    blink, blink_events = blink_track(n, rng)
    brow = brow_track(n, rng)
    euler, trans = head_pose_track(n, rng)
    Rs = np.stack([euler_to_matrix(e) for e in euler])

    lm, person = analyse_still(img)
    face = FaceRig(img, lm)
    head = HeadRig(img, lm, person)

    args.out.mkdir(parents=True, exist_ok=True)
    if args.png:
        args.png.mkdir(parents=True, exist_ok=True)
    video = args.out / "video.mp4"
    tmp_video = args.out / ".video.tmp.mp4"
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    with tempfile.TemporaryDirectory() as td:
        wav = Path(td) / "speech.wav"
        sf.write(str(wav), audio, SR, subtype="PCM_16")
        cmd = [ffmpeg, "-hide_banner", "-loglevel", "error", "-y",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{W}x{H}", "-r", str(FPS), "-i", "-",
               "-i", str(wav), "-map", "0:v:0", "-map", "1:a:0",
               "-c:v", "libx264", "-preset", "medium", "-crf", str(args.crf), "-pix_fmt", "yuv420p",
               "-g", str(2 * FPS), "-c:a", "aac", "-b:a", "48k", "-ar", str(SR), "-ac", "1",
               "-movflags", "+faststart", "-fflags", "+bitexact", "-flags:v", "+bitexact",
               "-flags:a", "+bitexact", "-map_metadata", "-1", "-f", "mp4", str(tmp_video)]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE)
        try:
            for i in range(n):
                brow_i = brow[i]
                frame = render_frame(img, face, head, float(mouth[i]), blink[i], brow_i, Rs[i], trans[i])
                proc.stdin.write(frame.tobytes())
                if args.png:
                    cv2.imwrite(str(args.png / f"{i:06d}.png"), frame[..., ::-1])
                if sys.stderr.isatty() and i % 25 == 0:
                    print(f"\rframe {i}/{n}", end="", file=sys.stderr)
        finally:
            proc.stdin.close()
            rc = proc.wait()
        if rc != 0:
            sys.exit(f"ffmpeg failed with exit code {rc}")
    os.replace(tmp_video, video)

    expression = np.stack([brow[:, 3], brow[:, 4], brow[:, 0], brow[:, 1], brow[:, 2],
                           blink[:, 0], blink[:, 1]], 1).astype(np.float32)
    np.savez_compressed(
        args.out / "ground_truth.npz",
        mouth_open=mouth,
        blink=blink,
        blink_names=np.array(["eyeBlinkLeft", "eyeBlinkRight"]),
        blink_events=blink_events,
        brow=brow,
        brow_names=np.array(BROW_NAMES),
        expression=expression,
        names=np.array(CORE_NAMES),
        rotation_euler_xyz=euler.astype(np.float32),
        rotation_matrix=Rs.astype(np.float32),
        translation=trans.astype(np.float32),
        translation_units=np.array("camera units: the head's reference depth is Z = depth_reference "
                                   "(= focal), so 1 unit of X/Y is about 1 image pixel at the face"),
        pivot=head.pivot.astype(np.float32),
        depth_reference=np.float32(head.z0),
        focal=np.float32(FOCAL),
        cx=np.float32(head.cx),
        cy=np.float32(head.cy),
        image_size=np.array([W, H], np.int32),
        fps=np.float32(FPS),
        sample_rate=np.int32(SR),
        frame_count=np.int32(n),
        still_landmarks=lm.astype(np.float32),
        seed=np.int64(SEED),
        **dub_truth(args.out),
    )
    if sys.stderr.isatty():
        print("", file=sys.stderr)
    print(f"wrote {video} ({video.stat().st_size} bytes, {n} frames, {n / FPS:.2f} s) and "
          f"{args.out / 'ground_truth.npz'} in {time.time() - t_start:.1f} s")


if __name__ == "__main__":
    main()
