"""Audio -> blendshape coefficients: the default generator, a small temporal network trained per subject.

SyncTalk++ drives its expressions with EmoTalk (:mod:`.emotalk`, loaded when a user supplies its weights).
The default, which needs no download, learns the subject's own mapping from its audio features (``ave``
when prepared, else ``mel``: one row per video frame, the renderer's features, computed for new audio by
``lip_features.for_audio``) to its captured coefficients (:mod:`.coefficients`, training frames only):

    features (T, D) -> standardise -> 2 x [Conv1d(k) + GELU + dropout] -> bidirectional GRU -> Linear -> sigmoid
                    -> (T, K) mapped onto the subject's min..max

trained with MSE on random windows. A regression to the mean under-moves (its output is the expected
expression, smoother than any real take), so the deviations of each column are rescaled to the captured
activity of the training frames (``match_activity``: the ratio of standard deviations, measured on the
training predictions, capped). Blinks do not follow the audio: their columns come from :mod:`.blinks`,
a stochastic model of the subject's blink timing, so every call with a new ``seed`` draws new blinks.
"""

from __future__ import annotations

import pickle
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..core.errors import UserError
from ..prepare.capture import BLINK_COLUMNS
from ..core.progress import Reporter
from .blinks import BlinkModel


@dataclass(frozen=True)
class GeneratorConfig:
    """Preset table ``[expressions.generator]``."""

    feature: str = "auto"     # audio feature it listens to: auto (ave when prepared, else mel) | ave | mel | hubert
    hidden: int = 48
    kernel: int = 5           # frames, per conv layer (two layers: 9 frames of context before the GRU)
    dropout: float = 0.2
    window: int = 64          # training window in frames
    steps: int = 800
    batch: int = 16
    lr: float = 3e-3
    weight_decay: float = 1e-3
    match_activity: bool = True
    max_gain: float = 4.0     # cap of the activity rescaling
    seed: int = 0


