"""Sparse keys: the fewest keys whose F-curve reproduces a per-frame curve within a stated tolerance.

A captured performance has a value at every frame; keying every frame makes it uneditable (closing an eye
means moving ten keys). :func:`sparse_keys` picks a subset of the frames so that the curve through those
keys with **linear** interpolation (how the add-on keys them) stays within ``tol`` of the captured value at
*every* frame: the error bound is exact, not a hope about Bezier handles. Each kept key is a captured
sample, so on the key frames the F-curve is exactly the captured value.

The method is the greedy "cone" simplification of a polyline under a vertical error bound: from a key at
frame i, extend the segment to frame k while the line from (i, y_i) to (k, y_k) passes within ``tol`` of
every sample between them (the slopes that do form an interval that only narrows as k grows), and key the
last k that worked. O(n) per curve in plain Python, so New Shot of 10,000 frames keys in well under a
second. Standard library only (no bpy).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Tolerance:
    """The largest deviation allowed between the keyed curve and the captured one, per kind of curve.

    The pose tolerances move the rendered head by about a quarter of a pixel at most (focal length twice
    the crop, the sample's geometry): well under what the eye sees, while the tracking jitter of a
    captured pose (about 0.002 rad and 0.1 % of the distance from frame to frame) is not keyed."""

    expression: float = 0.02     # coefficient units (0..1): 2 % of the full range
    rotation: float = 0.005      # radians (0.29 degrees)
    translation: float = 5e-4    # a fraction of the head's mean distance from the camera (units vary by subject)

    def translation_units(self, translation: Sequence[Sequence[float]]) -> float:
        """:attr:`translation` in the units of ``translation`` (N x 3): times the mean distance of the head."""
        if not translation:
            return self.translation
        dist = sum(sum(float(v) * float(v) for v in row) ** 0.5 for row in translation) / len(translation)
        return self.translation * dist


DEFAULT = Tolerance()


def sparse_keys(values: Sequence[float], tol: float) -> list[int]:
    """Indices of the samples to key (first and last always): linear interpolation between them deviates
    from ``values`` by at most ``tol`` at every index (``values``: one float per frame, ``tol`` in their
    units). A tiny ``tol`` keeps every sample that is not on a straight line between its neighbouring keys."""
    n = len(values)
    if n <= 2:
        return list(range(n))
    y = [float(v) for v in values]
    keys = [0]
    i = 0
    inf = float("inf")
    while i < n - 1:  # (the hot loop of New Shot: plain locals, no calls)
        yi = y[i]
        lo, hi = -inf, inf  # slopes from (i, y_i) within tol of every sample so far
        best = k = i + 1
        d = 1
        while k < n:
            s = (y[k] - yi) / d
            if lo <= s <= hi:
                best = k  # the segment i -> k keeps every sample between them within tol
            t = tol / d
            if s - t > lo:
                lo = s - t
            if s + t < hi:
                hi = s + t
            if lo > hi:
                break
            k += 1
            d += 1
        keys.append(best)
        i = best
    return keys


def dense_keys(values: Sequence[float]) -> list[int]:
    """Every sample is a key (the option for users who want the captured curve frame by frame)."""
    return list(range(len(values)))


def max_deviation(values: Sequence[float], keys: Sequence[int]) -> float:
    """The largest |linear interpolation of the kept samples - value| over all indices."""
    worst = 0.0
    for a, b in zip(keys, keys[1:]):
        ya, yb = float(values[a]), float(values[b])
        for t in range(a + 1, b):
            v = ya + (yb - ya) * (t - a) / (b - a)
            worst = max(worst, abs(v - float(values[t])))
    return worst
