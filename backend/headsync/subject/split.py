"""The train / held-out split of a subject's frames, defined once for every part that learns from them.

The last ``holdout_fraction`` of the clip is held out: the renderer never trains on it and the
evaluation measures it, and the audio-visual encoder and lip-sync discriminator (prepared before any
renderer) never train on it either, so the held-out figures are of frames no network saw. The fraction
comes from the preset's ``[split]`` table when the subject is prepared and is recorded in ``subject.json``
(``split``); training reads it from there, so one subject has one split whatever preset trains it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .folder import Subject


@dataclass(frozen=True)
class SplitConfig:
    """The ``[split]`` table."""

    holdout_fraction: float = 0.1  # the last frames of the clip, never trained on (0: train on all)


def holdout_start(n_frames: int, fraction: float) -> int:
    """First held-out frame of ``n_frames``: at least one frame on each side when ``fraction`` > 0."""
    if fraction <= 0:
        return n_frames
    return n_frames - min(max(1, int(round(n_frames * fraction))), n_frames - 1)


def split_frames(n_frames: int, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """``(train, holdout)`` frame indices: the first frames and the last ``fraction`` of them."""
    k = holdout_start(n_frames, fraction)
    return np.arange(k), np.arange(k, n_frames)


def subject_split(subject: Subject) -> SplitConfig:
    """The split the subject was prepared with (the default for subjects prepared before it was recorded)."""
    return SplitConfig(**subject.load().get("split", {}))
