"""``headsync train``: fit the talking head to a prepared subject, in two stages, resumably.

Coarse stage (ER-NeRF Eq. 11): per iteration one training frame, ``rays`` pixels sampled mostly inside
the head mask, pixel MSE. Fine stage (Eq. 12): a random patch on the head plus a patch on the lips, MSE +
``perceptual_weight`` x the perceptual term of :mod:`headsync.losses` (LPIPS, or 1 - SSIM without its
weights). AdamW with learning rate 1e-2 on the hash tables and 1e-3 elsewhere, decayed exponentially to
``lr_final_ratio`` of that over the whole schedule (ER-NeRF's ``0.1 ** (step / iters)``). The occupancy
grid is refreshed every ``update_every`` iterations from a random frame's conditions.

The run lives in ``SUBJECT/models/RUN/``: ``config.json`` (settings), ``checkpoint.pt`` (written atomically
every ``checkpoint_every`` iterations and at the end; ``resume`` continues from it), ``log.txt``,
``metrics.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..renderers.common.cameras import camera_to_head, rays
from ..renderers.common.conditioning import ConditioningConfig, window_indices
from ..core.config import as_dict, load_preset, section
from ..subject.data import SubjectData, load_subject_data, lips_patch, random_patch, sample_rays
from .expression_sampling import box_patch, eye_boxes, frame_weights, pixels_around
from ..core.errors import UserError
from ..renderers.nerf.field import FieldConfig
from ..renderers.common.hashgrid import HashGridConfig
from ..renderers.common.losses import mse, perceptual_loss, psnr_from_mse
from ..renderers.nerf.model import ModelConfig, TalkingHead
from ..core.progress import Reporter
from ..renderers.nerf.raymarch import MarchConfig
from ..subject.folder import CORE_EXPRESSIONS, Subject, write_json_atomic
from ..evaluation.expression_response import box_mask, coefficient_response, weak_coefficients

CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class TrainConfig:
    """The ``[train]`` table. Defaults are the papers' (``paper`` preset); presets scale them down."""

    # schedule
    resolution: int = 512  # side of the rendered crop during training (pixels)
    coarse_iters: int = 100_000
    fine_iters: int = 25_000
    rays: int = 65_536  # rays per coarse iteration (256^2)
    inside_fraction: float = 0.75  # share of coarse rays drawn inside the (grown) head mask
    lips_fraction: float = 0.0  # share of coarse rays drawn around the lips (short schedules need the push)
    patch: int = 64  # fine stage: side of the random head patch (pixels at ``resolution``)
    lips_patch: int = 32  # fine stage: side of the lips patch
    # Expression-focused sampling (training/expression_sampling.py): share of coarse rays around the eyes and
    # brows, side of the fine stage's eye patch (0: none), share of frames drawn from the coefficients' tails.
    eyes_fraction: float = 0.15
    eyes_patch: int = 32
    tail_share: float = 0.3
    perceptual_weight: float = 0.01  # lambda of Eq. 12/13
    # Weight of the silhouette term: opacity vs the head mask (labels 1-4). Without it the field may learn
    # a faint dark layer over the bright plate that reproduces the frame but cannot be composited.
    mask_weight: float = 0.1
    lr_hash: float = 1e-2
    lr_net: float = 1e-3
    lr_final_ratio: float = 0.1
    weight_decay: float = 1e-4  # AdamW's, on the MLPs only (hash tables are sparse lookups)
    holdout_fraction: float = 0.1
    heldout_eval_frames: int = 8  # held-out crops rendered at the end for metrics.json (0: none)
    response_frames: int = 2  # frames of the after-training check of each coefficient's effect (0: none)
    audio_feature: str = "ave"  # audio_features/KIND.npy; ave beat mel on lip sync (docs/benchmarks.md)
    checkpoint_every: int = 1000
    log_every: int = 50
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # CPU threads for torch (0 = the idle cores, see auto_threads)
    # model
    hash_levels: int = 14
    hash_features: int = 1
    hash_base_resolution: int = 64
    hash_finest_resolution: int = 512
    hash_log2_table_size: int = 14
    hidden: int = 64
    geo_feat_dim: int = 64
    appearance_dim: int = 4
    audio_dim: int = 32
    smooth_window: int = 8
    face_split: bool = True
    split_softness: float = 0.03
    samples: int = 32
    probes: int = 128
    march_depth: float = 0.3
    grid_resolution: int = 64
    update_every: int = 16
    density_threshold: float = 0.01
    bound_margin: tuple = (0.45, 0.45, 0.6)

    @property
    def total_iters(self) -> int:
        return self.coarse_iters + self.fine_iters


