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
from ..core.config import AUTO, as_dict, from_table, load_preset, section, table
from ..core.devices import pick_device, set_threads
from ..face_sync.lip_features import check_kind
from ..core.errors import UserError
from ..core.progress import Reporter
from ..renderers.base import Renderer, SubjectMeta
from ..renderers.common.cameras import Camera, camera_to_head
from ..renderers.common.conditioning import window_indices
from ..renderers.common.losses import mse, perceptual_loss, psnr_from_mse
from ..renderers.registry import preset_renderer, renderer_class, renderer_names
from ..subject.data import SubjectData, load_subject_data
from ..subject.folder import CORE_EXPRESSIONS, Subject
from ..subject.info import METRICS_FILE
from ..evaluation.expression_response import box_mask, coefficient_response, weak_coefficients
from .checkpoints import load_checkpoint, run_dir, save_checkpoint
from .expression_sampling import add_eye_samples, draw_slot, eye_boxes, frame_weights
from .frames import FrameStore, open_frames
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
    # Expression-focused sampling (training/expression_sampling.py): share of the rays put around the eyes
    # and brows, side of the eye patch added to the patches (0: none), share of frames drawn from the
    # expression coefficients' tails (0: uniform).
    # Off by default, on in `preview`: alone it made no edit act, with the renderers' expression bases it
    # is what makes blink edits act on a real clip, for 1-1.5 dB held-out PSNR (docs/benchmarks.md, issue 11).
    eyes_fraction: float = 0.0
    eyes_patch: int = 0
    tail_share: float = 0.0
    perceptual_weight: float = 0.01  # lambda of Eq. 12/13 (fine stage)
    # Weight of the silhouette term: opacity vs the head mask (labels 1-4). Without it the field may learn
    # a faint dark layer over the bright plate that reproduces the frame but cannot be composited.
    mask_weight: float = 0.1
    # Weight of the opacity entropy term (pushes each pixel's opacity to 0 or 1): half-transparent floaters
    # beside the chin and over the shoulder are what leaks into the composite (issue 11).
    opacity_entropy_weight: float = 0.001
    lr_final_ratio: float = 0.1
    heldout_eval_frames: int = 8  # held-out crops rendered at the end for metrics.json (0: none)
    response_frames: int = 2  # frames of the after-training check of each coefficient's effect (0: none)
    audio_feature: str = "ave"  # audio_features/KIND.npy; ave beat mel on lip sync (docs/benchmarks.md)
    checkpoint_every: int = 1000
    log_every: int = 50
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # CPU threads for torch (0 = the idle cores, see core.devices.auto_threads)
    # GiB the training frames may take in memory, beyond which they stream from the subject folder
    # (0: half the free memory of a CUDA device, a quarter of the available RAM; training/frames.py).
    frame_memory_gb: float = 0.0
    # torch.compile the renderer's hot path (the NeRF's hash grid): 2.3x faster steps on this project's CPU
    # once compiled, but compiling takes minutes on two busy cores, so short CPU schedules (preview, tests)
    # turn it off (docs/benchmarks.md).
    compile: bool = True

    @property
    def total_iters(self) -> int:
        return self.coarse_iters + self.fine_iters

    def stage(self, it: int) -> str:
        """The schedule stage of iteration ``it``: ``"coarse"`` or ``"fine"``."""
        return "coarse" if it < self.coarse_iters else "fine"


def train_config(preset: Any, kind: str) -> TrainConfig:
    """The ``[train]`` table of ``preset`` for renderer ``kind``: its ``[train.KIND]`` sub-table, when there is
    one, replaces those settings, so renderers whose schedules differ share a preset (``preview``: the NeRF's
    1,400 + 200 ray iterations, the Gaussian head's whole-frame schedule). Sub-tables of other renderers
    are ignored."""
    values = table(preset, "train")
    own = {k: values.pop(k) for k in [k for k, v in values.items() if isinstance(v, dict)]}
    unknown = set(own) - set(renderer_names())
    if unknown:
        raise UserError(f"[train] has sub-table(s) {sorted(unknown)} that name no renderer",
                        f"name a renderer ({', '.join(renderer_names())}) or move the settings into [train]")
    values.update(own.get(kind, {}))
    return from_table(TrainConfig, values, f"train.{kind}" if kind in own else "train")


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
    """Per-frame tensors on the device: camera (head-space), conditions' inputs, and the frames' images
    (:mod:`headsync.training.frames`)."""

    R_c2h: torch.Tensor  # (N, 3, 3)
    origin: torch.Tensor  # (N, 3)
    audio: torch.Tensor  # (N, D)
    expression: torch.Tensor  # (N, 7)
    frames: FrameStore

    @staticmethod
    def of(data: SubjectData, device: torch.device, frame_budget: int | None = None,
           reporter: Reporter | None = None) -> "FrameTensors":
        """``frame_budget``: bytes the frames may take in memory (None: :func:`frames.memory_budget`)."""
        Rc, o = camera_to_head(data.pose.R, data.pose.T)
        f = lambda a, dt=torch.float32: torch.as_tensor(a, dtype=dt, device=device)  # noqa: E731
        store = open_frames(data.subject, data.n_frames, data.size, device, frame_budget, reporter)
        return FrameTensors(f(Rc), f(o), f(data.audio), f(data.expression), store)


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
            target, bg, _ = ft.frames.image(int(f))
            out = renderer.render(frame_camera(data, ft, int(f)), cond, bg)
            vals.append(psnr_from_mse(float(mse(out["rgb"], target))))
    return float(np.mean(vals))


