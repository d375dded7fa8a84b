"""Stage ``audio``: the subject's soundtrack as ``audio.wav``, 16 kHz mono, as long as the video.

The sound comes from ``--audio`` when given, otherwise from the video's own track. A small length
difference (a trailing second of silence, say) is padded or trimmed and recorded as a warning; a track
that covers less than ``min_coverage`` of the video is refused, since training would pair most frames
with silence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core import media
from ..core.errors import UserError
from ..core.progress import Reporter
from .stages import Stage
from ..subject.folder import Subject


@dataclass(frozen=True)
class AudioConfig:
    path: str = ""  # the file the sound comes from (the video itself, or --audio)
    sha256: str = ""
    warn_mismatch_s: float = 0.5
    min_coverage: float = 0.8


def fit_length(audio: np.ndarray, n_samples: int) -> np.ndarray:
    """Pad with silence or trim ``audio`` to exactly ``n_samples``."""
    if audio.size >= n_samples:
        return audio[:n_samples]
    return np.concatenate([audio, np.zeros(n_samples - audio.size, audio.dtype)])


def run_audio(subject: Subject, cfg: AudioConfig, reporter: Reporter) -> dict:
    src = subject.source()
    video_s = src["frame_count"] / src["fps"]
    reporter.start("audio", 1)
    info = media.probe(cfg.path)
    if not info.has_audio:
        raise UserError(f"{cfg.path} has no audio track",
                        "pass the subject's speech with --audio FILE (wav, mp3, m4a, flac, ...)")
    audio = media.read_audio(cfg.path)
    audio_s = audio.size / media.AUDIO_RATE
    if audio_s < cfg.min_coverage * video_s:
        raise UserError(f"the audio is {audio_s:.1f} s long but the video {video_s:.1f} s",
                        "pass the audio recorded with this video (--audio), or trim the video to match")
    if np.abs(audio).max() < 1e-4:
        raise UserError(f"the audio of {cfg.path} is silent", "pass the recording of the subject speaking")
    diff = audio_s - video_s
    if abs(diff) > cfg.warn_mismatch_s:
        msg = f"audio is {abs(diff):.2f} s {'longer' if diff > 0 else 'shorter'} than the video; " \
              f"{'trimmed' if diff > 0 else 'padded with silence'} to match"
        subject.warn(msg)
        reporter.message(msg, level="warning")
    audio = fit_length(audio, int(round(video_s * media.AUDIO_RATE)))
    tmp = subject.path(".audio.wav.tmp.wav")
    media.write_wav(tmp, audio)
    tmp.replace(subject.path("audio.wav"))
    reporter.advance(1)
    return {"duration_s": round(audio.size / media.AUDIO_RATE, 3), "mismatch_s": round(diff, 3)}


AUDIO = Stage("audio", 1, ("crop",), AudioConfig, run_audio)
