"""The per-frame lip (audio) feature the renderer is driven by, for the subject's own audio or new audio.

Three kinds, all ``(n_frames, D)`` float32 with row ``i`` describing the sound at ``t = i / fps``:

* ``mel`` — log-mel bands (D = n_mels), with the settings the subject's ``mel`` stage used;
* ``ave`` — Conv(A) of the subject's audio-visual encoder (``audio_features/ave_encoder.pt``, D =
  feature_dim), SyncTalk's lip space;
* ``hubert`` — the last hidden layer of HuBERT-large fine-tuned on LibriSpeech (D = 1024, 50 rows/s averaged
  per frame), as ER-NeRF uses. Needs the ``transformers`` package and the model folder on this machine.

``for_subject`` reads what ``prepare`` wrote (HuBERT's is computed and cached on first use);
``for_audio`` computes the same feature for new dialogue at render time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..prepare.audio_features import Config as MelConfig
from ..prepare.audio_features import log_mel, mel_features, per_video_frame
from ..core.errors import UserError
from ..core.atomic import save_npy_atomic
from ..subject.folder import Subject

KINDS = ("mel", "ave", "hubert")
#: The HuBERT model folder (a ``transformers`` checkpoint of facebook/hubert-large-ls960-ft), looked up in
#: the model search folders (``$HEADSYNC_MODELS``, then the user's cache).
HUBERT_DIR = "hubert-large-ls960-ft"
HUBERT_RATE = 50.0  # hidden states per second (conv stride 320 samples at 16 kHz)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise UserError(f"unknown audio feature {kind!r}", f"use one of {', '.join(KINDS)}")


def for_subject(subject: Subject, kind: str) -> np.ndarray:
    """The prepared feature ``audio_features/KIND.npy`` (N, D); HuBERT's is computed and saved if absent."""
    _check_kind(kind)
    path = subject.path(f"audio_features/{kind}.npy")
    if not path.exists():
        if kind != "hubert":
            raise UserError(f"subject {subject.root} has no '{kind}' audio feature",
                            f"run `headsync prepare VIDEO --subject {subject.root}` (it writes {path.name})")
        import soundfile as sf

        audio, _ = sf.read(str(subject.path("audio.wav")), dtype="float32")
        feats = hubert_features(audio, float(subject.source()["fps"]), subject.frame_count())
        save_npy_atomic(path, feats)
        return feats
    return np.load(path)


def for_audio(subject: Subject, kind: str, audio: np.ndarray, fps: float, n_frames: int) -> np.ndarray:
    """The ``kind`` feature of new 16 kHz mono ``audio``: (n_frames, D) float32, row ``i`` at ``t = i / fps``.

    Uses the subject's own settings (its mel parameters, its trained encoder), so the rows match what the
    renderer was trained on."""
    _check_kind(kind)
    audio = np.asarray(audio, np.float32)
    if kind == "mel":
        return mel_features(audio, fps, n_frames, subject_mel_config(subject))
    if kind == "ave":
        from . import av_encoder

        path = subject.path("audio_features/ave_encoder.pt")
        if not path.exists():
            raise UserError(f"subject {subject.root} has no audio-visual encoder",
                            f"run `headsync prepare VIDEO --subject {subject.root}` (its 'ave' stage trains it)")
        encoder, _ = av_encoder.load_encoder(path)
        return av_encoder.features(encoder, log_mel(audio), fps, n_frames)
    return hubert_features(audio, fps, n_frames)


def subject_mel_config(subject: Subject) -> MelConfig:
    """The mel settings the subject's ``mel`` stage ran with (defaults when it has not run)."""
    params = subject.load().get("stages", {}).get("mel", {}).get("params", {})
    known = set(MelConfig.__dataclass_fields__)
    return MelConfig(**{k: v for k, v in params.items() if k in known})


def hubert_dir() -> Path:
    """The local HuBERT model folder, or a :class:`UserError` saying where to put it."""
    from ..core import registry

    dirs = registry.search_dirs()
    for d in dirs:
        if (d / HUBERT_DIR / "config.json").is_file():
            return d / HUBERT_DIR
    raise UserError(
        f"the 'hubert' audio feature needs the HuBERT model folder {HUBERT_DIR}/, not found in "
        f"{', '.join(str(d) for d in dirs)}",
        f"on a machine with internet: `huggingface-cli download facebook/{HUBERT_DIR} --local-dir "
        f"{dirs[0] / HUBERT_DIR}`; or train with the 'ave' (default) or 'mel' feature")


def hubert_features(audio: np.ndarray, fps: float, n_frames: int) -> np.ndarray:
    """HuBERT's last hidden layer per video frame: (n_frames, 1024) float32.

    Raises :class:`UserError` with the install hint when ``transformers`` or the weights are missing."""
    try:
        import transformers  # noqa: F401  (optional dependency, imported only for this feature)
    except ImportError:
        raise UserError("the 'hubert' audio feature needs the `transformers` package",
                        "install it into the backend's environment (`pip install transformers`), or train "
                        "with the 'ave' (default) or 'mel' feature")
    import torch
    from transformers import HubertModel

    model = HubertModel.from_pretrained(str(hubert_dir()), local_files_only=True).eval()
    x = np.asarray(audio, np.float32)
    x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)  # what the model's feature extractor does (do_normalize)
    # Hidden state k covers samples [320 k, 320 k + 400): 200 samples of padding put its centre at k / 50 s,
    # the convention per_video_frame expects.
    x = np.pad(x, (200, 200))
    with torch.no_grad():
        hidden = model(torch.from_numpy(x)[None]).last_hidden_state[0].numpy()
    return per_video_frame(hidden, HUBERT_RATE, fps, n_frames)

