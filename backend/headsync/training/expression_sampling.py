"""Expression-focused sampling: train the eyes and brows as hard as the lips, and the rare frames often.

Why (measured on a real 140 s clip, ``docs/benchmarks.md``): the seven expression coefficients act on the
eyes and brows, a few percent of the crop, and the frames that show their extremes are rare (three full
blinks, about 15 of 3150 training frames). With one uniformly drawn frame per iteration and rays spread
over the whole head, a 1600-iteration preview run sees a closed eye on about 8 iterations and each time
only a handful of its rays land on the eye, so the field learns an average, open eye and the blink
coefficient is never needed. Two remedies, both renderer-agnostic (they choose frames and pixels):

* :func:`frame_weights` draws frames from a mixture: ``1 - tail_share`` uniform, ``tail_share`` spread
  evenly over the coefficients' *tails* (frames where a coefficient is more than half-way from its median
  to its extreme), so a blink is drawn tens of times more often;
* :func:`eye_boxes` and :func:`pixels_around` put a share of each iteration's rays (and a patch in the
  fine stage) on the eyes and brows, as the lips get theirs.

All pure functions of arrays and a random generator, except :func:`eye_boxes`' read of the landmarks.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..renderers.base import Sampling
from .samplers import Batch, patch_pixels

#: Face-mesh points outlining both eyes and brows (MediaPipe's FACEMESH_*_EYE / *_EYEBROW connections).
EYE_BROW_POINTS = (
    7, 33, 133, 144, 145, 153, 154, 155, 157, 158, 159, 160, 161, 163, 173, 246,
    249, 263, 362, 373, 374, 380, 381, 382, 384, 385, 386, 387, 388, 390, 398, 466,
    46, 52, 53, 55, 63, 65, 66, 70, 105, 107, 276, 282, 283, 285, 293, 295, 296, 300, 334, 336,
)


def tails(expression: np.ndarray, frames: np.ndarray, min_span: float = 0.1) -> list[np.ndarray]:
    """Per coefficient, the frames of ``frames`` in its tail: more than half-way from the coefficient's
    median to its farthest value over ``frames``. ``expression`` (N, E) in [0, 1]; a coefficient that
    varies less than ``min_span`` has an empty tail (nothing rare to show). Returns E index arrays."""
    e = expression[frames]
    med = np.median(e, 0)
    out = []
    for k in range(e.shape[1]):
        dev = e[:, k] - med[k]
        far = dev.max() if dev.max() >= -dev.min() else dev.min()
        if abs(far) < min_span:
            out.append(np.zeros(0, np.int64))
            continue
        out.append(frames[(dev / far) > 0.5])
    return out


def frame_weights(expression: np.ndarray, frames: np.ndarray, tail_share: float) -> np.ndarray:
    """Probabilities (len(frames),) of drawing each training frame: ``1 - tail_share`` uniform plus
    ``tail_share`` shared equally by the non-empty coefficient tails (each tail uniform inside).
    Sums to 1; uniform when ``tail_share`` is 0 or no coefficient varies."""
    n = frames.size
    p = np.full(n, 1.0 / n)
    ts = [t for t in tails(expression, frames) if t.size]
    if tail_share <= 0 or not ts:
        return p
    pos = {int(f): i for i, f in enumerate(frames)}
    extra = np.zeros(n)
    for t in ts:
        extra[[pos[int(f)] for f in t]] += 1.0 / (t.size * len(ts))
    return (1.0 - tail_share) * p + tail_share * extra


def draw_slot(weights: np.ndarray, rng: np.random.Generator) -> int:
    """One training-frame slot drawn with probabilities ``weights`` (len(frames),). Uniform weights use
    ``rng.integers``, the draw training made before weighted draws existed, so that a run with
    ``tail_share = 0`` repeats, number for number, the runs measured before (docs/benchmarks.md, issue 10)."""
    if np.all(weights == weights[0]):
        return int(rng.integers(weights.size))
    return int(rng.choice(weights.size, p=weights))


def eye_boxes(landmarks: np.ndarray, crop_size: int, size: int) -> np.ndarray:
    """Box (x0, y0, x1, y1), exclusive end, around both eyes and brows per frame at render size ``size``,
    from the face mesh ``landmarks`` (N, 478, 2+) in crop pixels of side ``crop_size``; all -1 where the
    face was not found. Returns (N, 4) int64."""
    pts = landmarks[:, EYE_BROW_POINTS, :2] * (size / crop_size)
    ok = np.isfinite(pts).all((1, 2))
    out = np.full((landmarks.shape[0], 4), -1, np.int64)
    if ok.any():
        lo = np.floor(pts[ok].min(1)).astype(np.int64)
        hi = np.ceil(pts[ok].max(1)).astype(np.int64) + 1
        out[ok] = np.clip(np.concatenate([lo, hi], 1), 0, size)
    return out


def pixels_around(box: np.ndarray, n: int, size: int, rng: np.random.Generator, grow: float = 0.25) -> np.ndarray:
    """``n`` pixel coordinates (n, 2) as (x, y) drawn uniformly in ``box`` grown by ``grow`` of its size
    each side, inside the image; (0, 2) when the box is absent (-1)."""
    if box[0] < 0 or n <= 0:
        return np.zeros((0, 2), np.int64)
    w, h = box[2] - box[0], box[3] - box[1]
    lo = np.array([box[0] - int(w * grow), box[1] - int(h * grow)])
    hi = np.array([box[2] + int(w * grow), box[3] + int(h * grow)])
    return np.clip(rng.integers(lo, np.maximum(hi, lo + 1), (n, 2)), 0, size - 1).astype(np.int64)


def box_patch(box: np.ndarray, side: int, size: int, rng: np.random.Generator) -> np.ndarray | None:
    """A ``side`` x ``side`` patch (side * side, 2), row-major, centred in ``box`` with a random offset of up
    to a quarter of the box (so both eyes get their turn when the patch is smaller than the box), or None
    without a box."""
    if box[0] < 0:
        return None
    w, h = box[2] - box[0], box[3] - box[1]
    cx = (box[0] + box[2]) // 2 + int(rng.integers(-(w // 4), w // 4 + 1))
    cy = (box[1] + box[3]) // 2 + int(rng.integers(-(h // 4), h // 4 + 1))
    x0 = int(np.clip(cx - side // 2, 0, size - side))
    y0 = int(np.clip(cy - side // 2, 0, size - side))
    return patch_pixels(x0, y0, side)


def add_eye_samples(batch: Batch, sampling: Sampling, box: np.ndarray, size: int, cfg,
                    rng: np.random.Generator) -> Batch:
    """``batch`` (from :func:`headsync.training.samplers.draw`) with the eyes' share: for ray sets the last
    ``eyes_fraction`` of the rays (the ones drawn anywhere on the head) move around the eyes-and-brows
    ``box``, so the ray count is unchanged; for patches an ``eyes_patch`` patch on the box is appended.
    Whole images and frames without a box are left as they are. ``cfg``: the ``[train]`` table."""
    if box[0] < 0:
        return batch
    if sampling is Sampling.RAYS and cfg.eyes_fraction > 0:
        n = min(int(round(batch.pixels.shape[0] * cfg.eyes_fraction)), batch.pixels.shape[0])
        pix = batch.pixels.copy()
        pix[pix.shape[0] - n:] = pixels_around(box, n, size, rng)
        return dataclasses.replace(batch, pixels=pix)
    if sampling is Sampling.PATCHES and cfg.eyes_patch > 0:
        side = min(cfg.eyes_patch, size)
        return dataclasses.replace(batch, pixels=np.concatenate([batch.pixels, box_patch(box, side, size, rng)]),
                                   patches=[*batch.patches, side])
    return batch
