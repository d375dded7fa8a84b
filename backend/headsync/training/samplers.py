"""What one training iteration renders of its frame, by the renderer's :class:`~headsync.renderers.base.Sampling`:
a set of rays mostly on the head (and the lips), square patches on the head and the lips, or the whole
image. The samplers are pure functions of arrays and a random generator; :func:`draw` applies the
``[train]`` table's sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..renderers.base import Sampling


@dataclass
class Batch:
    """Pixels (M, 2) int (x, y) of one frame to render, or None for the whole image; ``patches`` the side
    of each square patch, in order, when the pixels are patches (a whole image is one patch); ``lips``
    the region around the frame's lips (:func:`around_lips`) as half-open pixel bounds (x0, y0, x1, y1)
    at the render resolution, None without lips (a renderer's own loss may weight it,
    :meth:`~headsync.renderers.base.Renderer.losses`)."""

    pixels: np.ndarray | None
    patches: list[int]
    lips: tuple[int, int, int, int] | None = None


def draw(sampling: Sampling, head: np.ndarray, lips_box: np.ndarray, cfg, rng: np.random.Generator) -> Batch:
    """One iteration's :class:`Batch` for a frame with head mask ``head`` (S, S) and lips box (4,), with
    the sizes of ``cfg`` (the ``[train]`` table: rays, inside_fraction, lips_fraction, patch, lips_patch)."""
    size = head.shape[0]
    lips = around_lips(lips_box, size) if lips_box[0] >= 0 else None
    if sampling is Sampling.RAYS:
        return Batch(sample_rays(head, cfg.rays, cfg.inside_fraction, rng, lips_box, cfg.lips_fraction), [], lips)
    if sampling is Sampling.PATCHES:
        patches = [random_patch(head, min(cfg.patch, size), rng)]
        lp = lips_patch(lips_box, min(cfg.lips_patch, size), size, rng)
        if lp is not None:
            patches.append(lp)
        return Batch(np.concatenate(patches), [int(round(np.sqrt(p.shape[0]))) for p in patches], lips)
    return Batch(None, [size], lips)


def around_lips(box: np.ndarray, size: int) -> tuple[int, int, int, int]:
    """The lips box (4,) (x0, y0, x1, y1), exclusive end (:func:`~headsync.subject.data.lips_box`), grown
    by a quarter of its size on each side and clipped to the (size, size) image; half-open, for slicing
    ``[y0:y1, x0:x1]``. The region an open mouth, the teeth and the dropped lower lip occupy."""
    w, h = int(box[2] - box[0]), int(box[3] - box[1])
    return (max(int(box[0]) - w // 4, 0), max(int(box[1]) - h // 4, 0),
            min(int(box[2]) + w // 4, size), min(int(box[3]) + h // 4, size))


def sample_rays(head: np.ndarray, n: int, inside_fraction: float, rng: np.random.Generator,
                lips: np.ndarray | None = None, lips_fraction: float = 0.0) -> np.ndarray:
    """Pixel coordinates (n, 2) as (x, y): ``lips_fraction`` of them in the lips box (x0, y0, x1, y1) grown
    by half its size (the audio-driven region is small, yet it is what the audio must learn to move),
    ``inside_fraction`` of the rest inside the head mask (S, S) grown by a few pixels (the silhouette edge
    is where the head must learn to stop), the remainder anywhere."""
    size = head.shape[0]
    if lips is not None and lips[0] >= 0 and lips_fraction > 0:
        n_lips = int(round(n * lips_fraction))
        x0, y0, x1, y1 = around_lips(lips, size)
        around = rng.integers((x0, y0), (max(x1, x0 + 1), max(y1, y0 + 1)), (n_lips, 2))
        return np.concatenate([around, sample_rays(head, n - n_lips, inside_fraction, rng)])
    grown = cv2.dilate(head.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    ys, xs = np.nonzero(grown)
    n_in = int(round(n * inside_fraction)) if xs.size else 0
    pick = rng.integers(0, max(xs.size, 1), n_in)
    inside = np.stack([xs[pick], ys[pick]], -1) if n_in else np.zeros((0, 2), np.int64)
    anywhere = rng.integers(0, size, (n - n_in, 2))
    return np.concatenate([inside, anywhere]).astype(np.int64)


def patch_pixels(x0: int, y0: int, side: int) -> np.ndarray:
    """Pixels (side * side, 2) of the square patch at (x0, y0), row-major."""
    ys, xs = np.meshgrid(np.arange(y0, y0 + side), np.arange(x0, x0 + side), indexing="ij")
    return np.stack([xs.reshape(-1), ys.reshape(-1)], -1)


def random_patch(head: np.ndarray, side: int, rng: np.random.Generator) -> np.ndarray:
    """A random ``side`` patch whose centre lies on the head (anywhere when there is no head)."""
    size = head.shape[0]
    ys, xs = np.nonzero(head)
    if xs.size:
        k = rng.integers(xs.size)
        cx, cy = xs[k], ys[k]
    else:
        cx, cy = rng.integers(0, size, 2)
    x0 = int(np.clip(cx - side // 2, 0, size - side))
    y0 = int(np.clip(cy - side // 2, 0, size - side))
    return patch_pixels(x0, y0, side)


def lips_patch(box: np.ndarray, side: int, size: int, rng: np.random.Generator) -> np.ndarray | None:
    """A ``side`` patch centred on the lips box (jittered by a few pixels), or None without lips."""
    if box[0] < 0:
        return None
    cx = (box[0] + box[2]) // 2 + int(rng.integers(-2, 3))
    cy = (box[1] + box[3]) // 2 + int(rng.integers(-2, 3))
    x0 = int(np.clip(cx - side // 2, 0, size - side))
    y0 = int(np.clip(cy - side // 2, 0, size - side))
    return patch_pixels(x0, y0, side)
