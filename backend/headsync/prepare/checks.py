"""What the footage cannot give: warnings recorded after ``prepare`` (summary, ``subject.json`` ``warnings``,
shown by the add-on and by ``eval``).

Each check is a pure function of measured numbers returning a warning text or None; :func:`footage_warnings`
gathers them from a prepared subject. Thresholds are named here once:

* sound that does not match the lips: the lip-sync discriminator's held-out ROC AUC under
  :data:`SYNC_AUC_MIN` (chance is 0.5; a matching track gives about 0.9 on the sample, a LibriVox track
  over a real clip 0.48-0.55, issue 11);
* footage smaller than the crop the preset trains on (upscaled), non-square pixels;
* a very short clip (under :data:`SHORT_CLIP_S`);
* no full blink: the face-mesh eye aperture never falls under :data:`CLOSED_APERTURE_RATIO` of its median
  for :data:`MIN_CLOSED_S` in a row, so blink edits will be weak (a renderer cannot show what
  it never saw).
"""

from __future__ import annotations

import numpy as np

from ..evaluation.measures import eye_aperture
from ..subject.folder import Subject

SYNC_AUC_MIN = 0.65
SHORT_CLIP_S = 20.0
# Calibrated on the real clips (docs/benchmarks.md): franck (full blinks at 41, 114, 127 s) has 20+ runs of
# >= 0.1 s under 0.2 x its median aperture; cap13 (no full closure) has one 2-frame tracking dip, cap12 none.
CLOSED_APERTURE_RATIO = 0.2
MIN_CLOSED_S = 0.1
MIN_BLINKS = 1


def sync_warning(auc: float | None) -> str | None:
    """Warn when the discriminator could not tell in-sync from shifted sound on held-out frames."""
    if auc is None or auc >= SYNC_AUC_MIN:
        return None
    return (f"the sound does not seem to match the lips: the lip-sync discriminator tells in-sync from shifted "
            f"sound no better than chance on held-out frames (ROC AUC {auc:.2f}, chance 0.50, needs "
            f"{SYNC_AUC_MIN:.2f}); the mouth will not follow new audio. Pass the sound recorded with this video "
            f"(--audio)")


def size_warnings(crop_side_src: float, resolution: int, sample_aspect: float = 1.0) -> list[str]:
    """Warn when the crop (``crop_side_src`` source pixels) is upscaled to the preset's ``resolution``, and
    when the source has non-square pixels (``sample_aspect`` != 1)."""
    out = []
    if crop_side_src < resolution * 0.95:
        out.append(f"the footage is small: the head crop is {crop_side_src:.0f} source pixels but the preset trains "
                   f"on {resolution} px, so it is upscaled {resolution / crop_side_src:.1f}x and the face will "
                   f"be soft; use higher-resolution footage or a smaller --resolution")
    if abs(sample_aspect - 1.0) > 0.01:
        out.append(f"the video has non-square pixels (sample aspect ratio {sample_aspect:.3f}); faces are "
                   f"stretched in the crops. Re-export it with square pixels")
    return out


def duration_warning(seconds: float) -> str | None:
    if seconds >= SHORT_CLIP_S:
        return None
    return (f"the clip is only {seconds:.1f} s long: too few mouth shapes and expressions to learn from "
            f"(the papers use 3-5 minutes); expect weak lip sync and edits")


def count_blinks(aperture: np.ndarray, fps: float) -> int:
    """Full blinks in a per-frame eye-aperture series (NaN where no face) at ``fps``: runs of at least
    ``MIN_CLOSED_S`` under ``CLOSED_APERTURE_RATIO`` x the median aperture (a one-frame dip is a tracking
    glitch more often than a blink)."""
    a = np.asarray(aperture, np.float64)
    if not np.isfinite(a).any():
        return 0
    closed = np.nan_to_num(a, nan=np.inf) < CLOSED_APERTURE_RATIO * np.nanmedian(a)
    edges = np.diff(np.concatenate([[0], closed.astype(np.int8), [0]]))
    starts, ends = np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0]
    return int(((ends - starts) >= max(1, int(np.ceil(MIN_CLOSED_S * fps - 1e-9)))).sum())


def blink_warning(blinks: int) -> str | None:
    if blinks >= MIN_BLINKS:
        return None
    return ("the footage shows no full blink (the eyes never close), so blink edits (eyeBlinkLeft/Right) will be "
            "weak: a renderer cannot show what it never saw. Include a few seconds where the subject blinks")


def apertures(landmarks: np.ndarray) -> np.ndarray:
    """Per-frame eye aperture (N,) of face-mesh ``landmarks`` (N, 478, 2+); NaN where no face."""
    ok = np.isfinite(landmarks[:, :, :2]).all((1, 2))
    out = np.full(landmarks.shape[0], np.nan)
    out[ok] = [eye_aperture(lm) for lm in landmarks[ok]]
    return out


def footage_warnings(subject: Subject, resolution: int) -> list[str]:
    """All the checks above on a prepared subject (stages it lacks are skipped)."""
    m = subject.load()
    src, stages = m.get("source", {}), m.get("stages", {})
    found = [duration_warning(float(src.get("duration_s", 0.0) or 0.0))]
    box = m.get("crop", {}).get("box")
    if box:
        found += size_warnings(float(box[2]), resolution, float(src.get("sample_aspect", 1.0) or 1.0))
    lm_path = subject.path("landmarks.npy")
    if lm_path.exists():
        fps = float(src.get("fps", 25.0) or 25.0)
        found.append(blink_warning(count_blinks(apertures(np.load(lm_path)), fps)))
    found.append(sync_warning(stages.get("ave", {}).get("info", {}).get("sync_auc_heldout")))
    return [w for w in found if w]