def model_config(cfg: TrainConfig) -> ModelConfig:
    """The network's shape from the flat ``[train]`` table."""
    return ModelConfig(
        hash=HashGridConfig(cfg.hash_levels, cfg.hash_features, cfg.hash_base_resolution,
                            cfg.hash_finest_resolution, cfg.hash_log2_table_size),
        cond=ConditioningConfig(audio_dim=cfg.audio_dim, smooth_window=cfg.smooth_window,
                                split_softness=cfg.split_softness, use_face_split=cfg.face_split),
        field=FieldConfig(hidden=cfg.hidden, geo_feat_dim=cfg.geo_feat_dim, color_hidden=cfg.hidden,
                          appearance_dim=cfg.appearance_dim),
        march=MarchConfig(samples=cfg.samples, probes=cfg.probes, depth=cfg.march_depth,
                          grid_resolution=cfg.grid_resolution,
                          density_threshold=cfg.density_threshold, update_every=cfg.update_every),
        bound_margin=tuple(float(v) for v in cfg.bound_margin),
    )


def config_from_dict(d: dict[str, Any]) -> TrainConfig:
    """Rebuild a :class:`TrainConfig` saved with :func:`headsync.config.as_dict`."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in fields})


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("CUDA was requested but no CUDA device is available",
                        "use device = \"cpu\" (or auto) in the preset, or install the CUDA build of torch")
    return torch.device(name)


def auto_threads() -> int:
    """CPU threads worth using now: the cores not already busy (1-minute load average), at least one.

    Small tensor ops synchronise their threads at every op; when another process holds a core, a second
    thread mostly waits for it (measured here: 0.58 s/iteration with one thread, 3.5 s with two, on a
    loaded two-core machine).
    """
    cores = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except OSError:  # not available on this platform
        busy = 0.0
    return max(1, min(cores, int(cores - busy + 0.5)))


def set_threads(n: int) -> int:
    """Use ``n`` CPU threads (0: :func:`auto_threads`); returns the number set."""
    n = n or auto_threads()
    torch.set_num_threads(n)
    return n


# ---- checkpoints ---------------------------------------------------------------------------------------
def run_dir(subject: Subject, run: str) -> Path:
    if not run or "/" in run or "\\" in run or run.startswith("."):
        raise UserError(f"bad run name {run!r}", "use a plain name such as 'default' or 'preview'")
    return subject.path(f"models/{run}")


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` through a temporary file and a rename, so a kill never leaves half a checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Read a checkpoint; a missing or damaged file is a :class:`UserError` with what to do."""
    if not path.exists():
        raise UserError(f"no checkpoint at {path}", "train the run first: `headsync train --subject DIR`")
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as e:  # torch raises several kinds for truncated/garbage files
        raise UserError(f"checkpoint {path} is corrupt or unreadable ({type(e).__name__})",
                        "delete it and train again (without --resume)")
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION or "model" not in state:
        raise UserError(f"checkpoint {path} is not a HeadSync renderer checkpoint (version {CHECKPOINT_VERSION})",
                        "train the run again")
    return state


def build_model(cfg: TrainConfig, meta: dict[str, Any], device: torch.device) -> TalkingHead:
    """A fresh model for the subject described by ``meta`` (template, audio width, code count)."""
    return TalkingHead(model_config(cfg), np.asarray(meta["template"], np.float32), int(meta["audio_in"]),
                       int(meta["n_codes"]), device=device)


