"""``headsync train``: fit a renderer to a prepared subject, resumably. One loop for every renderer.

The schedule has two stages (ER-NeRF Eq. 11 and 12): ``coarse_iters`` then ``fine_iters``. Per iteration
one training frame is drawn and the renderer's :meth:`~headsync.renderers.base.Renderer.sampling` for the
stage says what is rendered of it (:mod:`headsync.training.samplers`: ray sets, head + lips patches, the
whole image). The loss is pixel MSE + ``mask_weight`` x the silhouette term (opacity vs the head mask),
in the fine stage + ``perceptual_weight`` x the perceptual term on each patch (LPIPS, or 1 - SSIM without
its weights, :mod:`headsync.renderers.common.losses`), + the renderer's own :meth:`losses`. AdamW over the
renderer's parameter groups, decayed exponentially to ``lr_final_ratio`` of their rates over the whole
schedule (ER-NeRF's ``0.1 ** (step / iters)``); the renderer's callbacks run around each step (the NeRF
refreshes its occupancy grid there).

The run lives in ``SUBJECT/models/RUN/``: ``config.json`` (settings), ``checkpoint.pt``
(:mod:`headsync.training.checkpoints`, written every ``checkpoint_every`` iterations and at the end;
``resume`` continues from it), ``log.txt``, ``metrics.json``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.atomic import write_json_atomic
from ..core.config import as_dict, from_table, load_preset, section
from ..core.devices import pick_device, set_threads
from ..core.errors import UserError
from ..core.progress import Reporter
from ..renderers.base import Renderer, SubjectMeta
from ..renderers.common.cameras import Camera, camera_to_head
from ..renderers.common.conditioning import window_indices
from ..renderers.common.losses import mse, perceptual_loss, psnr_from_mse
from ..renderers.registry import preset_renderer, renderer_class
from ..subject.data import SubjectData, load_subject_data
from ..subject.folder import CORE_EXPRESSIONS, Subject
from .checkpoints import load_checkpoint, run_dir, save_checkpoint
from .samplers import draw


@dataclass(frozen=True)
class TrainConfig:
    """The ``[train]`` table: the schedule, what is sampled, the loss weights, bookkeeping. Defaults are
    the papers' (``paper`` preset); presets scale them down. The renderer's own settings (network shape,
    learning rates) are its ``[renderer.KIND]`` table."""

    resolution: int = 512  # side of the rendered crop during training (pixels)
    coarse_iters: int = 100_000
    fine_iters: int = 25_000
    rays: int = 65_536  # rays per iteration when the renderer samples rays (256^2)
    inside_fraction: float = 0.75  # share of those rays drawn inside the (grown) head mask
    lips_fraction: float = 0.0  # share of rays drawn around the lips (short schedules need the push)
    patch: int = 64  # patches: side of the random head patch (pixels at ``resolution``)
    lips_patch: int = 32  # patches: side of the lips patch
    perceptual_weight: float = 0.01  # lambda of Eq. 12/13 (fine stage)
    # Weight of the silhouette term: opacity vs the head mask (labels 1-4). Without it the field may learn
    # a faint dark layer over the bright plate that reproduces the frame but cannot be composited.
    mask_weight: float = 0.1
    lr_final_ratio: float = 0.1
    heldout_eval_frames: int = 8  # held-out crops rendered at the end for metrics.json (0: none)
    audio_feature: str = "ave"  # audio_features/KIND.npy; ave beat mel on lip sync (docs/benchmarks.md)
    checkpoint_every: int = 1000
    log_every: int = 50
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # CPU threads for torch (0 = the idle cores, see core.devices.auto_threads)

    @property
    def total_iters(self) -> int:
        return self.coarse_iters + self.fine_iters

    def stage(self, it: int) -> str:
        """The schedule stage of iteration ``it``: ``"coarse"`` or ``"fine"``."""
        return "coarse" if it < self.coarse_iters else "fine"


def subject_meta(data: SubjectData, cfg: TrainConfig) -> SubjectMeta:
    """The :class:`SubjectMeta` of a loaded subject for a run with ``cfg``."""
    return SubjectMeta(template=data.pose.template, audio_feature=cfg.audio_feature,
                       audio_dim=int(data.audio.shape[1]), coefficient_names=CORE_EXPRESSIONS,
                       n_frames=int(data.n_frames), train_frames=tuple(int(i) for i in data.train),
                       holdout_frames=tuple(int(i) for i in data.holdout), crop_size=int(data.pose.K.size),
                       resolution=int(data.size), intrinsics=data.K, fps=float(data.fps))


# ---- one iteration's batch ------------------------------------------------------------------------------
@dataclass
class FrameTensors:
    """Per-frame tensors on the device: camera (head-space) and conditions' inputs."""

    R_c2h: torch.Tensor  # (N, 3, 3)
    origin: torch.Tensor  # (N, 3)
    audio: torch.Tensor  # (N, D)
    expression: torch.Tensor  # (N, 7)
    images: torch.Tensor  # (N, S, S, 3) uint8
    backgrounds: torch.Tensor  # (N, S, S, 3) uint8
    head: torch.Tensor  # (N, S, S) bool

    @staticmethod
    def of(data: SubjectData, device: torch.device) -> "FrameTensors":
        Rc, o = camera_to_head(data.pose.R, data.pose.T)
        f = lambda a, dt=torch.float32: torch.as_tensor(a, dtype=dt, device=device)  # noqa: E731
        return FrameTensors(f(Rc), f(o), f(data.audio), f(data.expression), f(data.images, torch.uint8),
                            f(data.backgrounds, torch.uint8), f(data.head, torch.bool))


