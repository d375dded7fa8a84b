"""Audio features aligned to video frames: one row per video frame.

``mel``: log-mel spectrogram (16 kHz, 80 mel bands, 25 ms windows every 10 ms), averaged over each video
frame's span ``[i/fps - 0.5/fps, i/fps + 0.5/fps)`` so row ``i`` describes the sound *at* frame ``i``.
The learned feature (``ave``) is computed by its own module with the same alignment.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.media import AUDIO_RATE
from ..core.progress import Reporter
from ..core.atomic import save_npy_atomic
from ..subject.folder import Subject

NAME = "mel"
VERSION = 1
REQUIRES = ("audio",)

N_FFT = 512
WIN = 400  # 25 ms
HOP = 160  # 10 ms -> 100 mel frames per second


@dataclass(frozen=True)
class Config:
    n_mels: int = 80
    fmin: float = 55.0
    fmax: float = 7600.0


def mel_filterbank(n_mels: int, n_fft: int = N_FFT, rate: int = AUDIO_RATE, fmin: float = 55.0,
                   fmax: float = 7600.0) -> np.ndarray:
    """Triangular mel filters (HTK mel scale, area-normalised), shape (n_mels, n_fft // 2 + 1)."""
    def hz_to_mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    def mel_to_hz(m):
        return 700.0 * (10 ** (np.asarray(m) / 2595.0) - 1.0)

    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    bins = np.linspace(0, rate / 2, n_fft // 2 + 1)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    fb = np.maximum(0, np.minimum((bins - lo) / (mid - lo), (hi - bins) / (hi - mid)))
    fb *= (2.0 / (hi - lo))  # equal area, so bands are comparable
    return fb.astype(np.float32)


def log_mel(audio: np.ndarray, cfg: Config = Config()) -> np.ndarray:
    """Log-mel spectrogram of 16 kHz mono audio, shape (T, n_mels), T = ceil(len / HOP), 100 rows/s.

    Row ``t`` is centred on sample ``t * HOP`` (the signal is reflect-padded by WIN // 2).
    """
    audio = np.asarray(audio, np.float32)
    pad = np.pad(audio, (WIN // 2, WIN // 2 + HOP), mode="reflect" if audio.size > WIN else "constant")
    n = int(np.ceil(audio.size / HOP))
    idx = np.arange(WIN)[None, :] + HOP * np.arange(n)[:, None]
    frames = pad[idx] * np.hanning(WIN).astype(np.float32)
    spec = np.abs(np.fft.rfft(frames, n=N_FFT, axis=1)) ** 2
    mel = spec @ mel_filterbank(cfg.n_mels, fmin=cfg.fmin, fmax=cfg.fmax).T
    return np.log(mel + 1e-6).astype(np.float32)


def per_video_frame(feat: np.ndarray, rate_hz: float, fps: float, n_frames: int) -> np.ndarray:
    """Average feature rows (``rate_hz`` rows/s) over each video frame's span: (n_frames, D).

    Frame ``i`` covers ``[(i - 0.5) / fps, (i + 0.5) / fps)``; rows past the end repeat the last row,
    so a video slightly longer than its audio still gets a feature per frame.
    """
    t = np.arange(feat.shape[0]) / rate_hz
    idx = np.clip(np.floor(t * fps + 0.5).astype(np.int64), 0, None)
    out = np.zeros((n_frames, feat.shape[1]), np.float64)
    count = np.zeros(n_frames)
    keep = idx < n_frames
    np.add.at(out, idx[keep], feat[keep])
    np.add.at(count, idx[keep], 1)
    empty = count == 0
    count[empty] = 1
    out /= count[:, None]
    if empty.any():  # carry the nearest filled row into gaps (only at the end, or very low rates)
        filled = np.flatnonzero(~empty)
        if filled.size == 0:
            return np.zeros((n_frames, feat.shape[1]), np.float32)
        nearest = filled[np.clip(np.searchsorted(filled, np.flatnonzero(empty)), 0, filled.size - 1)]
        out[empty] = out[nearest]
    return out.astype(np.float32)


def mel_features(audio: np.ndarray, fps: float, n_frames: int | None = None, cfg: Config = Config()) -> np.ndarray:
    """Log-mel per video frame, (n_frames, n_mels). ``n_frames`` defaults to the audio's duration x fps."""
    if n_frames is None:
        n_frames = int(round(audio.size / AUDIO_RATE * fps))
    return per_video_frame(log_mel(audio, cfg), AUDIO_RATE / HOP, fps, n_frames)


def run(subject: Subject, cfg: Config, reporter: Reporter) -> dict:
    """Stage: ``audio.wav`` -> ``audio_features/mel.npy`` (N, n_mels)."""
    import soundfile as sf

    n = subject.frame_count()
    fps = float(subject.source()["fps"])
    reporter.start("mel", 1)
    audio, rate = sf.read(str(subject.path("audio.wav")), dtype="float32")
    assert rate == AUDIO_RATE, rate
    feats = mel_features(audio, fps, n, cfg)
    save_npy_atomic(subject.path("audio_features/mel.npy"), feats)
    reporter.advance(1)
    return {"shape": list(feats.shape)}
