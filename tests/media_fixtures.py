"""Tiny synthetic media written on the fly (no files committed): numbered frames and tones."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from headsync.core import media


def numbered_video(path: Path, n: int, fps: float, size: tuple[int, int] = (64, 48),
                   audio: Path | None = None) -> Path:
    """A video whose frame ``i`` is a flat grey of level ``(i * 4) % 256`` (readable after H.264)."""
    w, h = size
    frames = (np.full((h, w, 3), (i * 4) % 256, np.uint8) for i in range(n))
    media.write_video(path, frames, fps, audio=audio, crf=0)
    return path


def tone(path: Path, seconds: float, rate: int = 16000, onset_s: float | None = None, freq: float = 440.0) -> Path:
    """A WAV tone (silent before ``onset_s`` when given)."""
    t = np.arange(int(seconds * rate)) / rate
    a = 0.5 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    if onset_s is not None:
        a[t < onset_s] = 0
    import soundfile as sf

    sf.write(str(path), a, rate)
    return path
