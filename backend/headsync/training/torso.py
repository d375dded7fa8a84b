"""The ``torso`` job: train a subject's torso parts after its head, as its preset's ``[torso]`` mode asks.

* Torso-Inpainting Restorer (SyncTalk++ Eq. 28-29): each step takes training frames, rotates them by a
  random angle, expands the face mask by a random 10-30 px (at 512 px, scaled) at the cheeks and chin,
  removes the expansion and asks the U-Net to restore it. Loss ``L1 + w * LPIPS`` of the restored frame
  (the known pixels passed through, so the gradient comes from the hole); LPIPS when its weights are
  installed, else the ``1 - SSIM`` stand-in of :func:`renderers.common.losses.perceptual_loss`.
* Torso field (ER-NeRF Sec. 3.4): random pixels of random training frames; the field's torso over the
  plate is compared with the frame outside the head (what is under the head is unseen), plus a binary
  cross-entropy of its alpha against the neck/torso labels there and zero over the head above the mouth
  (no torso behind the forehead or hair: what a moved head uncovers there is plate, not a torso blob).

Weights go to ``SUBJECT/torso/restorer.pt`` and ``SUBJECT/torso/field.pt``, the record (mode, preset,
timings, losses) to ``SUBJECT/torso/torso.json``. Held-out frames (the subject's split,
:mod:`headsync.subject.split`) are never trained on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..core.atomic import torch_save_atomic, write_json_atomic
from ..core.config import as_dict, load_preset, section
from ..core.devices import pick_device, set_threads
from ..core.errors import UserError
from ..core.progress import Reporter
from ..face_sync.syncnet import one_cycle
from ..post.torso import bands
from ..post.torso import field as torso_field
from ..post.torso import restorer as torso_restorer
from ..post.torso.config import TorsoConfig
from ..post.torso.path import FIELD_FILE, RECORD_FILE, RESTORER_FILE
from ..renderers.common.cameras import Intrinsics
from ..renderers.common.losses import perceptual_loss
from ..subject.data import background_layer, load_pose, read_labels, read_rgb
from ..subject.folder import Subject
from ..subject.labels import HEAD_LABELS, LIPS
from ..subject.split import split_frames, subject_split



#: Weight of the alpha's cross-entropy against the neck/torso labels, next to the colour's squared error.
ALPHA_WEIGHT = 0.1


@dataclass
class Frames:
    """Training frames at one side: ``images`` (N, s, s, 3) float32 [0, 1], ``labels`` (N, s, s) uint8."""

    images: np.ndarray
    labels: np.ndarray


def read_frames(subject: Subject, idx: np.ndarray, side: int) -> Frames:
    """The crops and label maps of frames ``idx`` at ``side`` px."""
    imgs = np.stack([read_rgb(subject.frame_path(int(i)), side) for i in idx]).astype(np.float32) / 255.0
    labs = np.stack([read_labels(subject.mask_path(int(i)), side) for i in idx])
    return Frames(imgs, labs)


def restorer_sample(image: np.ndarray, labels: np.ndarray, cfg: TorsoConfig, rng: np.random.Generator
                    ) -> tuple[np.ndarray, ...]:
    """One training example of Eq. 28: (target (s, s, 3), face mask M (s, s), hole delta (s, s)) after a
    random rotation and a random expansion of ``[expand_min, expand_max]`` px at 512."""
    side = labels.shape[0]
    img, lab = bands.rotate(image, labels, float(rng.uniform(-cfg.rotation, cfg.rotation)))
    px = bands.scaled_px(float(rng.uniform(cfg.expand_min, cfg.expand_max)), side)
    m = bands.face_mask(lab)
    hole = bands.expand_lower(m, px, lab) & ~m
    return img, m.astype(np.float32), hole.astype(np.float32)


def restorer_batch(frames: Frames, cfg: TorsoConfig, rng: np.random.Generator, device: torch.device
                   ) -> tuple[torch.Tensor, ...]:
    """A batch (target, face, face mask, background, hole) as (B, C, s, s) tensors."""
    pick = rng.integers(0, frames.images.shape[0], cfg.restorer_batch)
    ex = [restorer_sample(frames.images[i], frames.labels[i], cfg, rng) for i in pick]
    t = lambda a, chan: torch.as_tensor(np.stack(a), device=device).permute(0, 3, 1, 2) if chan else \
        torch.as_tensor(np.stack(a), device=device)[:, None]  # noqa: E731
    target, m, hole = t([e[0] for e in ex], True), t([e[1] for e in ex], False), t([e[2] for e in ex], False)
    return target, target * m, m, target * (1 - hole) * (1 - m), hole


def optimise(loss: Callable[[], torch.Tensor], opt: torch.optim.Optimizer, sched, steps: int, name: str,
             reporter: Reporter) -> dict[str, Any]:
    """``steps`` optimiser steps on ``loss()``; returns the record: steps, wall seconds, final loss (mean of
    the last 20 steps)."""
    t0, losses = time.monotonic(), []
    reporter.start(name, steps)
    for _ in range(steps):
        value = loss()
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        sched.step()
        losses.append(float(value.detach()))
        reporter.advance(1)
    return {"steps": steps, "seconds": round(time.monotonic() - t0, 2),
            "final_loss": float(np.mean(losses[-20:])) if losses else None}


def train_restorer(frames: Frames, cfg: TorsoConfig, device: torch.device, reporter: Reporter,
                   seed: int = 0) -> tuple[torso_restorer.TorsoRestorer, dict[str, Any]]:
    """Train the U-Net on ``frames`` (at ``cfg.restorer_resolution``); returns it and its record."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = torso_restorer.TorsoRestorer(cfg.restorer_width, cfg.restorer_depth).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.restorer_lr)
    sched = one_cycle(opt, cfg.restorer_lr, cfg.restorer_steps)
    name, perceptual = perceptual_loss()

    def loss() -> torch.Tensor:
        target, face, m, bg, hole = restorer_batch(frames, cfg, rng, device)
        out = torso_restorer.compose_known(net(face, m, bg, hole), face, m, bg, hole)
        return F.l1_loss(out, target) + cfg.perceptual_weight * perceptual(out, target)

    record = optimise(loss, opt, sched, cfg.restorer_steps, "torso restorer", reporter)
    net.side = cfg.restorer_resolution
    return net.eval(), {"perceptual": name, **record}