@dataclass
class StepContext:
    """What the renderer's callbacks may use at an iteration (see :class:`~headsync.renderers.base.TrainingCallback`)."""

    renderer: Renderer
    data: SubjectData
    frames: FrameTensors
    rng: np.random.Generator
    cfg: TrainConfig
    optimizer: torch.optim.Optimizer

    def conditions(self, frame: int, neutral: bool = False) -> dict[str, torch.Tensor]:
        """The renderer's conditions of subject frame ``frame`` (``neutral``: as for a frame it never saw)."""
        return frame_conditions(self.renderer, self.frames, frame, neutral)

    def random_training_frame(self) -> int:
        return int(self.data.train[self.rng.integers(self.data.train.size)])


def frame_conditions(renderer: Renderer, ft: FrameTensors, frame: int, neutral: bool = False
                     ) -> dict[str, torch.Tensor]:
    """Conditions of one frame of the subject: its audio window, expression and index."""
    dev = ft.audio.device
    idx = torch.as_tensor(window_indices(np.array([frame]), ft.audio.shape[0], renderer.audio_window), device=dev)
    fi = None if neutral else torch.tensor([frame], device=dev)
    return renderer.conditions(ft.audio[idx], ft.expression[frame:frame + 1], fi)


def frame_camera(data: SubjectData, ft: FrameTensors, frame: int) -> Camera:
    return Camera(data.K, ft.R_c2h[frame], ft.origin[frame])


# ---- the loop ------------------------------------------------------------------------------------------
def make_optimizer(renderer: Renderer, cfg: TrainConfig) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW over the renderer's parameter groups, and the exponential decay over the whole schedule."""
    opt = torch.optim.AdamW(renderer.param_groups(cfg), betas=(0.9, 0.99), eps=1e-15)
    total = max(cfg.total_iters, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: cfg.lr_final_ratio ** min(it / total, 1.0))
    return opt, sched


def heldout_psnr(renderer: Renderer, data: SubjectData, ft: FrameTensors, max_frames: int = 8) -> float | None:
    """Mean PSNR (dB) of whole rendered crops over up to ``max_frames`` held-out frames."""
    if data.holdout.size == 0:
        return None
    frames = data.holdout[np.linspace(0, data.holdout.size - 1, min(max_frames, data.holdout.size)).astype(int)]
    vals = []
    with torch.no_grad():
        for f in frames:
            cond = frame_conditions(renderer, ft, int(f))
            out = renderer.render(frame_camera(data, ft, int(f)), cond, ft.backgrounds[f].float() / 255.0)
            vals.append(psnr_from_mse(float(mse(out["rgb"], ft.images[f].float() / 255.0))))
    return float(np.mean(vals))


