"""Render speed of the Gaussian head beside the NeRF's, in one run: frames/s at each size and their ratio.

Both renderers are trained through the one trainer (:func:`headsync.training.trainer.train`, via
``bench_renderer.py``'s :func:`bench`) on the tests' synthetic subject at ``--train-size`` (96 px, the
preview size) with the ``--preset`` tables, the NeRF for ``--nerf-iters`` and the Gaussian head for
``--gauss-iters`` iterations (coarse stage only: the Gaussians stay canonical, densification as the preset
says); or, with ``--checkpoints NERF GAUSSIAN --subject DIR``, two runs already trained on a subject are
loaded. Then each renders whole frames at every ``--sizes`` with the frame's camera scaled, back to back
on the same torch threads, through the renderer protocol (conditions, then ``render`` over the plate).
Also timed: the rasterizer alone on the frame's Gaussians.

    .venv/bin/python benchmarks/bench_gaussian.py                     # 96, 256 and 512 px
    .venv/bin/python benchmarks/bench_gaussian.py --subject S --checkpoints S/models/nerf/checkpoint.pt \
        S/models/gauss/checkpoint.pt --sizes 96 256 512 --frames 2

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
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_renderer import bench  # noqa: E402  (also puts tests/ on the path)


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
    ap.add_argument("--preset", default="preview")
    ap.add_argument("--nerf-iters", type=int, default=600)
    ap.add_argument("--gauss-iters", type=int, default=300)
    ap.add_argument("--subject", type=Path, help="with --checkpoints: the subject they were trained on")
    ap.add_argument("--checkpoints", type=Path, nargs=2, metavar=("NERF", "GAUSSIAN"))
    args = ap.parse_args(argv)

    from synthetic_head import make_subject

    from headsync.renderers.common.cameras import Camera
    from headsync.renderers.gaussian.model import viewmat
    from headsync.renderers.gaussian.rasterizer import rasterization
    from headsync.subject.data import load_subject_data
    from headsync.subject.folder import Subject
    from headsync.training.checkpoints import load_renderer
    from headsync.training.trainer import FrameTensors, frame_conditions

    if args.checkpoints:
        if not args.subject:
            ap.error("--checkpoints needs --subject")
        subject_dir, paths = args.subject, list(args.checkpoints)
        train_info = {"nerf_iters": None, "gauss_iters": None}
        torch.set_num_threads(1)
    else:
        subject_dir = make_subject(Path(tempfile.mkdtemp(prefix="bench-subject-")) / "s", n_frames=20,
                                   size=args.train_size)
        runs = [bench(subject_dir, args.preset, args.train_size, iters, 1, "cpu", kind, "mel")
                for kind, iters in (("nerf", args.nerf_iters), ("gaussian", args.gauss_iters))]
        paths = [Path(r["run_dir"]) / "checkpoint.pt" for r in runs]
        train_info = {"nerf_iters": args.nerf_iters, "gauss_iters": args.gauss_iters}
    threads = torch.get_num_threads()  # bench() set the preset's threads; both render on the same
    nerf, _ = load_renderer(paths[0], "cpu")
    gauss, _ = load_renderer(paths[1], "cpu")
    if (nerf.kind, gauss.kind) != ("nerf", "gaussian"):
        ap.error(f"--checkpoints must be a nerf then a gaussian run, got {nerf.kind}, {gauss.kind}")
    data = load_subject_data(Subject(subject_dir), nerf.meta.resolution, nerf.meta.audio_feature)
    ft = FrameTensors.of(data, torch.device("cpu"))

    rows = []
    for size in args.sizes:
        K = data.K.scaled(size)
        bg = torch.full((size, size, 3), 0.4)
        frames = [int(data.train[k % data.train.size]) for k in range(args.frames + 1)]
        load = os.getloadavg()[0]

        def frame_of(renderer):
            def go(k):
                f = frames[k]
                with torch.no_grad():
                    renderer.render(Camera(K, ft.R_c2h[f], ft.origin[f]), frame_conditions(renderer, ft, f), bg)
            return go

        f0 = frames[0]
        with torch.no_grad():
            gs = gauss.frame_gaussians(frame_conditions(gauss, ft, f0), ft.R_c2h[f0], ft.origin[f0])
        W = viewmat(ft.R_c2h[f0], ft.origin[f0])[None]
        Km = torch.as_tensor(K.matrix(), dtype=torch.float32)[None]

        def raster(k):
            with torch.no_grad():
                rasterization(gs["means"], gs["quats"], gs["scales"], gs["opacities"], gs["sh"], W, Km, size, size,
                              sh_degree=gauss.cfg.sh_degree, tile_size=gauss.cfg.tile_size, backend="torch")

        nerf_s = mean_time(frame_of(nerf), args.frames)
        gauss_s = mean_time(frame_of(gauss), args.frames)
        r = {"resolution": size, "threads": threads, **train_info, "gaussians": gauss.n_gaussians,
             "nerf_fps": round(1 / nerf_s, 3), "gaussian_fps": round(1 / gauss_s, 2),
             "ratio": round(nerf_s / gauss_s, 1), "raster_fps": round(1 / mean_time(raster, args.frames), 2),
             "loadavg_1min": round(load, 2), "tile_size": gauss.cfg.tile_size}
        print(json.dumps(r), flush=True)
        rows.append(r)
    print("\n| resolution | threads | Gaussians | NeRF fps | Gaussian fps | ratio | rasterizer alone fps | load avg |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['resolution']}² | {r['threads']} | {r['gaussians']} | {r['nerf_fps']} | {r['gaussian_fps']} | "
              f"{r['ratio']}x | {r['raster_fps']} | {r['loadavg_1min']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
