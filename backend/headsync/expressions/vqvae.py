"""Transformer VQ-VAE over coefficient sequences (SyncTalk++ Sec. III-E, Eq. 25-27).

An encoder E maps a window of coefficients B (W frames x K) to one latent per ``stride`` frames, each latent
is replaced by its nearest entry of a codebook Z of N entries of C dimensions (Eq. 25), and a decoder D
rebuilds the window from the codes (Eq. 26). Training minimises (Eq. 27, the terms weighted as the paper
writes them)::

    ||B - B~||^2 + ||Z_e - sg(Z_q)||^2 + beta ||sg(Z_e) - Z_q||^2

(the reconstruction term weighted towards frames away from the subject's rest: ``event_weight``), with
the straight-through estimator carrying the reconstruction gradient past the quantiser, and codes that
fall out of use restarted on encoder outputs (dead-code restarts). It is trained per subject on its
captured coefficients (training frames only), so at use any sequence (generated, imported, edited) comes out
as a sequence of this subject's own code words: within what the renderer learned.

Coefficients are normalised per column by the subject's min..max; the decoder ends in a sigmoid mapped back
onto min..max, so its output cannot leave the subject's range (:meth:`VQVAE.project` also clamps, as a
guarantee independent of the weights). During training a share of the input windows is perturbed (scaled,
shifted, noisy: ``augment``) while the target stays the clean window, so out-of-range input is pulled back
towards the subject's own expressions rather than copied.

Long sequences are cut into overlapping windows (``window``, ``hop``) and blended with triangular weights.
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
from .coefficients import Range


@dataclass(frozen=True)
class VQConfig:
    """Preset table ``[expressions.vqvae]``. Lengths in frames."""

    window: int = 32        # frames per sequence (1.3 s at 25 fps)
    hop: int = 16           # window step at use; windows overlap and are blended
    stride: int = 2         # frames per code (a 4-6 frame blink spans 2-3 codes)
    d_model: int = 64
    layers: int = 2         # transformer layers in the encoder and in the decoder
    heads: int = 4
    codes: int = 256        # N, codebook entries
    code_dim: int = 32      # C, dimensions of a code
    beta: float = 0.25      # weight of the codebook term as Eq. 27 writes it
    steps: int = 1500
    batch: int = 32
    lr: float = 3e-3
    augment: float = 0.5    # share of training windows whose input is perturbed (target stays clean)
    event_weight: float = 4.0  # extra weight of the reconstruction error per unit of distance from rest
    restart_every: int = 100  # steps between dead-code restarts
    seed: int = 0


class VQVAE(nn.Module):
    """E, Z and D for K coefficients; ``rng`` the subject's range (normalisation and output bounds)."""

    def __init__(self, k: int, cfg: VQConfig, rng: Range):
        super().__init__()
        if cfg.window % cfg.stride:
            raise UserError(f"[expressions.vqvae] window {cfg.window} is not a multiple of stride {cfg.stride}",
                            "pick a window that the stride divides")
        self.k, self.cfg = k, cfg
        tokens = cfg.window // cfg.stride
        self.register_buffer("lo", torch.as_tensor(rng.lo, dtype=torch.float32))
        self.register_buffer("span", torch.as_tensor(np.maximum(rng.hi - rng.lo, 1e-4), dtype=torch.float32))
        rest = (np.asarray(rng.rest if rng.rest is not None else rng.lo) - rng.lo) / np.maximum(rng.hi - rng.lo, 1e-4)
        self.register_buffer("rest_unit", torch.as_tensor(rest, dtype=torch.float32))
        self.embed = nn.Conv1d(k, cfg.d_model, cfg.stride, stride=cfg.stride)
        self.pos_enc = nn.Parameter(torch.randn(tokens, cfg.d_model) * 0.02)
        self.pos_dec = nn.Parameter(torch.randn(tokens, cfg.d_model) * 0.02)

        def stack() -> nn.TransformerEncoder:
            layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.heads, 2 * cfg.d_model, dropout=0.0, batch_first=True)
            return nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)

        self.encoder = stack()
        self.to_code = nn.Linear(cfg.d_model, cfg.code_dim)
        self.codebook = nn.Parameter(torch.randn(cfg.codes, cfg.code_dim) * 0.1)
        self.from_code = nn.Linear(cfg.code_dim, cfg.d_model)
        self.decoder = stack()
        self.out = nn.Linear(cfg.d_model, cfg.stride * k)

    # ---- the three parts ---------------------------------------------------------------------------------
    def normalise(self, b: torch.Tensor) -> torch.Tensor:
        """(B, W, K) coefficients -> subject-normalised units (training data in [0, 1]), clipped to [-1, 2]."""
        return ((b - self.lo) / self.span).clamp(-1.0, 2.0)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised (B, W, K) -> Z_e (B, W / stride, C)."""
        h = self.embed(x.transpose(1, 2)).transpose(1, 2) + self.pos_enc
        return self.to_code(self.encoder(h))

    def quantise(self, z_e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 25: nearest codebook entries -> (Z_q (B, T, C), indices (B, T))."""
        flat = z_e.reshape(-1, z_e.shape[-1])
        idx = torch.cdist(flat, self.codebook).argmin(dim=1)
        return self.codebook[idx].view_as(z_e), idx.view(z_e.shape[:-1])

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        """Eq. 26: Z_q (B, T, C) -> coefficients (B, T * stride, K) within the subject's min..max."""
        h = self.decoder(self.from_code(z_q) + self.pos_dec)
        y = torch.sigmoid(self.out(h)).reshape(h.shape[0], -1, self.k)
        return self.lo + y * self.span

    def forward(self, b: torch.Tensor, target: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Reconstruct (B, W, K) ``b``; with ``target`` (clean windows) also the losses of Eq. 27."""
        z_e = self.encode(self.normalise(b))
        z_q, idx = self.quantise(z_e)
        z_st = z_e + (z_q - z_e).detach()  # straight-through estimator
        out = {"recon": self.decode(z_st), "indices": idx, "z_e": z_e}
        if target is not None:
            t = self.normalise(target)
            # frames away from the subject's rest (blinks, raises) weigh more: they are rare but are the
            # expression, and a plain mean would learn to smooth them away first
            w = 1.0 + self.cfg.event_weight * (t - self.rest_unit).abs()
            rec = (w * (self.normalise(out["recon"]) - t) ** 2).sum() / w.sum()
            commit = F.mse_loss(z_e, z_q.detach())
            book = F.mse_loss(z_e.detach(), z_q)
            out.update(loss=rec + commit + self.cfg.beta * book, recon_loss=rec, commit_loss=commit, book_loss=book)
        return out

    # ---- use -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def project(self, values: np.ndarray) -> np.ndarray:
        """Pass a (T, K) sequence through the VQ-VAE: (T, K) float32 within the subject's min..max.

        Windows of ``window`` frames every ``hop`` frames (the ends padded by repeating the edge frames),
        blended with triangular weights so window seams do not show."""
        x = np.asarray(values, np.float32)
        if x.ndim != 2 or x.shape[1] != self.k:
            raise UserError(f"the VQ-VAE takes (frames, {self.k}) coefficients, got {list(x.shape)}",
                            "map the coefficients onto the subject's names first")
        t, w, hop = x.shape[0], self.cfg.window, max(1, min(self.cfg.hop, self.cfg.window))
        starts = list(range(0, max(t - w, 0) + 1, hop))
        if starts[-1] + w < t:
            starts.append(t - w)
        padded = np.concatenate([x, np.repeat(x[-1:], max(0, w - t), axis=0)]) if t < w else x
        windows = torch.as_tensor(np.stack([padded[s:s + w] for s in starts]), device=self.lo.device)
        self.eval()
        rec = self(windows)["recon"].cpu().numpy().astype(np.float64)
        weight = np.minimum(np.arange(1, w + 1), np.arange(w, 0, -1)).astype(np.float64)
        acc = np.zeros((len(padded), self.k))
        norm = np.zeros(len(padded))
        for s, r in zip(starts, rec):
            acc[s:s + w] += r * weight[:, None]
            norm[s:s + w] += weight
        out = (acc / norm[:, None])[:t]
        lo, hi = self.lo.cpu().numpy(), (self.lo + self.span).cpu().numpy()
        return np.clip(out, lo, hi).astype(np.float32)


# ---- training --------------------------------------------------------------------------------------------
def perturb(windows: torch.Tensor, span: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Out-of-distribution versions of (B, W, K) windows: per-window, per-column gain in [0.5, 2.5] about the
    window's mean, an offset of up to +-40 % of the subject's range, and noise of 5 %."""
    b, _, k = windows.shape
    gain = 0.5 + 2.0 * torch.rand(b, 1, k, generator=gen)
    offset = (torch.rand(b, 1, k, generator=gen) - 0.5) * 0.8 * span
    noise = torch.randn(windows.shape, generator=gen) * 0.05 * span
    mean = windows.mean(dim=1, keepdim=True)
    return mean + (windows - mean) * gain + offset + noise


def train(values: np.ndarray, cfg: VQConfig, reporter: Reporter | None = None,
          device: torch.device | str = "cpu") -> tuple[VQVAE, dict[str, Any]]:
    """Train on the (N, K) training-frame coefficients (consecutive frames, N >= window).

    Returns the model (on ``device``, eval mode) and its training figures."""
    x = np.asarray(values, np.float32)
    if x.shape[0] < cfg.window:
        raise UserError(f"{x.shape[0]} training frames are too few for the expression VQ-VAE's {cfg.window}-frame "
                        "windows", "prepare a longer clip of the subject, or lower [expressions.vqvae] window")
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = Range.of(x)
    model = VQVAE(x.shape[1], cfg, rng).to(device)
    data = torch.as_tensor(x)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(cfg.steps, 2), pct_start=0.1)
    usage = torch.zeros(cfg.codes)
    offsets = torch.arange(cfg.window)
    restarts, last = 0, {}
    if reporter:
        reporter.start("expression VQ-VAE", cfg.steps)
    model.train()
    for step in range(cfg.steps):
        starts = torch.randint(0, x.shape[0] - cfg.window + 1, (cfg.batch,), generator=gen)
        clean = data[starts[:, None] + offsets]
        noisy = torch.rand(cfg.batch, 1, 1, generator=gen) < cfg.augment
        inp = torch.where(noisy, perturb(clean, model.span.cpu(), gen), clean)
        out = model(inp.to(device), clean.to(device))
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        sched.step()
        usage += torch.bincount(out["indices"].flatten().cpu(), minlength=cfg.codes).float()
        if (step + 1) % cfg.restart_every == 0 and step + 1 < cfg.steps:
            dead = torch.nonzero(usage == 0).flatten()
            if dead.numel():
                z = out["z_e"].detach().reshape(-1, cfg.code_dim)
                pick = torch.randint(0, z.shape[0], (dead.numel(),), generator=gen)
                with torch.no_grad():
                    model.codebook[dead.to(device)] = z[pick.to(device)] + 0.01 * torch.randn_like(z[pick.to(device)])
                restarts += int(dead.numel())
            usage.zero_()
        last = {k: float(out[k].detach()) for k in ("loss", "recon_loss", "commit_loss", "book_loss")}
        if reporter:
            reporter.advance(1, loss=last["loss"])
    model.eval()
    used = int((usage > 0).sum()) if usage.sum() > 0 else None
    return model, {"steps": cfg.steps, "final": {k: round(v, 6) for k, v in last.items()},
                   "code_restarts": restarts, "codes_used_last_period": used, "train_frames": int(x.shape[0])}


