"""The audio-visual encoder (SyncTalk 3.2, SyncTalk++ III-B) and its preparation stage ``ave``.

Training, per subject (or on extra clips the user lists), in two phases:

1. the lip-sync discriminator (:mod:`headsync.face_sync.syncnet`) learns in-sync vs offset pairs (Eq. 1-2);
2. with the discriminator frozen, Conv(A) (an audio encoder over a 0.2 s log-mel window) and Conv(F) (a
   face encoder) are concatenated and a convolutional decoder restores the window of mouth crops:
   ``L = |F - Dec(Conv(A) + Conv(F))|_1`` (Eq. 3) ``+ sync_weight * L_sync`` (Eq. 2 on the restored window:
   y = 1 with its own audio, y = 0 with audio shifted by >= ``min_shift`` frames).

Conv(F) sees the target window with its lower part masked plus a reference window from another moment
(as Wav2Lip does), not the target itself: fed the very frames it must restore, the decoder would copy
them and Conv(A) would learn nothing. After training only Conv(A) is kept: ``audio_features/ave.npy``
(N, feature_dim) holds Conv(A) of the audio window centred on each frame, rows aligned like ``mel.npy``;
``ave_encoder.pt`` holds Conv(A) for new audio (:mod:`headsync.face_sync.lip_features`) and ``syncnet.pt`` the
discriminator for ``headsync eval --sync``. The last ``holdout_fraction`` of the subject's frames is never
trained on (the renderer evaluates there); the discriminator's ROC AUC on it is recorded.

A pretrained encoder (``checkpoint``: a file written here, or a bare state dict of the same
architecture) replaces phase 2.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import syncnet
from ..core.atomic import save_npy_atomic, torch_save_atomic
from ..core.devices import pick_device
from ..core.errors import UserError
from ..subject.split import SplitConfig, holdout_start
from .mouth_crops import Clip, audio_windows, subject_clip, video_clip, video_windows
from ..core.progress import Reporter
from ..subject.folder import Subject
from .syncnet import AudioEncoder, PairSampler, conv_block, load_state, sync_loss, to_face_tensor

NAME = "ave"
#: Progress phases of the stage (``Reporter.begin_step``): mouth crops, the discriminator, the encoder.
PHASES = 3
VERSION = 1
REQUIRES = ("landmarks", "audio")

CHECKPOINT_FORMAT = "headsync.ave_encoder/1"
#: Rows from this fraction of the crop height down are hidden from Conv(F): below the upper lip
#: (the crop's top is just under the nose), so where the mouth is open must come from the audio.
MASK_FROM = 0.25


@dataclass(frozen=True)
class Config:
    """The ``[ave]`` preset table. Defaults are GPU-sized; ``preview`` shrinks them for a CPU."""

    frames: int = 5  # T: mouth crops per window
    mel_rows: int = 20  # R: log-mel rows per window (100/s), the same 0.2 s at 25 fps
    crop_height: int = 48
    crop_width: int = 96
    width: int = 32  # first-layer channels of every encoder
    embed_dim: int = 128  # discriminator embedding
    feature_dim: int = 64  # D: channels of ave.npy
    sync_steps: int = 3000
    sync_batch: int = 64
    sync_lr: float = 2e-3
    ave_steps: int = 3000
    ave_batch: int = 32
    ave_lr: float = 2e-3
    sync_weight: float = 0.01  # weight of Eq. 2 against Eq. 3 (larger values blur the restored mouths)
    min_shift: int = 3  # negatives are at least this many frames off
    max_shift: int = 15  # "near" negatives are at most this many frames off
    # The subject's split: filled from the preset's [split] table by prepare (subject.split), so the encoder
    # never trains on the frames the renderer is evaluated on.
    holdout_fraction: float = SplitConfig.holdout_fraction
    extra_clips: tuple[str, ...] = ()  # more talking-head videos to train on (paths)
    checkpoint: str = ""  # a pretrained encoder: skips phase 2
    seed: int = 0
    device: str = "auto"  # auto | cuda | cpu

    def sync_spec(self) -> syncnet.Spec:
        return syncnet.Spec(frames=self.frames, mel_rows=self.mel_rows, crop_height=self.crop_height,
                            crop_width=self.crop_width, width=self.width, embed_dim=self.embed_dim)


# ---- the network ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EncoderSpec:
    """Architecture of Conv(A), saved in ``ave_encoder.pt`` so a checkpoint rebuilds itself."""

    n_mels: int = 80
    mel_rows: int = 20
    width: int = 32
    feature_dim: int = 64

    def build(self) -> AudioEncoder:
        return AudioEncoder(self.n_mels, self.mel_rows, self.width, self.feature_dim, relu=False)


class AVEncoder(nn.Module):
    """``Dec(Conv(A) + Conv(F))``: (masked (B,T,H,W), reference (B,T,H,W), mel (B,n_mels,R)) -> (B,T,H,W).

    Faces are in [-0.5, 0.5] (:func:`headsync.face_sync.syncnet.to_face_tensor`); so is the output. Conv(F) is a
    4-level strided encoder whose levels also feed the decoder (U-Net skips); Conv(A)'s vector is tiled
    over the coarsest level and concatenated there (the ``+`` of Eq. 3)."""

    def __init__(self, frames: int, spec: EncoderSpec):
        super().__init__()
        c, d = spec.width, spec.feature_dim
        self.audio = spec.build()
        self.enc = nn.ModuleList([conv_block(2 * frames, c, 2), conv_block(c, 2 * c, 2),
                                  conv_block(2 * c, 4 * c, 2), conv_block(4 * c, 4 * c, 2)])
        self.fuse = conv_block(4 * c + d, 4 * c)
        self.dec = nn.ModuleList([conv_block(8 * c, 4 * c), conv_block(6 * c, 2 * c), conv_block(3 * c, c)])
        self.out = nn.Conv2d(c, frames, 3, 1, 1)

    def forward(self, masked: torch.Tensor, reference: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        a = self.audio(mel)
        skips, x = [], torch.cat([masked, reference], 1)
        for layer in self.enc:
            x = layer(x)
            skips.append(x)
        x = self.fuse(torch.cat([x, a[:, :, None, None].expand(-1, -1, *x.shape[2:])], 1))
        for layer, skip in zip(self.dec, reversed(skips[:-1])):
            x = F.interpolate(x, size=skip.shape[2:], mode="bilinear", align_corners=False)
            x = layer(torch.cat([x, skip], 1))
        x = F.interpolate(x, size=masked.shape[2:], mode="bilinear", align_corners=False)
        return torch.sigmoid(self.out(x)) - 0.5


def mask_lower(faces: torch.Tensor) -> torch.Tensor:
    """The face window with rows from ``MASK_FROM`` of the height down set to mid-grey (0)."""
    out = faces.clone()
    out[..., int(round(MASK_FROM * faces.shape[-2])):, :] = 0.0
    return out


def recon_loss(target: torch.Tensor, restored: torch.Tensor) -> torch.Tensor:
    """Eq. 3 as a per-pixel mean: ``|F - Dec(Conv(A) + Conv(F))|_1 / (T H W)``, averaged over the batch."""
    return (target - restored).abs().mean()


# ---- phase 2: training the encoder ---------------------------------------------------------------------
def _encoder_batch(sampler: PairSampler, n: int, rng: np.random.Generator):
    """Target windows, reference windows (another moment of the same clip), in-sync and shifted audio."""
    which = rng.choice(len(sampler.clips), n, p=sampler.weights)
    tgt, ref, mel_pos, mel_neg = [], [], [], []
    spec = sampler.spec
    for k in np.unique(which):
        m = int((which == k).sum())
        clip, c = sampler.clips[k], sampler.centres[k]
        i = c[rng.integers(0, c.size, m)]
        r = sampler.negative(i, c, rng)  # far enough that the reference shows a different mouth
        tgt.append(video_windows(clip.crops, i, spec.frames))
        ref.append(video_windows(clip.crops, r, spec.frames))
        mel_pos.append(audio_windows(clip.mel, i, clip.fps, spec.mel_rows))
        mel_neg.append(audio_windows(clip.mel, sampler.negative(i, c, rng), clip.fps, spec.mel_rows))
    return (to_face_tensor(np.concatenate(tgt)), to_face_tensor(np.concatenate(ref)),
            torch.from_numpy(np.concatenate(mel_pos)), torch.from_numpy(np.concatenate(mel_neg)))


def sync_ramp(step: int, steps: int) -> float:
    """Share of the sync loss at ``step``: 0 for the first 30 % of training, rising to 1 at 60 %.

    The discriminator only judges mouths it has seen; on the grey blur of an untrained decoder its
    log-gradient is huge and drowns Eq. 3 (Wav2Lip likewise switches its sync loss on late)."""
    return float(np.clip((step / max(steps, 1) - 0.3) / 0.3, 0.0, 1.0))


def train_encoder(sampler: PairSampler, disc: syncnet.SyncNet, spec: EncoderSpec, steps: int, batch: int, lr: float,
                  sync_weight: float, seed: int = 0, reporter: Reporter | None = None,
                  device: str = "cpu") -> AVEncoder:
    """Phase 2: train ``Dec(Conv(A) + Conv(F))`` with Eq. 3 + ``sync_weight`` x Eq. 2 under the frozen ``disc``."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed + 1)
    gen = torch.Generator().manual_seed(seed + 1)
    model = AVEncoder(sampler.spec.frames, spec)
    model.audio.set_normalisation(np.concatenate([c.mel for c in sampler.clips]))
    model.to(device).train()
    disc = disc.to(device).eval()
    for p in disc.parameters():
        p.requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = syncnet.one_cycle(opt, lr, steps)
    if reporter:
        reporter.start("av encoder", steps)
    avg = None
    for step in range(steps):
        tgt, ref, pos, neg = _encoder_batch(sampler, batch, rng)
        # Audio jitter only (loudness and noise, so new dialogue at another level reads the same); the
        # faces are this subject's own, and independent jitter of target and reference would only add noise.
        pos, neg = syncnet.jitter_audio(pos, gen), syncnet.jitter_audio(neg, gen)
        tgt, ref, pos, neg = (x.to(device) for x in (tgt, ref, pos, neg))
        out = model(mask_lower(tgt), ref, pos)
        l1 = recon_loss(tgt, out)
        loss = l1
        ramp = sync_ramp(step, steps)
        if ramp > 0 and sync_weight > 0:
            # Eq. 2 on the restored window: in sync with its own audio (y = 1), not with shifted audio (y = 0).
            f = disc.face(out)
            sims = torch.cat([syncnet.cosine_sim(f, disc.audio(pos)), syncnet.cosine_sim(f, disc.audio(neg))])
            ys = torch.cat([torch.ones(len(tgt)), torch.zeros(len(tgt))]).to(device)
            loss = l1 + ramp * sync_weight * sync_loss(sims, ys)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        v = l1.item()
        avg = v if avg is None else 0.95 * avg + 0.05 * v
        if reporter:
            reporter.advance(1, l1=avg)
    for p in disc.parameters():
        p.requires_grad_(True)
    disc.cpu()
    return model.cpu().eval()


