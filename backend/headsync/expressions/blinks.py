"""Blinks for generated expressions: timing drawn from the subject's own blink statistics.

Blinks do not follow the words, so the audio network does not predict them. From the captured eye curves of
the training frames we take the blink events (both eyes' maximum >= ``threshold``, as
``expression.blink_events``), their inter-blink intervals and, for each event, its snippet of every eye
column (a few frames either side: the closing, the hold, the opening, a one-eyed blink stays one-eyed).
Generation draws intervals from the subject's intervals (bootstrap, jittered by +-``jitter``) and pastes
a randomly drawn snippet at each blink time over the eyes' resting level, so the generated rate, duration and
shape follow the subject's. A subject with fewer than two captured blinks gets the human prior instead
(intervals of ``prior_interval_s``, a 5-frame blink at 25 fps scaled to its rate).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ..prepare.capture import blink_events


@dataclass(frozen=True)
class BlinkConfig:
    """Preset table ``[expressions.blinks]``."""

    threshold: float = 0.5       # a frame with either eye >= this is inside a blink
    margin: int = 2              # frames kept either side of an event in its snippet
    jitter: float = 0.25         # relative jitter of the drawn intervals
    prior_interval_s: tuple[float, ...] = (2.5, 3.5, 4.5, 6.0)  # ~15 blinks/min, adults in conversation


@dataclass
class BlinkModel:
    """The subject's blink statistics: ``intervals_s`` between blink onsets, ``snippets`` (list of (L, E)
    eye-column values), ``rest`` (E,) resting eye level, ``fps`` of the snippets."""

    intervals_s: list[float]
    snippets: list[np.ndarray]
    rest: np.ndarray
    fps: float
    cfg: BlinkConfig = field(default_factory=BlinkConfig)

    @classmethod
    def fit(cls, eyes: np.ndarray, fps: float, cfg: BlinkConfig = BlinkConfig()) -> "BlinkModel":
        """From (N, E) captured eye columns (0 open, 1 closed) of consecutive training frames."""
        eyes = np.asarray(eyes, np.float32)
        events = blink_events(eyes.max(axis=1), cfg.threshold)
        inside = np.zeros(len(eyes), bool)
        snippets = []
        for s, e in events:
            a, b = max(0, s - cfg.margin), min(len(eyes), e + cfg.margin)
            inside[a:b] = True
            snippets.append(eyes[a:b].copy())
        rest = np.median(eyes[~inside], axis=0) if (~inside).any() else np.zeros(eyes.shape[1], np.float32)
        onsets = np.array([s for s, _ in events], np.float64) / fps
        intervals = list(np.diff(onsets)) if len(onsets) >= 2 else []
        if len(snippets) < 1 or len(intervals) < 1:
            intervals = list(cfg.prior_interval_s)
            n = max(3, int(round(5 * fps / 25.0)))
            shape = np.sin(np.linspace(0, np.pi, n + 2)[1:-1])[:, None]
            snippets = [(rest[None] + (1.0 - rest[None]) * shape).astype(np.float32)]
        return cls([float(x) for x in intervals], snippets, rest.astype(np.float32), float(fps), cfg)

    def sample(self, n_frames: int, fps: float, rng: np.random.Generator) -> np.ndarray:
        """(n_frames, E) eye curves at ``fps``: the resting level with blinks pasted at drawn times."""
        out = np.repeat(self.rest[None].astype(np.float32), n_frames, axis=0)
        # a shot starts at a random moment of the subject's blinking, which falls in a long interval more often
        # than in a short one: the first onset lies uniformly within an interval drawn in proportion to its
        # length (the stationary renewal process). Drawing it in proportion to count put the first blink early
        # and over-counted blinks in short shots (+31 % over 5-second blocks of the sample).
        t = rng.uniform(0.0, self._interval(rng, length_biased=True))
        while True:
            start = int(round(t * fps))
            if start >= n_frames:
                break
            snip = self._snippet(rng, fps)
            end = min(n_frames, start + len(snip))
            out[start:end] = np.maximum(out[start:end], snip[:end - start])
            t += max(self._interval(rng), len(snip) / fps)
        return out

    def _interval(self, rng: np.random.Generator, length_biased: bool = False) -> float:
        w = np.asarray(self.intervals_s, np.float64)
        base = float(rng.choice(w, p=w / w.sum() if length_biased else None))
        return base * (1.0 + rng.uniform(-self.cfg.jitter, self.cfg.jitter))

    def _snippet(self, rng: np.random.Generator, fps: float) -> np.ndarray:
        snip = self.snippets[int(rng.integers(len(self.snippets)))]
        if abs(fps - self.fps) < 1e-6:
            return snip
        n = max(2, int(round(len(snip) * fps / self.fps)))  # same duration in seconds at another rate
        src = np.minimum(np.arange(n) * self.fps / fps, len(snip) - 1)
        return np.stack([np.interp(src, np.arange(len(snip)), snip[:, k]) for k in range(snip.shape[1])], 1)

    def to_json(self) -> dict:
        return {"intervals_s": self.intervals_s, "snippets": [s.tolist() for s in self.snippets],
                "rest": self.rest.tolist(), "fps": self.fps, "config": asdict(self.cfg)}

    @classmethod
    def from_json(cls, d: dict) -> "BlinkModel":
        cfg = d.get("config", {})
        cfg = BlinkConfig(**{**cfg, "prior_interval_s": tuple(cfg.get("prior_interval_s", BlinkConfig.prior_interval_s))})
        return cls(list(d["intervals_s"]), [np.asarray(s, np.float32) for s in d["snippets"]],
                   np.asarray(d["rest"], np.float32), float(d["fps"]), cfg)


def blink_statistics(eyes: np.ndarray, fps: float, threshold: float = BlinkConfig.threshold) -> dict[str, float]:
    """Blink rate (per minute), mean duration (s) and count of (N, E) eye curves."""
    events = blink_events(np.asarray(eyes).max(axis=1), threshold)
    minutes = len(eyes) / fps / 60.0
    dur = [(e - s) / fps for s, e in events]
    return {"count": len(events), "rate_per_min": len(events) / max(minutes, 1e-9),
            "duration_s": float(np.mean(dur)) if dur else 0.0}