def upper_head(labels: np.ndarray) -> np.ndarray:
    """Head pixels (labels 1-4) above the mouth (the lips' mean row; the head's middle row without lips),
    where no torso can be behind the head: (s, s) bool."""
    head = np.isin(labels, HEAD_LABELS)
    lips = np.nonzero((labels == LIPS).any(1))[0]
    rows = np.nonzero(head.any(1))[0]
    if not rows.size:
        return head
    cut = int(lips.mean()) if lips.size else int((rows[0] + rows[-1]) / 2)
    head[cut:] = False
    return head


def field_targets(subject: Subject, idx: np.ndarray, side: int) -> dict[str, np.ndarray]:
    """Per-frame field targets at ``side``: ``layer`` (N, s, s, 3) torso + plate, ``seen`` (N, s, s) (not
    head: where the colour is known), ``torso`` (N, s, s) (neck/torso labels, the alpha target),
    ``alpha_known`` (N, s, s) (seen, or the head above the mouth, where there is no torso), ``plate``
    (s, s, 3), all float32 [0, 1]."""
    plate = read_rgb(subject.path("background.jpg"), side)
    fr = read_frames(subject, idx, side)
    layer = np.stack([background_layer((im * 255).astype(np.uint8), lab, plate) for im, lab in
                      zip(fr.images, fr.labels)]).astype(np.float32) / 255.0
    seen = ~np.isin(fr.labels, HEAD_LABELS)
    above = np.stack([upper_head(lab) for lab in fr.labels])
    return {"layer": layer, "seen": seen.astype(np.float32),
            "torso": np.isin(fr.labels, bands.TORSO_LABELS).astype(np.float32),
            "alpha_known": (seen | above).astype(np.float32), "plate": plate.astype(np.float32) / 255.0}