def model_from_checkpoint(path: Path, device: torch.device | str = "cpu") -> tuple[TalkingHead, TrainConfig, dict]:
    """Load a trained model for rendering: ``(model in eval mode, its TrainConfig, meta)``."""
    state = load_checkpoint(path, device)
    cfg = config_from_dict(state["config"])
    model = build_model(cfg, state["meta"], torch.device(device))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise UserError(f"checkpoint {path} does not match the model ({str(e)[:200]})", "train the run again")
    return model.eval(), cfg, state["meta"]


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


def frame_conditions(model: TalkingHead, ft: FrameTensors, frame: int, code: int | None, window: int
                     ) -> dict[str, torch.Tensor]:
    """Conditions of one frame of the subject (``code`` None: the mean appearance code)."""
    idx = torch.as_tensor(window_indices(np.array([frame]), ft.audio.shape[0], window), device=ft.audio.device)
    ci = None if code is None else torch.tensor([code], device=ft.audio.device)
    return model.frame_conditions(ft.audio[idx], ft.expression[frame:frame + 1], ci)


def render_pixels(model: TalkingHead, data: SubjectData, ft: FrameTensors, frame: int, pix: np.ndarray,
                  cond: dict[str, torch.Tensor], perturb: bool
                  ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Render pixels (M, 2) of ``frame``; returns the render, the target colours (M, 3) in [0, 1] and the
    head mask (M,) as 0/1."""
    p = torch.as_tensor(pix, device=ft.audio.device)
    o, d = rays(data.K, ft.R_c2h[frame], ft.origin[frame], p)
    bg = ft.backgrounds[frame, p[:, 1], p[:, 0]].float() / 255.0
    target = ft.images[frame, p[:, 1], p[:, 0]].float() / 255.0
    mask = ft.head[frame, p[:, 1], p[:, 0]].float()
    return model.render_rays(o, d, cond, bg, perturb=perturb), target, mask


# ---- the loop ------------------------------------------------------------------------------------------
def make_optimizer(model: TalkingHead, cfg: TrainConfig) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW with the papers' two learning rates, and the exponential decay over the whole schedule."""
    opt = torch.optim.AdamW([
        {"params": model.hash_parameters(), "lr": cfg.lr_hash, "weight_decay": 0.0},
        {"params": model.other_parameters(), "lr": cfg.lr_net, "weight_decay": cfg.weight_decay},
    ], betas=(0.9, 0.99), eps=1e-15)
    total = max(cfg.total_iters, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: cfg.lr_final_ratio ** min(it / total, 1.0))
    return opt, sched


def heldout_psnr(model: TalkingHead, data: SubjectData, ft: FrameTensors, cfg: TrainConfig, max_frames: int = 8
                 ) -> float | None:
    """Mean PSNR (dB) of whole rendered crops over up to ``max_frames`` held-out frames (mean code)."""
    if data.holdout.size == 0:
        return None
    frames = data.holdout[np.linspace(0, data.holdout.size - 1, min(max_frames, data.holdout.size)).astype(int)]
    vals = []
    with torch.no_grad():
        for f in frames:
            cond = frame_conditions(model, ft, int(f), None, cfg.smooth_window)
            out = model.render_image(data.K, ft.R_c2h[f], ft.origin[f], cond, ft.backgrounds[f].float() / 255.0)
            vals.append(psnr_from_mse(float(mse(out["rgb"], ft.images[f].float() / 255.0))))
    return float(np.mean(vals))


def expression_check(model: TalkingHead, data: SubjectData, ft: FrameTensors, eyes: np.ndarray,
                     cfg: TrainConfig) -> dict[str, dict[str, float]]:
    """How strongly each coefficient acts (evaluation/expression_response.py) on ``response_frames``
    training frames spread over the clip, rendered with their own appearance code."""
    slots = np.linspace(0, data.train.size - 1, cfg.response_frames).astype(int)
    code_of = {int(data.train[s]): int(s) for s in slots}

    def render(frame: int, expr: np.ndarray) -> np.ndarray:
        idx = torch.as_tensor(window_indices(np.array([frame]), ft.audio.shape[0], cfg.smooth_window),
                              device=ft.audio.device)
        e = torch.as_tensor(expr[None], dtype=torch.float32, device=ft.audio.device)
        with torch.no_grad():
            cond = model.frame_conditions(ft.audio[idx], e, torch.tensor([code_of[frame]], device=e.device))
            out = model.render_image(data.K, ft.R_c2h[frame], ft.origin[frame], cond,
                                     ft.backgrounds[frame].float() / 255.0)
        return out["rgb"].cpu().numpy()

    model.eval()
    return coefficient_response(render, list(code_of), data.expression, lambda f: box_mask(eyes[f], data.size),
                                lambda f: data.head[f], CORE_EXPRESSIONS)


def train(subject: Subject, cfg: TrainConfig, out: Path, reporter: Reporter, resume: bool = False,
          preset_name: str = "") -> dict[str, Any]:
    """Train (or resume) a run in ``out``; returns its metrics."""
    threads = set_threads(cfg.threads)
    device = pick_device(cfg.device)
    ckpt_path = out / "checkpoint.pt"
    state = load_checkpoint(ckpt_path, device) if resume else None
    if state is not None:
        saved = config_from_dict(state["config"])
        if saved != cfg:
            reporter.message("resuming with the settings the run was started with (the preset differs)", "warning")
        cfg = saved
    data = load_subject_data(subject, cfg.resolution, cfg.audio_feature, cfg.holdout_fraction, reporter)
    meta = {"template": data.pose.template.tolist(), "audio_in": int(data.audio.shape[1]),
            "n_codes": int(data.train.size), "audio_feature": cfg.audio_feature, "resolution": cfg.resolution,
            "frames": int(data.n_frames), "holdout": [int(data.holdout[0]), int(data.n_frames)]
            if data.holdout.size else None}
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = build_model(cfg, meta, device)
    opt, sched = make_optimizer(model, cfg)
    start = 0
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start = int(state["iteration"])
        torch.set_rng_state(state["rng"]["torch"])
        rng.bit_generator.state = state["rng"]["numpy"]
    else:
        model.audio_encoder.set_statistics(data.audio[data.train])
        out.mkdir(parents=True, exist_ok=True)
        (out / "log.txt").write_text("")
    write_json_atomic(out / "config.json", {"preset": preset_name, "subject": str(subject.root),
                                            "train": as_dict(cfg), "started_at_iteration": start})
    ft = FrameTensors.of(data, device)
    eyes = eye_boxes(np.load(subject.path("landmarks.npy")), data.pose.K.size, data.size)
    draw = frame_weights(data.expression, data.train, cfg.tail_share)
    perc_name, perc = perceptual_loss()
    log = open(out / "log.txt", "a")
    log.write(f"# {'resumed at' if start else 'started'} iteration {start}; device {device}, {threads} CPU threads; "
              f"perceptual term: {perc_name}; {data.train.size} training / {data.holdout.size} held-out frames\n")

    def checkpoint(it: int, metrics: dict[str, Any]) -> None:
        save_checkpoint(ckpt_path, {
            "version": CHECKPOINT_VERSION, "iteration": it, "config": as_dict(cfg), "meta": meta,
            "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "numpy": rng.bit_generator.state}, "metrics": metrics,
        })

    total = cfg.total_iters
    reporter.start("train", total)
    reporter.set(start)
    t0, it0 = time.monotonic(), start
    ema_loss = None
    last: dict[str, Any] = {}
    occupied = 1.0
    for it in range(start, total):
        model.train()
        slot = int(rng.choice(data.train.size, p=draw))
        frame = int(data.train[slot])
        cond = frame_conditions(model, ft, frame, slot, cfg.smooth_window)
        fine = it >= cfg.coarse_iters
        if not fine:
            around_eyes = pixels_around(eyes[frame], int(round(cfg.rays * cfg.eyes_fraction)), data.size, rng)
            pix = np.concatenate([around_eyes, sample_rays(data.head[frame], cfg.rays - around_eyes.shape[0],
                                                           cfg.inside_fraction, rng, data.lips_box[frame],
                                                           cfg.lips_fraction)])
            out_r, target, mask = render_pixels(model, data, ft, frame, pix, cond, perturb=True)
            pix_loss = mse(out_r["rgb"], target)
            loss = pix_loss + cfg.mask_weight * mse(out_r["opacity"], mask)
        else:
            patches = [random_patch(data.head[frame], min(cfg.patch, data.size), rng)]
            lp = lips_patch(data.lips_box[frame], min(cfg.lips_patch, data.size), data.size, rng)
            ep = box_patch(eyes[frame], min(cfg.eyes_patch, data.size), data.size, rng) if cfg.eyes_patch else None
            patches += [p for p in (lp, ep) if p is not None]
            pix = np.concatenate(patches)
            out_r, target, mask = render_pixels(model, data, ft, frame, pix, cond, perturb=True)
            pix_loss = mse(out_r["rgb"], target)
            loss = pix_loss + cfg.mask_weight * mse(out_r["opacity"], mask)
            start_px = 0
            for p in patches:
                side = int(round(np.sqrt(p.shape[0])))
                sl = slice(start_px, start_px + p.shape[0])
                a = out_r["rgb"][sl].view(1, side, side, 3).permute(0, 3, 1, 2)
                b = target[sl].view(1, side, side, 3).permute(0, 3, 1, 2)
                loss = loss + cfg.perceptual_weight * perc(a, b)
                start_px += p.shape[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (it + 1) % cfg.update_every == 0:
            g = int(data.train[rng.integers(data.train.size)])
            model.eval()
            occupied = model.update_grid(frame_conditions(model, ft, g, None, cfg.smooth_window))
        lv = pix_loss.item()
        ema_loss = lv if ema_loss is None else 0.9 * ema_loss + 0.1 * lv
        done = it + 1
        rate = (done - it0) / max(time.monotonic() - t0, 1e-6)
        last = {"iteration": done, "stage": "fine" if fine else "coarse", "loss": round(ema_loss, 6),
                "psnr": round(psnr_from_mse(ema_loss), 3), "it_per_s": round(rate, 3),
                "occupied": round(occupied, 4), "samples_per_ray": round(out_r["samples"] / max(pix.shape[0], 1), 2)}
        if done % cfg.log_every == 0 or done == total:
            log.write(json.dumps(last) + "\n")
            log.flush()
        if done % cfg.checkpoint_every == 0 and done < total:
            checkpoint(done, last)
        reporter.set(done, loss=last["loss"], psnr=last["psnr"], phase=last["stage"])
    hold = heldout_psnr(model, data, ft, cfg, cfg.heldout_eval_frames) if cfg.heldout_eval_frames else None
    response = expression_check(model, data, ft, eyes, cfg) if cfg.response_frames else None
    metrics = {**last, "iterations": total, "heldout_psnr": None if hold is None else round(hold, 3),
               "perceptual": perc_name, "device": str(device), "resumed_from": start or None,
               "train_frames": int(data.train.size), "heldout_frames": int(data.holdout.size),
               "expression_response": response,
               "weak_expressions": weak_coefficients(response) if response else None}
    checkpoint(total, metrics)
    write_json_atomic(out / "metrics.json", metrics)
    log.write(json.dumps({"final": metrics}) + "\n")
    log.close()
    return metrics


def train_task(params: dict[str, Any], reporter: Reporter) -> dict[str, Any]:
    """Entry of the ``train`` job: ``subject``, ``preset``, ``renderer``, ``run``, ``resume``."""
    if params.get("renderer", "nerf") != "nerf":
        raise UserError(f"renderer {params['renderer']!r} is not available in this build",
                        "use --renderer nerf")
    subject = Subject(Path(params["subject"]).expanduser().resolve())
    preset = load_preset(params.get("preset") or "standard")
    cfg = section(preset, "train", TrainConfig)
    out = run_dir(subject, params.get("run") or "default")
    resume = bool(params.get("resume"))
    if resume and not (out / "checkpoint.pt").exists():
        raise UserError(f"run {out.name!r} has no checkpoint to resume from ({out / 'checkpoint.pt'})",
                        "start it without --resume")
    metrics = train(subject, cfg, out, reporter, resume=resume, preset_name=preset.name)
    return {"run": str(out), "checkpoint": str(out / "checkpoint.pt"), "metrics": metrics,
            "config": str(out / "config.json"), "log": str(out / "log.txt")}