def train(subject: Subject, cfg: TrainConfig, kind: str, renderer_cfg: Any, out: Path, reporter: Reporter,
          resume: bool = False, preset_name: str = "") -> dict[str, Any]:
    """Train (or resume) a run of renderer ``kind`` (settings ``renderer_cfg``) in ``out``; returns its metrics."""
    cls = renderer_class(kind)
    threads = set_threads(cfg.threads)
    device = pick_device(cfg.device, "[train] device")
    ckpt_path = out / "checkpoint.pt"
    state = load_checkpoint(ckpt_path, device, kind=kind) if resume else None
    if state is not None:
        saved = from_table(TrainConfig, state["train"], "train")
        saved_r = from_table(cls.Config, state["renderer_config"], f"renderer.{kind}")
        if saved != cfg or saved_r != renderer_cfg:
            reporter.message("resuming with the settings the run was started with (the preset differs)", "warning")
        cfg, renderer_cfg = saved, saved_r
    data = load_subject_data(subject, cfg.resolution, cfg.audio_feature, reporter)
    meta = subject_meta(data, cfg)
    if state is not None and SubjectMeta.from_dict(state["meta"]).train_frames != meta.train_frames:
        raise UserError(f"the subject's frames changed since run {out.name!r} started (prepared again?)",
                        "train it again without --resume, or under another --run name")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    renderer = cls.build(renderer_cfg, meta, device)
    if state is not None:  # before the optimiser exists: loading may replace parameters (a resized renderer)
        renderer.load_renderer_state(state["model"])
    opt, sched = make_optimizer(renderer, cfg)
    start = 0
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start = int(state["iteration"])
        torch.set_rng_state(state["rng"]["torch"])
        rng.bit_generator.state = state["rng"]["numpy"]
    else:
        renderer.start_training(data.audio[data.train])
        out.mkdir(parents=True, exist_ok=True)
        (out / "log.txt").write_text("")
    write_json_atomic(out / "config.json", {"preset": preset_name, "subject": str(subject.root), "renderer": kind,
                                            "train": as_dict(cfg), "renderer_config": as_dict(renderer_cfg),
                                            "started_at_iteration": start})
    ft = FrameTensors.of(data, device)
    ctx = StepContext(renderer, data, ft, rng, cfg, opt)
    callbacks = renderer.callbacks()
    perc_name, perc = perceptual_loss()
    log = open(out / "log.txt", "a")
    log.write(f"# {'resumed at' if start else 'started'} iteration {start}; renderer {kind}; device {device}, "
              f"{threads} CPU threads; perceptual term: {perc_name}; {data.train.size} training / "
              f"{data.holdout.size} held-out frames\n")

    def checkpoint(it: int, metrics: dict[str, Any]) -> None:
        save_checkpoint(ckpt_path, {
            "iteration": it, "renderer": kind, "renderer_config": as_dict(renderer_cfg), "train": as_dict(cfg),
            "meta": meta.to_dict(), "model": renderer.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(), "rng": {"torch": torch.get_rng_state(), "numpy": rng.bit_generator.state},
            "metrics": metrics,
        })

    total = cfg.total_iters
    reporter.start("train", total)
    reporter.set(start)
    t0, it0 = time.monotonic(), start
    ema_loss = None
    last: dict[str, Any] = {}
    stats: dict[str, float] = {}
    for it in range(start, total):
        renderer.train()
        for cb in callbacks:
            cb.before_step(it, ctx)
        frame = ctx.random_training_frame()
        cond = frame_conditions(renderer, ft, frame)
        stage = cfg.stage(it)
        batch = draw(renderer.sampling(stage), data.head[frame], data.lips_box[frame], cfg, rng)
        bg_img, img, head = ft.backgrounds[frame], ft.images[frame], ft.head[frame]
        if batch.pixels is None:
            pix = None
            bg, target, mask = bg_img.float() / 255.0, img.float() / 255.0, head.float()
        else:
            pix = torch.as_tensor(batch.pixels, device=device)
            bg = bg_img[pix[:, 1], pix[:, 0]].float() / 255.0
            target = img[pix[:, 1], pix[:, 0]].float() / 255.0
            mask = head[pix[:, 1], pix[:, 0]].float()
        out_r = renderer.render(frame_camera(data, ft, frame), cond, bg, pix, train=True)
        pix_loss = mse(out_r["rgb"], target)
        loss = pix_loss + cfg.mask_weight * mse(out_r["opacity"], mask)
        if stage == "fine" and batch.patches:
            rgb_flat, target_flat = out_r["rgb"].reshape(-1, 3), target.reshape(-1, 3)
            start_px = 0
            for side in batch.patches:
                sl = slice(start_px, start_px + side * side)
                a = rgb_flat[sl].view(1, side, side, 3).permute(0, 3, 1, 2)
                b = target_flat[sl].view(1, side, side, 3).permute(0, 3, 1, 2)
                loss = loss + cfg.perceptual_weight * perc(a, b)
                start_px += side * side
        for term in renderer.losses(out_r, target, mask, batch).values():
            loss = loss + term
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for cb in callbacks:
            stats.update(cb.after_backward(it, ctx, out_r))
        opt.step()
        sched.step()
        for cb in callbacks:
            stats.update(cb.after_step(it, ctx))
        lv = pix_loss.item()
        ema_loss = lv if ema_loss is None else 0.9 * ema_loss + 0.1 * lv
        done = it + 1
        rate = (done - it0) / max(time.monotonic() - t0, 1e-6)
        last = {"iteration": done, "stage": stage, "loss": round(ema_loss, 6),
                "psnr": round(psnr_from_mse(ema_loss), 3), "it_per_s": round(rate, 3), **stats,
                **{k: round(float(v), 2) for k, v in out_r.get("stats", {}).items()}}
        if done % cfg.log_every == 0 or done == total:
            log.write(json.dumps(last) + "\n")
            log.flush()
        if done % cfg.checkpoint_every == 0 and done < total:
            checkpoint(done, last)
        reporter.set(done, loss=last["loss"], psnr=last["psnr"], phase=last["stage"])
    hold = heldout_psnr(renderer, data, ft, cfg.heldout_eval_frames) if cfg.heldout_eval_frames else None
    metrics = {**last, "iterations": total, "heldout_psnr": None if hold is None else round(hold, 3),
               "perceptual": perc_name, "device": str(device), "resumed_from": start or None, "renderer": kind,
               "train_frames": int(data.train.size), "heldout_frames": int(data.holdout.size)}
    checkpoint(total, metrics)
    write_json_atomic(out / "metrics.json", metrics)
    log.write(json.dumps({"final": metrics}) + "\n")
    log.close()
    return metrics


def train_task(params: dict[str, Any], reporter: Reporter) -> dict[str, Any]:
    """Entry of the ``train`` job: ``subject``, ``preset``, ``renderer`` (default: the preset's
    ``[renderer] default``), ``run``, ``resume``."""
    preset = load_preset(params.get("preset") or "standard")
    kind = params.get("renderer") or preset_renderer(preset.tables)
    cls = renderer_class(kind)
    subject = Subject(Path(params["subject"]).expanduser().resolve())
    cfg = section(preset, "train", TrainConfig)
    renderer_cfg = section(preset, f"renderer.{kind}", cls.Config)
    out = run_dir(subject, params.get("run") or "default")
    resume = bool(params.get("resume"))
    if resume and not (out / "checkpoint.pt").exists():
        raise UserError(f"run {out.name!r} has no checkpoint to resume from ({out / 'checkpoint.pt'})",
                        "start it without --resume")
    metrics = train(subject, cfg, kind, renderer_cfg, out, reporter, resume=resume, preset_name=preset.name)
    return {"run": str(out), "checkpoint": str(out / "checkpoint.pt"), "metrics": metrics,
            "config": str(out / "config.json"), "log": str(out / "log.txt")}