class AudioToExpression(nn.Module):
    """(B, T, D) audio features -> (B, T, K) coefficients within min..max (``lo``, ``span`` (K,))."""

    def __init__(self, d: int, k: int, cfg: GeneratorConfig, feat_mean: np.ndarray, feat_std: np.ndarray,
                 lo: np.ndarray, span: np.ndarray):
        super().__init__()
        self.cfg = cfg
        for name, v in (("feat_mean", feat_mean), ("feat_std", feat_std), ("lo", lo), ("span", span)):
            self.register_buffer(name, torch.as_tensor(np.asarray(v), dtype=torch.float32))
        h, pad = cfg.hidden, cfg.kernel // 2
        self.convs = nn.Sequential(nn.Conv1d(d, h, cfg.kernel, padding=pad), nn.GELU(), nn.Dropout(cfg.dropout),
                                   nn.Conv1d(h, h, cfg.kernel, padding=pad), nn.GELU(), nn.Dropout(cfg.dropout))
        self.gru = nn.GRU(h, h // 2, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * (h // 2), k)

    def unit(self, feats: torch.Tensor) -> torch.Tensor:
        """Features -> coefficients in normalised units [0, 1] (0 = the subject's min, 1 its max)."""
        x = (feats - self.feat_mean) / self.feat_std
        h = self.convs(x.transpose(1, 2)).transpose(1, 2)
        return torch.sigmoid(self.head(self.gru(h)[0]))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.lo + self.unit(feats) * self.span


@dataclass
class Generator:
    """A trained default generator: the network, its activity rescaling, the subject's blink model."""

    net: AudioToExpression
    names: list[str]
    feature: str
    mean_pred: np.ndarray  # (K,) mean of the training predictions
    mean_true: np.ndarray  # (K,) mean of the captured training coefficients
    gain: np.ndarray       # (K,) activity rescaling
    blinks: BlinkModel
    info: dict[str, Any]

    def predict(self, feats: np.ndarray) -> np.ndarray:
        """(T, D) audio features -> (T, K) audio-driven coefficients (activity-matched, blinks not yet)."""
        self.net.eval()
        with torch.no_grad():
            y = self.net(torch.as_tensor(np.asarray(feats, np.float32))[None])[0].numpy().astype(np.float64)
        y = self.mean_true + (y - self.mean_pred) * self.gain
        lo = self.net.lo.numpy()
        return np.clip(y, lo, lo + self.net.span.numpy()).astype(np.float32)

    def generate(self, feats: np.ndarray, fps: float, seed: int = 0) -> np.ndarray:
        """(T, D) features of new audio at ``fps`` -> (T, K) coefficients with blinks drawn by ``seed``."""
        y = self.predict(feats)
        y[:, list(BLINK_COLUMNS)] = self.blinks.sample(len(y), fps, np.random.default_rng(seed))
        return y


def train(feats: np.ndarray, values: np.ndarray, names: list[str], feature: str, fps: float,
          cfg: GeneratorConfig, blinks: BlinkModel, reporter: Reporter | None = None) -> Generator:
    """Train on the training frames: ``feats`` (N, D) audio features and ``values`` (N, K) captured
    coefficients of the same consecutive frames."""
    x, y = np.asarray(feats, np.float32), np.asarray(values, np.float32)
    if len(x) != len(y):
        raise UserError(f"the subject's audio features have {len(x)} rows for {len(y)} frames of coefficients",
                        "run `headsync prepare` again")
    w = min(cfg.window, len(x))
    if w < 8:
        raise UserError(f"{len(x)} training frames are too few to train the expression generator",
                        "prepare a longer clip of the subject")
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    lo, hi = y.min(0), y.max(0)
    span = np.maximum(hi - lo, 1e-4)
    net = AudioToExpression(x.shape[1], y.shape[1], cfg, x.mean(0), x.std(0) + 1e-5, lo, span)
    xt, yt = torch.as_tensor(x), torch.as_tensor((y - lo) / span)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(cfg.steps, 2), pct_start=0.1)
    offsets = torch.arange(w)
    if reporter:
        reporter.start("expression generator", cfg.steps)
    net.train()
    loss = torch.zeros(())
    for _ in range(cfg.steps):
        starts = torch.randint(0, len(x) - w + 1, (cfg.batch,), generator=gen)
        idx = starts[:, None] + offsets
        loss = F.mse_loss(net.unit(xt[idx]), yt[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if reporter:
            reporter.advance(1, loss=float(loss.detach()))
    net.eval()
    with torch.no_grad():
        pred = net(xt[None])[0].numpy().astype(np.float64)
    mean_p, mean_t = pred.mean(0), y.mean(0).astype(np.float64)
    gain = np.ones(y.shape[1])
    if cfg.match_activity:
        gain = np.clip(y.std(0) / np.maximum(pred.std(0), 1e-6), 1.0, cfg.max_gain)
    info = {"steps": cfg.steps, "final_loss": round(float(loss.detach()), 6), "train_frames": int(len(x)),
            "feature": feature, "gain": [round(float(g), 4) for g in gain]}
    return Generator(net, list(names), feature, mean_p, mean_t, gain, blinks, info)


# ---- files -------------------------------------------------------------------------------------------------
def save(g: Generator, path: Path) -> None:
    """Write the generator to ``path`` through a temporary name."""
    n = g.net
    state = {"format": "headsync.expressions.generator/1", "config": asdict(n.cfg), "names": g.names,
             "feature": g.feature, "d": int(n.convs[0].in_channels), "state": n.state_dict(),
             "mean_pred": g.mean_pred.tolist(), "mean_true": g.mean_true.tolist(), "gain": g.gain.tolist(),
             "blinks": g.blinks.to_json(), "info": g.info}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    torch.save(state, tmp)
    tmp.replace(path)


def load(path: Path) -> Generator:
    """Read a generator written by :func:`save`."""
    try:
        d = torch.load(path, map_location="cpu", weights_only=False)
        cfg = GeneratorConfig(**d["config"])
        k, dim = len(d["names"]), int(d["d"])
        z = np.zeros
        net = AudioToExpression(dim, k, cfg, z(dim), np.ones(dim), z(k), np.ones(k))
        net.load_state_dict(d["state"])
    except (OSError, EOFError, KeyError, RuntimeError, TypeError, ValueError, pickle.UnpicklingError) as e:
        raise UserError(f"the expression generator {path} is unreadable ({e})",
                        "delete the subject's expressions/ folder; it is trained again on next use")
    return Generator(net.eval(), list(d["names"]), d["feature"], np.asarray(d["mean_pred"]),
                     np.asarray(d["mean_true"]), np.asarray(d["gain"]), BlinkModel.from_json(d["blinks"]),
                     dict(d.get("info", {})))
