"""The lip-sync discriminator (SyncNet style, SyncTalk Eq. 1-2) and the encoders it shares with the AVE.

The discriminator embeds a window of ``T`` mouth crops (the face encoder) and the log-mel window of the
same 0.2 s (the audio encoder, :mod:`headsync.face_sync.mouth_crops` defines the windows), and scores a pair by the
cosine similarity of the two embeddings (Eq. 1). Both embeddings end in a ReLU, so the similarity lies in
[0, 1] and can be read as the probability that the pair is in sync, which the binary cross-entropy of
Eq. 2 needs (Wav2Lip's expert discriminator does the same). It is trained on in-sync pairs (y = 1) and on
pairs whose audio is shifted by at least ``min_shift`` frames or taken from elsewhere in the clip (y = 0).

Shapes: face windows (B, T, H, W) float in [-0.5, 0.5]; mel windows (B, n_mels, R) raw log-mel (each audio
encoder standardises with the mean/std it was trained with, kept as buffers in its state dict).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.atomic import torch_save_atomic
from ..core.errors import UserError
from .mouth_crops import Clip, audio_windows, video_windows
from ..core.progress import Reporter

CHECKPOINT_FORMAT = "headsync.syncnet/1"
EPS = 1e-6


@dataclass(frozen=True)
class Spec:
    """Architecture of the discriminator (saved with it): window sizes and widths."""

    frames: int = 5  # T, video frames per window (odd)
    mel_rows: int = 20  # R, log-mel rows per window (100 rows/s: 0.2 s)
    n_mels: int = 80
    crop_height: int = 48
    crop_width: int = 96
    width: int = 32  # channels of the first conv layer; deeper layers use multiples
    embed_dim: int = 128


# ---- losses (Eq. 1-2) ----------------------------------------------------------------------------------

def one_cycle(opt: torch.optim.Optimizer, lr: float, steps: int) -> torch.optim.lr_scheduler.OneCycleLR:
    """One-cycle learning-rate schedule over ``steps`` (10% warm-up, at least 2 steps of it, so short
    CPU-sized schedules do not divide by a zero-length warm-up)."""
    steps = max(int(steps), 4)
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=max(0.1, 2.5 / steps))


def cosine_sim(f: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Eq. 1: ``F . A / (|F| |A|)`` per row of (B, E) embeddings -> (B,)."""
    return (f * a).sum(-1) / (f.norm(dim=-1) * a.norm(dim=-1)).clamp_min(EPS)