def reconstruction_error(model: VQVAE, values: np.ndarray) -> dict[str, float]:
    """RMSE and mean absolute error of :meth:`VQVAE.project` on (T, K) values, in coefficient units."""
    x = np.asarray(values, np.float32)
    err = model.project(x) - x
    return {"rmse": float(np.sqrt((err ** 2).mean())), "mae": float(np.abs(err).mean())}


# ---- files -------------------------------------------------------------------------------------------------
def save(model: VQVAE, path: Path, names: list[str], info: dict[str, Any]) -> None:
    """Write the model (config, names, range, weights, info) to ``path`` through a temporary name."""
    lo = model.lo.cpu().numpy().astype(np.float64)
    hi = lo + model.span.cpu().numpy()
    state = {"format": "headsync.expressions.vqvae/1", "config": asdict(model.cfg), "names": list(names),
             "range": {"lo": lo.tolist(), "hi": hi.tolist()}, "state": model.state_dict(), "info": info}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    torch.save(state, tmp)
    tmp.replace(path)


def load(path: Path, device: torch.device | str = "cpu") -> tuple[VQVAE, list[str], dict[str, Any]]:
    """Read a model written by :func:`save` -> (model in eval mode, names, info)."""
    try:
        d = torch.load(path, map_location=device, weights_only=False)
        cfg = VQConfig(**d["config"])
        lo, hi = np.asarray(d["range"]["lo"]), np.asarray(d["range"]["hi"])
        model = VQVAE(len(d["names"]), cfg, Range(lo, hi, lo, hi)).to(device)  # rest comes with the state
        model.load_state_dict(d["state"])
    except (OSError, EOFError, KeyError, RuntimeError, TypeError, ValueError, pickle.UnpicklingError) as e:
        raise UserError(f"the expression VQ-VAE {path} is unreadable ({e})",
                        "delete the subject's expressions/ folder; it is trained again on next use")
    return model.eval(), list(d["names"]), dict(d.get("info", {}))