@torch.no_grad()
def heldout_recon(model: AVEncoder, clip: Clip, lo: int, hi: int, frames: int, rows: int,
                  shift: int) -> dict[str, float]:
    """Eq. 3 on held-out windows with their own audio and with audio ``shift`` frames off: the gap shows
    how much of the mouth Conv(A) carries (each reference window is ``shift`` frames away as well)."""
    c = np.arange(lo + frames // 2, hi - frames // 2)
    c = c[clip.valid[c]]
    if c.size == 0:
        return {}
    other = np.where(c + shift < hi - frames // 2, c + shift, c - shift)
    tgt = to_face_tensor(video_windows(clip.crops, c, frames))
    ref = to_face_tensor(video_windows(clip.crops, other, frames))
    res = {}
    for name, centres in (("recon_l1_heldout", c), ("recon_l1_heldout_shifted_audio", other)):
        mel = torch.from_numpy(audio_windows(clip.mel, centres, clip.fps, rows))
        res[name] = round(float(recon_loss(tgt, model(mask_lower(tgt), ref, mel))), 5)
    return res


# ---- Conv(A): checkpoint and features ------------------------------------------------------------------
def save_encoder(encoder: AudioEncoder, spec: EncoderSpec, path: Path, fps: float) -> None:
    """Write Conv(A) with its architecture (``ave_encoder.pt``) through a temporary file."""
    torch_save_atomic(path, {"format": CHECKPOINT_FORMAT, "spec": asdict(spec), "fps": fps,
                             "state_dict": encoder.state_dict()})


def load_encoder(path: str | Path, default_spec: EncoderSpec = EncoderSpec()) -> tuple[AudioEncoder, EncoderSpec]:
    """Conv(A) from ``path`` (eval mode) and its spec.

    ``path`` is a file written by :func:`save_encoder`, or a bare state dict, which is then expected to fit
    ``default_spec``. A file that does not fit raises :class:`UserError` naming the missing and unexpected
    keys."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"audio-visual encoder checkpoint not found: {path}",
                        "check the [ave] checkpoint setting, or leave it empty to train the encoder")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several kinds for truncated or foreign files
        raise UserError(f"cannot read {path} as a PyTorch checkpoint ({type(e).__name__}: {e})",
                        "pass a .pt file holding the encoder's state dict")
    if not isinstance(ck, dict):
        raise UserError(f"{path} does not hold a state dict", "pass a .pt file holding the encoder's state dict")
    if ck.get("format") == CHECKPOINT_FORMAT:
        spec, state = EncoderSpec(**ck["spec"]), ck["state_dict"]
    else:
        spec, state = default_spec, ck.get("state_dict", ck)
    enc = spec.build()
    load_state(enc, state, f"the audio-visual encoder in {path}")
    return enc.eval(), spec


@torch.no_grad()
def features(encoder: AudioEncoder, mel: np.ndarray, fps: float, n_frames: int, batch: int = 512) -> np.ndarray:
    """Conv(A) of the audio window centred on each video frame: (n_frames, feature_dim) float32.

    ``mel`` (M, n_mels) log-mel at 100 rows/s; windows past the end of the sound repeat its last row."""
    centres = np.arange(n_frames)
    out = [encoder(torch.from_numpy(audio_windows(mel, centres[s:s + batch], fps, encoder.rows)))
           for s in range(0, n_frames, batch)]
    return torch.cat(out).numpy().astype(np.float32) if out else np.zeros((0, encoder.fc.out_features), np.float32)


# ---- the stage -----------------------------------------------------------------------------------------
def run(subject: Subject, cfg: Config, reporter: Reporter) -> dict[str, Any]:
    """Stage ``ave``: train (or load) the encoder and the discriminator; write ``audio_features/ave.npy``,
    ``ave_encoder.pt`` and ``syncnet.pt``. Returns the held-out figures for the manifest."""
    device = pick_device(cfg.device, "[ave] device")
    spec = cfg.sync_spec()
    clip = subject_clip(subject, cfg.crop_height, cfg.crop_width, reporter)
    n = clip.n_frames
    hold = holdout_start(n, cfg.holdout_fraction)
    clips, ranges = [clip], [(0, hold)]
    for p in cfg.extra_clips:
        path = Path(p).expanduser()
        if not path.is_file():
            raise UserError(f"extra training clip not found: {path}", "fix [ave] extra_clips (paths of videos)")
        extra = video_clip(path, clip.fps, cfg.crop_height, cfg.crop_width, reporter=reporter)
        clips.append(extra)
        ranges.append((0, extra.n_frames))
    sampler = PairSampler(clips, ranges, spec, cfg.min_shift, cfg.max_shift)

    disc = syncnet.train(sampler, cfg.sync_steps, cfg.sync_batch, cfg.sync_lr, cfg.seed, reporter, device)
    info: dict[str, Any] = {"clips": len(clips), "train_frames": int(sum(c.size for c in sampler.centres)),
                            "holdout_start": hold}
    try:
        sc = syncnet.shift_auc(disc, clip, hold, n, cfg.min_shift)
        info["sync_auc_heldout"] = round(sc["auc"], 4)
        info["sync_sim_heldout"] = [round(sc["sim_in_sync"], 4), round(sc["sim_shifted"], 4)]
        reporter.message(f"lip-sync discriminator: held-out ROC AUC {sc['auc']:.3f} (in sync vs >= "
                         f"{cfg.min_shift} frames off)")
    except UserError:  # a clip this short leaves too few held-out windows to measure; not an error
        reporter.message("held-out part too short to measure the lip-sync discriminator", level="warning")
    out_dir = subject.path("audio_features")
    out_dir.mkdir(parents=True, exist_ok=True)
    syncnet.save(disc, out_dir / "syncnet.pt", clip.fps, heldout_auc=info.get("sync_auc_heldout"))

    enc_spec = EncoderSpec(spec.n_mels, cfg.mel_rows, cfg.width, cfg.feature_dim)
    if cfg.checkpoint:
        encoder, enc_spec = load_encoder(cfg.checkpoint, enc_spec)
        info["pretrained"] = str(Path(cfg.checkpoint).expanduser().resolve())
    else:
        model = train_encoder(sampler, disc, enc_spec, cfg.ave_steps, cfg.ave_batch, cfg.ave_lr, cfg.sync_weight,
                              cfg.seed, reporter, device)
        encoder = model.audio
        if hold < n:
            info.update(heldout_recon(model, clip, hold, n, cfg.frames, cfg.mel_rows, max(cfg.min_shift, cfg.frames)))
    save_encoder(encoder, enc_spec, out_dir / "ave_encoder.pt", clip.fps)
    feats = features(encoder, clip.mel, clip.fps, n)
    save_npy_atomic(out_dir / "ave.npy", feats)
    info["shape"] = list(feats.shape)
    return info
