"""Render speed of the Gaussian head beside the NeRF's, in one run: frames/s at each size and their ratio.

Both renderers are trained on the tests' synthetic subject at ``--train-size`` (96 px, the preview
size): the NeRF with the ``preview`` table for ``--nerf-iters`` iterations through ``bench_renderer.py``'s
:func:`bench` (the real training loop, so its occupancy grid is a trained one), the Gaussian head for
``--gauss-iters`` whole-frame iterations (stage 2 from 60%, no densification: its count stays as
:class:`GaussianHead` initialises it for a head, the template's 478 points + ``--fill-points``). Then each
renders whole frames at every ``--sizes`` with the same camera scaled, back to back on the same torch
threads: the NeRF with ``TalkingHead.render_image``, the Gaussian head with ``GaussianHead.render`` (from
the frame's conditions to the image over the plate: conditions, deformation MLP, CPU tile rasterizer).
Also timed: the rasterizer alone and one Gaussian training step (forward + backward) at each size.

    .venv/bin/python benchmarks/bench_gaussian.py                     # 96, 256 and 512 px
    .venv/bin/python benchmarks/bench_gaussian.py --sizes 96 --frames 2 --nerf-iters 100 --gauss-iters 50

Prints one JSON object per size and a Markdown table for docs/benchmarks.md. On a shared machine the
absolute figures move with its load (printed); the ratio, measured back to back, moves much less.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_renderer import bench as bench_nerf  # noqa: E402  (also puts tests/ on the path)


def mean_time(fn, n: int) -> float:
    """Mean wall time of ``fn(k)`` over ``k = 1..n`` after one warm-up call."""
    fn(0)
    t = []
    for k in range(1, n + 1):
        t0 = time.perf_counter()
        fn(k)
        t.append(time.perf_counter() - t0)
    return float(np.mean(t))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[96, 256, 512])
    ap.add_argument("--train-size", type=int, default=96)
    ap.add_argument("--frames", type=int, default=3)
    ap.add_argument("--nerf-iters", type=int, default=600)
    ap.add_argument("--gauss-iters", type=int, default=300)
    ap.add_argument("--fill-points", type=int, default=4096)
    args = ap.parse_args(argv)

    from synthetic_head import make_subject

    from headsync.conditioning import window_indices
    from headsync.dataset import load_subject_data
    from headsync.renderers.gaussian.model import STAGE_DEFORM, GaussianConfig, GaussianHead, viewmat
    from headsync.renderers.gaussian.rasterizer import rasterization
    from headsync.subject import Subject
    from headsync.training import FrameTensors, frame_conditions, model_from_checkpoint

    subject_dir = make_subject(Path(tempfile.mkdtemp(prefix="bench-subject-")) / "s", n_frames=20,
                               size=args.train_size)
    nerf_run = bench_nerf(subject_dir, "preview", args.train_size, args.nerf_iters, 1, "cpu", "mel")
    threads = torch.get_num_threads()  # bench() set the preset's threads; the Gaussian head uses the same
    nerf, ncfg, _ = model_from_checkpoint(Path(nerf_run["run_dir"]) / "checkpoint.pt", "cpu")
    data = load_subject_data(Subject(subject_dir), args.train_size, "mel", 0.1)
    ft = FrameTensors.of(data, torch.device("cpu"))

    cfg = GaussianConfig(fill_points=args.fill_points)
    gauss = GaussianHead(cfg, data.pose.template, audio_in=data.audio.shape[1])
    opt = torch.optim.Adam(gauss.param_groups({"means": 2e-3, "log_scales": 5e-3, "opacity_logits": 5e-2,
                                               "hash": 1e-2, "net": 2e-3}), eps=1e-15)
    rng = np.random.default_rng(0)

    def inputs(f, K):
        idx = torch.as_tensor(window_indices(np.array([f]), ft.audio.shape[0], cfg.cond.smooth_window))
        return types.SimpleNamespace(K=K, R_c2h=ft.R_c2h[f], origin=ft.origin[f]), ft.audio[idx], ft.expression[f:f + 1]

    def gauss_step(f, K, target, bg, mask):
        cam, audio, expr = inputs(f, K)
        out = gauss.render(cam, gauss.conditions(audio, expr), bg, train=True)
        loss = sum(gauss.losses(out, target, mask).values())
        opt.zero_grad()
        loss.backward()

    t0 = time.perf_counter()
    for it in range(args.gauss_iters):
        if it == int(0.6 * args.gauss_iters):
            gauss.set_stage(STAGE_DEFORM)
        f = int(rng.choice(data.train))
        gauss_step(f, data.K, ft.images[f].float() / 255, ft.backgrounds[f].float() / 255, ft.head[f].float())
        opt.step()
    gauss_train_s = time.perf_counter() - t0
    gauss.set_stage(STAGE_DEFORM)
    gauss.eval()

    rows = []
    for size in args.sizes:
        K = data.K.scaled(size)
        bg = torch.full((size, size, 3), 0.4)
        frames = [int(data.train[k % data.train.size]) for k in range(args.frames + 1)]
        load = os.getloadavg()[0]

        def nerf_frame(k):
            f = frames[k]
            with torch.no_grad():
                cond = frame_conditions(nerf, ft, f, f, ncfg.smooth_window)
                nerf.render_image(K, ft.R_c2h[f], ft.origin[f], cond, bg)

        def gauss_frame(k):
            cam, audio, expr = inputs(frames[k], K)
            with torch.no_grad():
                gauss.render(cam, gauss.conditions(audio, expr), bg)

        cam, audio, expr = inputs(frames[0], K)
        with torch.no_grad():
            gs = gauss.frame_gaussians(gauss.conditions(audio, expr), cam.R_c2h, cam.origin)
        W = viewmat(cam.R_c2h, cam.origin)[None]
        Km = torch.as_tensor(K.matrix(), dtype=torch.float32)[None]

        def raster(k):
            with torch.no_grad():
                rasterization(gs["means"], gs["quats"], gs["scales"], gs["opacities"], gs["sh"], W, Km, size, size,
                              sh_degree=cfg.sh_degree, tile_size=cfg.tile_size, backend="torch")

        def step(k):
            gauss_step(frames[k], K, torch.full((size, size, 3), 0.5), bg, torch.ones(size, size))

        nerf_s = mean_time(nerf_frame, args.frames)
        gauss_s = mean_time(gauss_frame, args.frames)
        r = {"resolution": size, "threads": threads, "nerf_iters": args.nerf_iters,
             "nerf_samples_per_ray": nerf_run["samples_per_ray"], "gauss_iters": args.gauss_iters,
             "gauss_train_s": round(gauss_train_s, 1), "gaussians": gauss.n_gaussians,
             "nerf_fps": round(1 / nerf_s, 3), "gaussian_fps": round(1 / gauss_s, 2),
             "ratio": round(nerf_s / gauss_s, 1), "raster_fps": round(1 / mean_time(raster, args.frames), 2),
             "gaussian_train_step_s": round(mean_time(step, 1), 3), "loadavg_1min": round(load, 2),
             "tile_size": cfg.tile_size}
        print(json.dumps(r), flush=True)
        rows.append(r)
    print("\n| resolution | threads | Gaussians | NeRF fps | Gaussian fps | ratio | rasterizer alone fps "
          "| Gaussian train step (s) | load avg |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['resolution']}² | {r['threads']} | {r['gaussians']} | {r['nerf_fps']} | {r['gaussian_fps']} | "
              f"{r['ratio']}x | {r['raster_fps']} | {r['gaussian_train_step_s']} | {r['loadavg_1min']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
