"""How strongly each expression coefficient acts on a trained subject (the check run after training).

For a few frames, the renderer draws the frame with one coefficient set to 0 and then to 1 (the others as
captured); the mean absolute difference of the two renders (grey levels, 0-255) inside the eyes-and-brows
box and over the rest of the head tells whether the coefficient moves what it names, and whether it leaks
elsewhere. A coefficient whose ``region`` response is under :data:`WEAK_GREY_LEVELS` is reported as weak:
an edit of it will barely show (too few frames show it, or the field learned to ignore it).

Renderer-agnostic: the caller passes a function that renders one frame with given coefficients.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

#: Below this mean change (grey levels) inside the region a coefficient is weak (issue 11 measured 0.25-0.4
#: for a blink edit that did not close the eye; a visible blink changes the eye box by tens of levels).
WEAK_GREY_LEVELS = 2.0


def coefficient_response(render: Callable[[int, np.ndarray], np.ndarray], frames: Sequence[int],
                         expression: np.ndarray, region: Callable[[int], np.ndarray],
                         head: Callable[[int], np.ndarray], names: Sequence[str]) -> dict[str, dict[str, float]]:
    """Response of each coefficient: ``{name: {"region": grey levels, "elsewhere": grey levels}}``.

    ``render(frame, expr (E,))`` -> (S, S, 3) image in [0, 1]; ``expression`` (N, E) the captured
    coefficients; ``region(frame)`` / ``head(frame)`` -> (S, S) bool masks (eyes+brows, whole head).
    Averaged over ``frames``.
    """
    acc = {n: {"region": [], "elsewhere": []} for n in names}
    for f in frames:
        reg = region(f)
        rest = head(f) & ~reg
        for k, name in enumerate(names):
            lo, hi = expression[f].copy(), expression[f].copy()
            lo[k], hi[k] = 0.0, 1.0
            d = np.abs(render(f, hi) - render(f, lo)).mean(-1) * 255.0
            acc[name]["region"].append(float(d[reg].mean()) if reg.any() else 0.0)
            acc[name]["elsewhere"].append(float(d[rest].mean()) if rest.any() else 0.0)
    return {n: {k: round(float(np.mean(v)), 3) for k, v in d.items()} for n, d in acc.items()}


def weak_coefficients(response: dict[str, dict[str, float]], threshold: float = WEAK_GREY_LEVELS) -> list[str]:
    """Names whose region response is under ``threshold`` grey levels."""
    return [n for n, r in response.items() if r["region"] < threshold]


def box_mask(box: np.ndarray, size: int) -> np.ndarray:
    """(size, size) bool mask of a box (x0, y0, x1, y1), exclusive end; empty when the box is -1."""
    m = np.zeros((size, size), bool)
    if box[0] >= 0:
        m[box[1]:box[3], box[0]:box[2]] = True
    return m