def train_field(targets: dict[str, np.ndarray], R: np.ndarray, T: np.ndarray, K: Intrinsics, keys: np.ndarray,
                cfg: TorsoConfig, device: torch.device, reporter: Reporter, seed: int = 0
                ) -> tuple[torso_field.TorsoField, dict[str, Any]]:
    """Train the torso field on per-frame ``targets`` (:func:`field_targets`, side s) with head poses
    ``R`` (N, 3, 3), ``T`` (N, 3), camera ``K`` (any side) and initial key points ``keys`` (3, 3)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    n, side = targets["layer"].shape[0], targets["layer"].shape[1]
    K = K.scaled(side)
    tg = {k: torch.as_tensor(v, device=device) for k, v in targets.items()}
    R = torch.as_tensor(R, dtype=torch.float32, device=device)
    T = torch.as_tensor(T, dtype=torch.float32, device=device)
    net = torso_field.TorsoField(keys, cfg.field_hidden, cfg.field_levels, cfg.field_base_resolution,
                                 cfg.field_features).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.field_lr)
    sched = one_cycle(opt, cfg.field_lr, cfg.field_steps)
    grid = torso_field.pixel_positions(side, device)
    frames_per_step = min(4, n)
    per = max(1, cfg.field_rays // frames_per_step)
    layer, seen, torso = tg["layer"].reshape(n, -1, 3), tg["seen"].reshape(n, -1), tg["torso"].reshape(n, -1)
    known = tg["alpha_known"].reshape(n, -1) if "alpha_known" in tg else seen
    plate_px = tg["plate"].reshape(-1, 3)

    def loss() -> torch.Tensor:
        f = torch.as_tensor(rng.integers(0, n, frames_per_step), device=device)
        p = torch.as_tensor(rng.integers(0, side * side, (frames_per_step, per)), device=device)
        out = net(grid[p], net.encode(R[f], T[f], K))
        a = out["alpha"][..., None]
        rgb = a * out["rgb"] + (1 - a) * plate_px[p]
        w = seen[f[:, None], p]
        colour = (((rgb - layer[f[:, None], p]) ** 2).sum(-1) * w).sum() / w.sum().clamp_min(1)
        bce = F.binary_cross_entropy(out["alpha"].clamp(1e-4, 1 - 1e-4), torso[f[:, None], p], reduction="none")
        wa = known[f[:, None], p]
        return colour + ALPHA_WEIGHT * (bce * wa).sum() / wa.sum().clamp_min(1)

    record = optimise(loss, opt, sched, cfg.field_steps, "torso field", reporter)
    net.side = side
    return net.eval(), record


def train_subject_field(subject: Subject, idx: np.ndarray, cfg: TorsoConfig, device: torch.device,
                        reporter: Reporter) -> tuple[torso_field.TorsoField, dict[str, Any]]:
    """:func:`train_field` on frames ``idx`` of a prepared subject (its pose, plate, crops, labels)."""
    pose = load_pose(subject)
    keys = torso_field.initial_keypoints(pose.template, pose.R[idx[0]], pose.T[idx[0]])
    targets = field_targets(subject, idx, cfg.field_resolution)
    return train_field(targets, pose.R[idx], pose.T[idx], pose.K, keys, cfg, device, reporter)


def train_torso(subject: Subject, cfg: TorsoConfig, preset_name: str, reporter: Reporter) -> dict[str, Any]:
    """Train the parts ``cfg.mode`` uses; write them and ``torso/torso.json``. Returns the record."""
    if not subject.path("subject.json").exists():
        raise UserError(f"subject {subject.root} is not prepared (no subject.json)",
                        "run `headsync prepare VIDEO --subject DIR` first")
    set_threads(cfg.threads)
    device = pick_device(cfg.device)
    train_idx, hold_idx = split_frames(subject.frame_count(), subject_split(subject).holdout_fraction)
    record: dict[str, Any] = {"mode": cfg.mode, "preset": preset_name, "config": as_dict(cfg),
                              "holdout": [int(hold_idx[0]), int(hold_idx[-1])] if hold_idx.size else None}
    if cfg.uses_restorer:
        frames = read_frames(subject, train_idx, cfg.restorer_resolution)
        net, info = train_restorer(frames, cfg, device, reporter)
        torch_save_atomic(subject.path(RESTORER_FILE), torso_restorer.record(net, cfg.restorer_resolution, info))
        record["restorer"] = info
    if cfg.uses_field:
        net, info = train_subject_field(subject, train_idx, cfg, device, reporter)
        torch_save_atomic(subject.path(FIELD_FILE), torso_field.record(net, cfg.field_resolution, info))
        record["field"] = info
    write_json_atomic(subject.path(RECORD_FILE), record)
    return record


def torso_task(params: dict[str, Any], reporter: Reporter) -> dict[str, Any]:
    """Entry of the ``torso`` job: ``subject``, ``preset``, optional ``mode`` overriding the preset's."""
    subject = Subject(Path(params["subject"]).expanduser().resolve())
    preset = load_preset(params.get("preset") or "standard")
    cfg = section(preset, "torso", TorsoConfig, mode=params.get("mode"))
    record = train_torso(subject, cfg, preset.name, reporter)
    return {"subject": str(subject.root), "mode": record["mode"], "record": str(subject.path(RECORD_FILE)),
            **{k: record[k] for k in ("restorer", "field") if k in record}}