def sync_loss(sim: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Eq. 2, averaged over the batch: ``-(y log sim + (1 - y) log(1 - sim))``.

    ``sim`` (B,) in [0, 1] (clamped away from 0 and 1 so a confident mistake costs a finite amount);
    ``y`` (B,) 1 for in-sync pairs, 0 for offset ones."""
    s = sim.clamp(EPS, 1 - EPS)
    y = y.to(s.dtype)
    return -(y * torch.log(s) + (1 - y) * torch.log(1 - s)).mean()


# ---- encoders ------------------------------------------------------------------------------------------
def conv_block(cin: int, cout: int, stride: int | tuple[int, int] = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _out_size(size: int, n_halvings: int) -> int:
    for _ in range(n_halvings):
        size = (size + 1) // 2
    return size


class FaceEncoder(nn.Module):
    """A window of mouth crops (B, T, H, W) -> embedding (B, E) (ReLU'd, for the cosine of Eq. 1)."""

    def __init__(self, frames: int, height: int, width: int, channels: int, embed_dim: int):
        super().__init__()
        c = channels
        # Striding from the first layer: the mouth's opening is a coarse shape, and full-resolution
        # layers would cost most of the (CPU) time.
        self.convs = nn.Sequential(conv_block(frames, c, 2), conv_block(c, 2 * c, 2), conv_block(2 * c, 4 * c, 2),
                                   conv_block(4 * c, 8 * c, 2))
        self.fc = nn.Linear(8 * c * _out_size(height, 4) * _out_size(width, 4), embed_dim)

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc(self.convs(faces).flatten(1)))


class AudioEncoder(nn.Module):
    """A log-mel window (B, n_mels, R) -> feature (B, E). This is Conv(A) of SyncTalk's AVE as well.

    ``mel_mean``/``mel_std`` (buffers) standardise the raw log-mel; ``relu`` ends in a ReLU (the
    discriminator's embedding) or not (the AVE's lip feature)."""

    def __init__(self, n_mels: int, rows: int, channels: int, out_dim: int, relu: bool = True):
        super().__init__()
        c = channels
        self.n_mels, self.rows = n_mels, rows
        self.register_buffer("mel_mean", torch.zeros(()))
        self.register_buffer("mel_std", torch.ones(()))
        # The first halvings are along frequency only: 0.2 s is just 20 rows, and timing is what matters.
        self.convs = nn.Sequential(conv_block(1, c, (2, 1)), conv_block(c, 2 * c, (2, 1)),
                                   conv_block(2 * c, 4 * c, 2), conv_block(4 * c, 8 * c, 2))
        self.fc = nn.Linear(8 * c * _out_size(n_mels, 4) * _out_size(rows, 2), out_dim)
        self.relu = relu

    def set_normalisation(self, mel: np.ndarray) -> None:
        """Standardise with the statistics of ``mel`` (the training audio, any shape)."""
        self.mel_mean.fill_(float(np.mean(mel)))
        self.mel_std.fill_(float(np.std(mel)) + 1e-3)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = ((mel - self.mel_mean) / self.mel_std).unsqueeze(1)
        y = self.fc(self.convs(x).flatten(1))
        return F.relu(y) if self.relu else y


class SyncNet(nn.Module):
    """The discriminator: ``forward(faces (B,T,H,W), mel (B,n_mels,R)) -> sim (B,)`` in [0, 1]."""

    def __init__(self, spec: Spec = Spec()):
        super().__init__()
        self.spec = spec
        self.face = FaceEncoder(spec.frames, spec.crop_height, spec.crop_width, spec.width, spec.embed_dim)
        self.audio = AudioEncoder(spec.n_mels, spec.mel_rows, spec.width, spec.embed_dim, relu=True)

    def forward(self, faces: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        return cosine_sim(self.face(faces), self.audio(mel))


# ---- checkpoints ---------------------------------------------------------------------------------------
def load_state(module: nn.Module, state: dict[str, Any], what: str) -> None:
    """``module.load_state_dict(state)`` (strict) with a :class:`UserError` that names what did not fit."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong)):
            if keys:
                parts.append(f"{label}: {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''} ({len(keys)})")
        raise UserError(f"{what} does not fit this model; " + "; ".join(parts),
                        "use a checkpoint written by HeadSync with the same architecture settings, or leave "
                        "the checkpoint setting empty to train one for this subject")
    module.load_state_dict(state)


def save(net: SyncNet, path, fps: float, **info: Any) -> None:
    """Write the discriminator (spec, weights, frame rate it was trained at) through a temporary file."""
    torch_save_atomic(Path(path), {"format": CHECKPOINT_FORMAT, "spec": asdict(net.spec), "fps": fps,
                                   "state_dict": net.state_dict(), **info})


def load(path) -> tuple[SyncNet, float]:
    """A discriminator saved by :func:`save` (in eval mode) and the frame rate it was trained at."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise UserError(f"no lip-sync discriminator at {path}",
                        "prepare the subject with the 'ave' stage (`headsync prepare ...`), which trains it")
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not a HeadSync lip-sync discriminator", "prepare the subject again")
    net = SyncNet(Spec(**ck["spec"]))
    load_state(net, ck["state_dict"], f"the discriminator in {path}")
    return net.eval(), float(ck["fps"])


# ---- batches -------------------------------------------------------------------------------------------
def to_face_tensor(windows: np.ndarray) -> torch.Tensor:
    """uint8 crop windows (B, T, H, W) -> float tensor in [-0.5, 0.5]."""
    return torch.from_numpy(windows).float().div_(255.0).sub_(0.5)


@dataclass
class PairSampler:
    """Draws in-sync and offset (face window, audio window) pairs from clips.

    ``ranges[k] = (lo, hi)``: clip ``k`` may only use frames in ``[lo, hi)`` (the training part); a window
    centre and its shifted audio both stay inside it, so nothing leaks from held-out frames.
    """

    clips: list[Clip]
    ranges: list[tuple[int, int]]
    spec: Spec
    min_shift: int = 3
    max_shift: int = 15

    def __post_init__(self) -> None:
        half = self.spec.frames // 2
        self.centres = []
        for clip, (lo, hi) in zip(self.clips, self.ranges):
            c = np.arange(lo + half, hi - half)
            self.centres.append(c[clip.valid[c]] if c.size else c)
        sizes = np.array([c.size for c in self.centres], np.float64)
        if sizes.sum() < 2 * self.min_shift + 2:
            raise UserError("too few usable frames to train the lip-sync networks",
                            "use a longer clip (a few seconds at least) with the face visible")
        self.weights = sizes / sizes.sum()

    def sample(self, n: int, rng: np.random.Generator, positive_fraction: float = 0.5):
        """``n`` pairs: faces (n, T, H, W) uint8, audio (n, n_mels, R) float32, labels (n,) float32,
        and the clip index / centre / audio centre of each pair (for the AVE's reference windows)."""
        which = rng.choice(len(self.clips), n, p=self.weights)
        faces, mels, ys, centres, audio_centres = [], [], [], [], []
        for k in range(len(self.clips)):
            m = int((which == k).sum())
            if m == 0:
                continue
            clip, c = self.clips[k], self.centres[k]
            i = c[rng.integers(0, c.size, m)]
            y = (rng.random(m) < positive_fraction).astype(np.float32)
            j = np.where(y == 1, i, self.negative(i, c, rng))
            faces.append(video_windows(clip.crops, i, self.spec.frames))
            mels.append(audio_windows(clip.mel, j, clip.fps, self.spec.mel_rows))
            ys.append(y)
            centres.append(np.stack([np.full(m, k), i], 1))
            audio_centres.append(j)
        return (np.concatenate(faces), np.concatenate(mels), np.concatenate(ys), np.concatenate(centres),
                np.concatenate(audio_centres))

    def negative(self, i: np.ndarray, c: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Audio centres at least ``min_shift`` frames from ``i``: half near shifts (the hard cases: up to
        ``max_shift`` either way), half anywhere else in the clip's range."""
        lo, hi = c[0], c[-1]
        shift = rng.integers(self.min_shift, self.max_shift + 1, i.size) * rng.choice([-1, 1], i.size)
        near = i + shift
        near = np.where((near < lo) | (near > hi), i - shift, near)  # bounce back into range
        far = c[rng.integers(0, c.size, i.size)]
        j = np.where(rng.random(i.size) < 0.5, near, far)
        bad = (np.abs(j - i) < self.min_shift) | (j < lo) | (j > hi)
        # Rare (clips barely longer than 2 * max_shift): move the offender to the farther end of the range.
        j[bad] = np.where(i[bad] - lo > hi - i[bad], lo, hi)
        return j


def augment(faces: torch.Tensor, mel: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Training-time jitter so a few hundred frames generalise: crop shift of up to 2 px, brightness and
    contrast per window, a gain change of the audio (+-6 dB, as log-mel offset) and a little noise."""
    b = faces.shape[0]
    dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=gen))
    faces = torch.roll(faces, (dy, dx), dims=(2, 3))
    contrast = 1 + 0.2 * (torch.rand(b, 1, 1, 1, generator=gen) - 0.5) * 2
    bright = 0.08 * (torch.rand(b, 1, 1, 1, generator=gen) - 0.5) * 2
    faces = faces * contrast + bright
    return faces, jitter_audio(mel, gen)


def jitter_audio(mel: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Log-mel windows (B, n_mels, R) with a random gain (+-6 dB, an offset in log power) and a little noise."""
    gain = np.log(10 ** 0.6) * (torch.rand(mel.shape[0], 1, 1, generator=gen) - 0.5) * 2
    return mel + gain + 0.1 * torch.randn(mel.shape, generator=gen)


# ---- training and evaluation ---------------------------------------------------------------------------
def train(sampler: PairSampler, steps: int, batch: int, lr: float, seed: int = 0,
          reporter: Reporter | None = None, device: str = "cpu") -> SyncNet:
    """Train a discriminator on ``sampler``'s pairs with Eq. 2 (Adam, cosine-decayed learning rate)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    net = SyncNet(sampler.spec)
    net.audio.set_normalisation(np.concatenate([c.mel for c in sampler.clips]))
    net.to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = one_cycle(opt, lr, steps)
    if reporter:
        reporter.start("sync discriminator", steps)
    avg = None
    for _ in range(steps):
        faces, mels, y, _, _ = sampler.sample(batch, rng)
        f, a = augment(to_face_tensor(faces), torch.from_numpy(mels), gen)
        loss = sync_loss(net(f.to(device), a.to(device)), torch.from_numpy(y).to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_v = loss.item()
        avg = loss_v if avg is None else 0.95 * avg + 0.05 * loss_v
        if reporter:
            reporter.advance(1, loss=avg)
    return net.cpu().eval()


@torch.no_grad()
def embed_faces(net: SyncNet, crops: np.ndarray, centres: np.ndarray, batch: int = 256) -> np.ndarray:
    """Face embeddings (len(centres), E) of the windows centred on ``centres`` (float32, not normalised)."""
    out = [net.face(to_face_tensor(video_windows(crops, centres[s:s + batch], net.spec.frames)))
           for s in range(0, len(centres), batch)]
    return torch.cat(out).numpy() if out else np.zeros((0, net.spec.embed_dim), np.float32)


@torch.no_grad()
def embed_audio(net: SyncNet, mel: np.ndarray, centres: np.ndarray, fps: float, batch: int = 256) -> np.ndarray:
    """Audio embeddings (len(centres), E) of the windows centred on video frames ``centres``."""
    out = [net.audio(torch.from_numpy(audio_windows(mel, centres[s:s + batch], fps, net.spec.mel_rows)))
           for s in range(0, len(centres), batch)]
    return torch.cat(out).numpy() if out else np.zeros((0, net.spec.embed_dim), np.float32)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), EPS)


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve: the chance a random positive scores above a random negative (ties half)."""
    from scipy.stats import rankdata

    scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC AUC needs positives and negatives")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def shift_auc(net: SyncNet, clip: Clip, lo: int, hi: int, min_shift: int = 3) -> dict[str, float]:
    """How well ``net`` tells in-sync from shifted windows on frames ``[lo, hi)`` of ``clip``.

    Every window centre ``i`` (whole window inside the range) is paired with its own audio (positive) and
    with the audio of every other centre ``j`` in the range with ``|i - j| >= min_shift`` (negatives).
    Returns ``auc``, the counts, and the mean similarity of each class."""
    half = net.spec.frames // 2
    c = np.arange(lo + half, hi - half)
    c = c[clip.valid[c]]
    if c.size < min_shift + 2:
        raise UserError(f"only {c.size} usable held-out windows", "use a longer clip")
    sim = unit(embed_faces(net, clip.crops, c)) @ unit(embed_audio(net, clip.mel, c, clip.fps)).T
    d = np.abs(c[:, None] - c[None, :])
    pos, neg = sim[d == 0], sim[d >= min_shift]
    scores = np.concatenate([pos, neg])
    labels = np.concatenate([np.ones(pos.size), np.zeros(neg.size)])
    return {"auc": roc_auc(scores, labels), "positives": int(pos.size), "negatives": int(neg.size),
            "sim_in_sync": float(pos.mean()), "sim_shifted": float(neg.mean())}
