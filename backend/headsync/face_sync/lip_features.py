"""The per-frame lip (audio) feature the renderer is driven by, for the subject's own audio or new audio.

Two kinds, both ``(n_frames, D)`` float32 with row ``i`` describing the sound at ``t = i / fps``:

* ``mel`` — log-mel bands (D = n_mels), with the settings the subject's ``mel`` stage used;
* ``ave`` — Conv(A) of the subject's audio-visual encoder (``audio_features/ave_encoder.pt``, D =
  feature_dim), SyncTalk's lip space (the default).

ER-NeRF's HuBERT feature is not offered: its weights cannot be fetched or checked here, so it could not be
tested, and ``ave`` is SyncTalk's own answer to the same need (docs/audio_features.md).

``for_subject`` reads what ``prepare`` wrote; ``for_audio`` computes the same feature for new dialogue at
render time.
"""

from __future__ import annotations

import numpy as np

from ..prepare.audio_features import Config as MelConfig
from ..prepare.audio_features import log_mel, mel_features
from ..core.errors import UserError
from ..subject.folder import Subject

KINDS = ("mel", "ave")


def check_kind(kind: str) -> None:
    """A :class:`UserError` unless ``kind`` is one of :data:`KINDS`."""
    if kind not in KINDS:
        raise UserError(f"unknown audio feature {kind!r}",
                        f"set audio_feature in the preset's [train] table to one of {', '.join(KINDS)}")


def for_subject(subject: Subject, kind: str) -> np.ndarray:
    """The prepared feature ``audio_features/KIND.npy`` (N, D)."""
    check_kind(kind)
    path = subject.path(f"audio_features/{kind}.npy")
    if not path.exists():
        raise UserError(f"subject {subject.root} has no '{kind}' audio feature",
                        f"run `headsync prepare VIDEO --subject {subject.root}` (it writes {path.name})")
    return np.load(path)


def for_audio(subject: Subject, kind: str, audio: np.ndarray, fps: float, n_frames: int) -> np.ndarray:
    """The ``kind`` feature of new 16 kHz mono ``audio``: (n_frames, D) float32, row ``i`` at ``t = i / fps``.

    Uses the subject's own settings (its mel parameters, its trained encoder), so the rows match what the
    renderer was trained on."""
    check_kind(kind)
    audio = np.asarray(audio, np.float32)
    if kind == "mel":
        return mel_features(audio, fps, n_frames, subject_mel_config(subject))
    from . import av_encoder

    path = subject.path("audio_features/ave_encoder.pt")
    if not path.exists():
        raise UserError(f"subject {subject.root} has no audio-visual encoder",
                        f"run `headsync prepare VIDEO --subject {subject.root}` (its 'ave' stage trains it)")
    encoder, _ = av_encoder.load_encoder(path)
    return av_encoder.features(encoder, log_mel(audio), fps, n_frames)


def subject_mel_config(subject: Subject) -> MelConfig:
    """The mel settings the subject's ``mel`` stage ran with (defaults when it has not run)."""
    params = subject.load().get("stages", {}).get("mel", {}).get("params", {})
    known = set(MelConfig.__dataclass_fields__)
    return MelConfig(**{k: v for k, v in params.items() if k in known})
