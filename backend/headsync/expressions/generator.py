"""Audio -> blendshape coefficients: the default generator, an audio-conditioned prior over the VQ-VAE's codes.

SyncTalk++ drives its expressions with EmoTalk (:mod:`.emotalk`, loaded when a user supplies its weights)
and relies on the VQ-VAE's discrete codebook to "mitigate mapping ambiguity" (Sec. III-E). The default,
which needs no download, is trained per subject and takes that literally: instead of regressing the
coefficients (an L2 objective answers the conditional mean: what the audio does not determine, such as
when a brow goes up, is averaged away, and the first version needed its output rescaled to move at all),
it learns a distribution over the subject's own
code words given the audio, as the VQ-VAE paper's prior over its latents (van den Oord et al., SyncTalk++
ref. [83]), and samples it:

    features (T, D) -> standardise -> 2 x Conv1d (k, then stride: one row per code) -> bidirectional GRU
    [audio row + embedding of the previous code + position of the code in its VQ-VAE window]
        -> GRU (left to right) -> Linear -> logits over the N codes

trained with cross-entropy on the code indices of the subject's captured training windows (the VQ-VAE's
encoder + quantiser, Eq. 25), consecutive windows in one sequence so the GRU learns what follows a window.
At use, codes are drawn one after the other (``temperature``) and the VQ-VAE's decoder (Eq. 26) turns each
window of codes back into coefficients: every generated frame is one of this subject's learned expressions,
with its amplitude, and a new ``seed`` draws a new performance for the same audio. Blinks do not follow the
audio: their columns come from :mod:`.blinks`, a stochastic model of the subject's blink timing.
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
from ..core.progress import Reporter
from ..prepare.capture import BLINK_COLUMNS
from .blinks import BlinkModel
from .vqvae import VQVAE


@dataclass(frozen=True)
class GeneratorConfig:
    """Preset table ``[expressions.generator]``."""

    feature: str = "auto"     # audio feature it listens to: auto (ave when prepared, else mel) | ave | mel | hubert
    hidden: int = 64
    kernel: int = 5           # frames, first conv layer
    dropout: float = 0.2
    windows: int = 3          # consecutive VQ-VAE windows per training sequence
    steps: int = 800
    batch: int = 16
    lr: float = 3e-3
    weight_decay: float = 1e-3
    temperature: float = 1.0  # of the code sampling (1: the learned distribution; towards 0: its mode)
    seed: int = 0


class CodePrior(nn.Module):
    """p(code_t | codes < t, audio): (B, T, D) features at ``stride`` rows per code -> (B, T / stride, N) logits.

    ``tokens``: codes per VQ-VAE window (a code's meaning depends on its place in the window)."""

    def __init__(self, d: int, codes: int, stride: int, tokens: int, cfg: GeneratorConfig,
                 feat_mean: np.ndarray, feat_std: np.ndarray):
        super().__init__()
        self.cfg, self.codes, self.stride, self.tokens = cfg, codes, stride, tokens
        for name, v in (("feat_mean", feat_mean), ("feat_std", feat_std)):
            self.register_buffer(name, torch.as_tensor(np.asarray(v), dtype=torch.float32))
        h = cfg.hidden
        self.convs = nn.Sequential(nn.Conv1d(d, h, cfg.kernel, padding=cfg.kernel // 2), nn.GELU(),
                                   nn.Dropout(cfg.dropout), nn.Conv1d(h, h, stride, stride=stride), nn.GELU(),
                                   nn.Dropout(cfg.dropout))
        self.context = nn.GRU(h, h // 2, batch_first=True, bidirectional=True)
        self.code_emb = nn.Embedding(codes + 1, h)  # index ``codes``: the start of a sequence
        self.pos_emb = nn.Embedding(tokens, h)
        self.ar = nn.GRU(h, h, batch_first=True)
        self.head = nn.Linear(h, codes)

    def audio(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, T, D) features (T a multiple of ``stride``) -> (B, T / stride, H) audio rows plus positions."""
        x = (feats - self.feat_mean) / self.feat_std
        a = self.context(self.convs(x.transpose(1, 2)).transpose(1, 2))[0]
        pos = torch.arange(a.shape[1], device=a.device) % self.tokens
        return a + self.pos_emb(pos)

    def forward(self, feats: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits (B, T', N) for (B, T') ``codes`` of the (B, T' * stride, D) ``feats``."""
        prev = torch.cat([torch.full_like(codes[:, :1], self.codes), codes[:, :-1]], dim=1)
        return self.head(self.ar(self.audio(feats) + self.code_emb(prev))[0])

    @torch.no_grad()
    def sample(self, feats: torch.Tensor, gen: torch.Generator, temperature: float) -> torch.Tensor:
        """(1, T, D) features -> (T / stride,) codes drawn one after the other."""
        a = self.audio(feats)[0]
        prev = torch.tensor([self.codes])
        state, out = None, []
        for t in range(a.shape[0]):
            y, state = self.ar((a[t] + self.code_emb(prev)).view(1, 1, -1), state)
            logits = self.head(y[0, 0])
            if temperature <= 0:
                prev = logits.argmax()[None]
            else:
                prev = torch.multinomial(F.softmax(logits / temperature, dim=-1), 1, generator=gen)
            out.append(int(prev))
        return torch.tensor(out)


@dataclass
class Generator:
    """A trained default generator: the code prior, the subject's blink model, and the VQ-VAE it samples."""

    net: CodePrior
    names: list[str]
    feature: str
    blinks: BlinkModel
    info: dict[str, Any]

    def generate(self, feats: np.ndarray, fps: float, vq: VQVAE, seed: int = 0) -> np.ndarray:
        """(T, D) features of new audio at ``fps`` -> (T, K) coefficients: codes drawn by ``seed`` and decoded
        by ``vq`` (the subject's VQ-VAE, the one the prior was trained on), blinks drawn by ``seed``."""
        x = np.asarray(feats, np.float32)
        t, w = len(x), vq.cfg.window
        n_win = max(1, -(-t // w))
        x = np.concatenate([x, np.repeat(x[-1:], n_win * w - t, axis=0)])  # the end held to whole windows
        gen = torch.Generator().manual_seed(int(seed))
        self.net.eval()
        codes = self.net.sample(torch.as_tensor(x)[None], gen, self.net.cfg.temperature).view(n_win, -1)
        vq.eval()
        with torch.no_grad():
            dev = vq.codebook.device
            y = vq.decode(vq.codebook[codes.to(dev)]).reshape(n_win * w, -1)[:t].cpu().numpy()
        y = y.astype(np.float32)
        y[:, list(BLINK_COLUMNS)] = self.blinks.sample(t, fps, np.random.default_rng(seed))
        return y


def code_table(vq: VQVAE, values: np.ndarray) -> np.ndarray:
    """(N, K) consecutive coefficients -> (N - window + 1, tokens) int64: the codes of the window at each start."""
    x = torch.as_tensor(np.asarray(values, np.float32))
    w = vq.cfg.window
    starts = torch.arange(len(x) - w + 1)
    vq.eval()
    out = []
    with torch.no_grad():
        for chunk in starts.split(256):
            win = x[chunk[:, None] + torch.arange(w)].to(vq.codebook.device)
            out.append(vq.quantise(vq.encode(vq.normalise(win)))[1].cpu())
    return torch.cat(out).numpy()


def train(feats: np.ndarray, values: np.ndarray, names: list[str], feature: str, vq: VQVAE,
          cfg: GeneratorConfig, blinks: BlinkModel, reporter: Reporter | None = None) -> Generator:
    """Train on the training frames: ``feats`` (N, D) audio features and ``values`` (N, K) captured
    coefficients of the same consecutive frames; ``vq`` the subject's VQ-VAE trained on them."""
    x, y = np.asarray(feats, np.float32), np.asarray(values, np.float32)
    if len(x) != len(y):
        raise UserError(f"the subject's audio features have {len(x)} rows for {len(y)} frames of coefficients",
                        "run `headsync prepare` again")
    w, stride = vq.cfg.window, vq.cfg.stride
    n_win = min(cfg.windows, len(x) // w)
    if n_win < 1:
        raise UserError(f"{len(x)} training frames are too few to train the expression generator",
                        "prepare a longer clip of the subject")
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    table = torch.as_tensor(code_table(vq, y))           # (starts, tokens)
    net = CodePrior(x.shape[1], vq.cfg.codes, stride, w // stride, cfg, x.mean(0), x.std(0) + 1e-5)
    xt = torch.as_tensor(x)
    span = n_win * w
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(cfg.steps, 2), pct_start=0.1)
    frames, windows = torch.arange(span), torch.arange(n_win) * w
    if reporter:
        reporter.start("expression generator", cfg.steps)
    net.train()
    loss = torch.zeros(())
    for _ in range(cfg.steps):
        starts = torch.randint(0, len(x) - span + 1, (cfg.batch,), generator=gen)
        codes = table[starts[:, None] + windows].reshape(cfg.batch, -1)
        logits = net(xt[starts[:, None] + frames], codes)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), codes.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if reporter:
            reporter.advance(1, loss=float(loss.detach()))
    net.eval()
    info = {"steps": cfg.steps, "final_loss": round(float(loss.detach()), 6), "train_frames": int(len(x)),
            "feature": feature, "codes_in_training": int(np.unique(table.numpy()).size)}
    return Generator(net, list(names), feature, blinks, info)


# ---- files -------------------------------------------------------------------------------------------------
FORMAT = "headsync.expressions.generator/2"


def save(g: Generator, path: Path) -> None:
    """Write the generator to ``path`` through a temporary name."""
    n = g.net
    state = {"format": FORMAT, "config": asdict(n.cfg), "names": g.names, "feature": g.feature,
             "d": int(n.convs[0].in_channels), "codes": n.codes, "stride": n.stride, "tokens": n.tokens,
             "state": n.state_dict(), "blinks": g.blinks.to_json(), "info": g.info}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    torch.save(state, tmp)
    tmp.replace(path)


def load(path: Path) -> Generator:
    """Read a generator written by :func:`save`."""
    try:
        d = torch.load(path, map_location="cpu", weights_only=False)
        if d.get("format") != FORMAT:
            raise ValueError(f"format {d.get('format')!r}, expected {FORMAT}")
        cfg = GeneratorConfig(**d["config"])
        dim = int(d["d"])
        net = CodePrior(dim, int(d["codes"]), int(d["stride"]), int(d["tokens"]), cfg, np.zeros(dim), np.ones(dim))
        net.load_state_dict(d["state"])
    except (OSError, EOFError, KeyError, RuntimeError, TypeError, ValueError, pickle.UnpicklingError) as e:
        raise UserError(f"the expression generator {path} is unreadable ({e})",
                        "delete the subject's expressions/ folder; it is trained again on next use")
    return Generator(net.eval(), list(d["names"]), d["feature"], BlinkModel.from_json(d["blinks"]),
                     dict(d.get("info", {})))
