"""The subject's coefficient space: what the expression models learn from and produce.

Columns (``names``): the seven core coefficients first, in DESIGN order, exactly as the renderer was trained
on them (``expression.npy``: calibrated per subject, smoothed, in [0, 1]); then, when the subject was
captured with MediaPipe's FaceLandmarker, its other ARKit scores from ``blendshapes.npz`` (44 more: jaw,
mouth, cheeks, eye look/squint/wide), which give the models the context of the whole face. With the
geometry estimator K = 7.

Rows are split with the project's single train/held-out split (the subject's, :mod:`headsync.subject.split`),
so held-out frames never train an expression model either.

:class:`Range` holds the subject's per-coefficient range on its training frames, the yardstick of "within
what the renderer learned": the 1st-99th percentile band for measurement, min..max as the hard bound.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..subject.split import split_frames, subject_split
from ..core.errors import UserError
from ..subject.folder import CORE_EXPRESSIONS, Subject

N_CORE = len(CORE_EXPRESSIONS)


@dataclass
class Range:
    """Per-coefficient bounds (each (K,)): ``lo``/``hi`` min..max, ``p_lo``/``p_hi`` 1st/99th percentiles,
    ``rest`` the median (the resting level)."""

    lo: np.ndarray
    hi: np.ndarray
    p_lo: np.ndarray
    p_hi: np.ndarray
    rest: np.ndarray | None = None

    @classmethod
    def of(cls, values: np.ndarray, pct: float = 1.0) -> "Range":
        """The range of (N, K) values."""
        v = np.asarray(values, np.float64)
        return cls(v.min(0), v.max(0), np.percentile(v, pct, axis=0), np.percentile(v, 100.0 - pct, axis=0),
                   np.median(v, axis=0))

    def clamp(self, values: np.ndarray) -> np.ndarray:
        """(N, K) values clipped into min..max, float32."""
        return np.clip(values, self.lo, self.hi).astype(np.float32)

    def outside(self, values: np.ndarray, tol: float = 1e-6) -> np.ndarray:
        """(N, K) bool: the values outside the 1st-99th percentile band (``tol`` absorbs rounding)."""
        return (values < self.p_lo - tol) | (values > self.p_hi + tol)

    def to_json(self) -> dict:
        keys = ("lo", "hi", "p_lo", "p_hi") + (("rest",) if self.rest is not None else ())
        return {k: [round(float(x), 6) for x in getattr(self, k)] for k in keys}

    @classmethod
    def from_json(cls, d: dict) -> "Range":
        return cls(*(np.asarray(d[k], np.float64) for k in ("lo", "hi", "p_lo", "p_hi")),
                   np.asarray(d["rest"], np.float64) if "rest" in d else None)


def outside_fraction(values: np.ndarray, rng: Range) -> dict[str, float]:
    """Share of values and of frames (any coefficient) outside the subject's 1st-99th percentile band."""
    out = rng.outside(np.asarray(values, np.float64))
    return {"values": float(out.mean()), "frames": float(out.any(axis=1).mean())}


@dataclass
class Coefficients:
    """A subject's captured coefficients: ``values`` (N, K) float32 named ``names`` (core first),
    ``train``/``holdout`` frame indices, ``fps``."""

    names: list[str]
    values: np.ndarray
    train: np.ndarray
    holdout: np.ndarray
    fps: float

    @property
    def core(self) -> np.ndarray:
        """(N, 7) the core columns."""
        return self.values[:, :N_CORE]


def space_names(captured_names: list[str]) -> list[str]:
    """The column names of the space for a capture that gave ``captured_names``: core first, then the rest."""
    return list(CORE_EXPRESSIONS) + [n for n in captured_names if n not in CORE_EXPRESSIONS]


def load(subject: Subject) -> Coefficients:
    """The subject's coefficient space from ``expression.npy`` and ``blendshapes.npz``."""
    for f in ("expression.npy", "blendshapes.npz"):
        if not subject.path(f).exists():
            raise UserError(f"subject {subject.root} has no {f}",
                            f"run `headsync prepare VIDEO --subject {subject.root}` (its expression stage writes it)")
    core = np.clip(np.load(subject.path("expression.npy")).astype(np.float32), 0.0, 1.0)
    bs = np.load(subject.path("blendshapes.npz"))
    captured = [str(n) for n in bs["names"]]
    names = space_names(captured)
    extra = [captured.index(n) for n in names[N_CORE:]]
    values = np.concatenate([core, bs["values"].astype(np.float32)[:, extra]], axis=1) if extra else core
    if not np.isfinite(values).all():
        raise UserError(f"{subject.path('blendshapes.npz')} holds non-finite values", "run `headsync prepare` again")
    train, hold = split_frames(len(values), subject_split(subject).holdout_fraction)
    return Coefficients(names, values, train, hold, float(subject.source()["fps"]))


def map_named(names: list[str], values: np.ndarray, space: list[str], fill: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Columns named ``names`` (matched to ``space`` without regard to case: Live Link writes EyeBlinkLeft,
    ARKit eyeBlinkLeft) -> (T, len(space)) with the missing columns set to ``fill`` (the subject's resting
    level), and the list of the space's names that were missing."""
    lower = {n.lower(): i for i, n in enumerate(names)}
    v = np.asarray(values, np.float32)
    out = np.repeat(np.asarray(fill, np.float32)[None], len(v), axis=0)
    missing = []
    for j, n in enumerate(space):
        i = lower.get(n.lower())
        if i is None:
            missing.append(n)
        else:
            out[:, j] = v[:, i]
    return out, missing


def resample(times_s: np.ndarray, values: np.ndarray, fps: float, n_frames: int | None = None) -> np.ndarray:
    """(M, K) values at increasing times ``times_s`` -> (n_frames, K) at ``t = i / fps`` from the first time,
    by linear interpolation (held at the ends). ``n_frames`` defaults to the span's length at ``fps``."""
    t = np.asarray(times_s, np.float64) - float(times_s[0])
    if n_frames is None:
        n_frames = int(np.floor(t[-1] * fps + 1e-9)) + 1
    grid = np.arange(n_frames) / fps
    v = np.asarray(values, np.float64)
    return np.stack([np.interp(grid, t, v[:, k]) for k in range(v.shape[1])], axis=1).astype(np.float32)