def opacity_entropy(opacity: torch.Tensor) -> torch.Tensor:
    """Mean binary entropy (nats) of opacities in [0, 1]: 0 for fully opaque or empty pixels."""
    o = opacity.clamp(1e-5, 1 - 1e-5)
    return -(o * o.log() + (1 - o) * (1 - o).log()).mean()


def expression_check(renderer: Renderer, data: SubjectData, ft: FrameTensors, eyes: np.ndarray,
                     frames: int) -> dict[str, dict[str, float]]:
    """How strongly each coefficient acts (:mod:`headsync.evaluation.expression_response`) on ``frames``
    training frames spread over the clip."""
    picked = data.train[np.linspace(0, data.train.size - 1, frames).astype(int)]
    dev = ft.audio.device

    def render(frame: int, expr: np.ndarray) -> np.ndarray:
        idx = torch.as_tensor(window_indices(np.array([frame]), ft.audio.shape[0], renderer.audio_window), device=dev)
        e = torch.as_tensor(expr[None], dtype=torch.float32, device=dev)
        with torch.no_grad():
            cond = renderer.conditions(ft.audio[idx], e, torch.tensor([frame], device=dev))
            out = renderer.render(frame_camera(data, ft, frame), cond, ft.frames.image(frame)[1])
        return out["rgb"].cpu().numpy()

    renderer.eval()
    return coefficient_response(render, [int(f) for f in picked], data.expression,
                                lambda f: box_mask(eyes[f], data.size), lambda f: ft.frames.head(f), CORE_EXPRESSIONS)


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
    check_kind(cfg.audio_feature)
    reporter.begin_step(0, 1, phases=2)  # loading the frames, then training: one monotonic fraction
    data = load_subject_data(subject, cfg.resolution, cfg.audio_feature)
    meta = subject_meta(data, cfg)
    if state is not None and SubjectMeta.from_dict(state["meta"]).train_frames != meta.train_frames:
        raise UserError(f"the subject's frames changed since run {out.name!r} started (prepared again?)",
                        "train it again without --resume, or under another --run name")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    renderer = cls.build(renderer_cfg, meta, device)
    if state is not None:  # before the optimiser exists: loading may replace parameters (a resized renderer)
        renderer.load_renderer_state(state["model"])
    compiled = renderer.compile_hot_paths(cfg.compile)
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
    ft = FrameTensors.of(data, device, int(cfg.frame_memory_gb * 2 ** 30) or None, reporter)
    ctx = StepContext(renderer, data, ft, rng, cfg, opt)
    callbacks = renderer.callbacks()
    eyes = eye_boxes(np.load(subject.path("landmarks.npy")), data.pose.K.size, data.size)
    weights = frame_weights(data.expression, data.train, cfg.tail_share)
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
        frame = int(data.train[draw_slot(weights, rng)])
        cond = frame_conditions(renderer, ft, frame)
        stage = cfg.stage(it)
        sampling = renderer.sampling(stage)
        batch = add_eye_samples(draw(sampling, ft.frames.head(frame), ft.frames.lips_box(frame), cfg, rng), sampling,
                                eyes[frame], data.size, cfg, rng)
        if batch.pixels is None:
            pix = None
            target, bg, mask = ft.frames.image(frame)
        else:
            pix = torch.as_tensor(batch.pixels, device=device)
            target, bg, mask = ft.frames.pixels(frame, pix)
        out_r = renderer.render(frame_camera(data, ft, frame), cond, bg, pix, train=True)
        pix_loss = mse(out_r["rgb"], target)
        loss = pix_loss + cfg.mask_weight * mse(out_r["opacity"], mask)
        if cfg.opacity_entropy_weight:
            loss = loss + cfg.opacity_entropy_weight * opacity_entropy(out_r["opacity"])
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
    response = expression_check(renderer, data, ft, eyes, cfg.response_frames) if cfg.response_frames else None
    metrics = {**last, "iterations": total, "heldout_psnr": None if hold is None else round(hold, 3),
               "perceptual": perc_name, "device": str(device), "resumed_from": start or None, "renderer": kind,
               "train_frames": int(data.train.size), "heldout_frames": int(data.holdout.size),
               "frame_store": ft.frames.kind, "compile": compiled,
               "expression_response": response,
               "weak_expressions": weak_coefficients(response) if response else None}
    checkpoint(total, metrics)
    reporter.begin_step(0, 0)
    write_json_atomic(out / METRICS_FILE, metrics)
    log.write(json.dumps({"final": metrics}) + "\n")
    log.close()
    return metrics


def train_task(params: dict[str, Any], reporter: Reporter) -> dict[str, Any]:
    """Entry of the ``train`` job: ``subject``, ``preset``, ``renderer`` (default: the preset's
    ``[renderer] default``), ``run``, ``resume``."""
    preset = load_preset(params.get("preset") or AUTO)
    kind = params.get("renderer") or preset_renderer(preset.tables)
    cls = renderer_class(kind)
    subject = Subject(Path(params["subject"]).expanduser().resolve())
    cfg = train_config(preset, kind)
    renderer_cfg = section(preset, f"renderer.{kind}", cls.Config)
    out = run_dir(subject, params.get("run") or "default")
    resume = bool(params.get("resume"))
    if resume and not (out / "checkpoint.pt").exists():
        raise UserError(f"run {out.name!r} has no checkpoint to resume from ({out / 'checkpoint.pt'})",
                        "start it without --resume")
    metrics = train(subject, cfg, kind, renderer_cfg, out, reporter, resume=resume, preset_name=preset.name)
    return {"run": str(out), "checkpoint": str(out / "checkpoint.pt"), "metrics": metrics,
            "config": str(out / "config.json"), "log": str(out / "log.txt")}
