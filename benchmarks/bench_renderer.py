"""Benchmark of the Dynamic Portrait Renderer: training iterations/s and rendering frames/s.

Runs the real training loop (:func:`headsync.training.trainer.train`) for a fixed number of iterations and then
renders whole frames with the trained model, for each resolution asked for, with the network and
sampling of a preset. Without ``--subject`` it builds the tests' synthetic subject at each resolution
(ray-cast ellipsoid head, same file layout as a prepared subject), so it needs no media.

    .venv/bin/python benchmarks/bench_renderer.py                      # preview table at 96 and 512 px
    .venv/bin/python benchmarks/bench_renderer.py --subject DIR --preset preview --sizes 96

Prints one JSON object per configuration and a Markdown table for docs/benchmarks.md. The machine's
load average is printed with the figures: on a shared machine they move with it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the synthetic subject lives with the tests


def bench(subject_dir: Path, preset: str, size: int, iters: int, frames: int, device: str, kind: str = "nerf",
          synthetic: bool = False, compile: bool | None = None) -> dict:
    from headsync.core.config import load_preset, section
    from headsync.core.devices import set_threads
    from headsync.core.progress import silent
    from headsync.renderers.registry import renderer_class
    from headsync.subject.data import load_subject_data
    from headsync.subject.folder import Subject
    from headsync.training.checkpoints import load_renderer
    from headsync.training.trainer import FrameTensors, frame_camera, frame_conditions, train, train_config

    p = load_preset(preset)
    cfg = train_config(p, kind)
    cfg = dataclasses.replace(cfg, resolution=size, coarse_iters=iters, fine_iters=0, checkpoint_every=10 ** 9,
                              heldout_eval_frames=0, device=device, log_every=max(iters, 1))
    if synthetic:  # the synthetic subject has the mel feature only
        cfg = dataclasses.replace(cfg, audio_feature="mel")
    if compile is not None:
        cfg = dataclasses.replace(cfg, compile=compile)
    rcfg = section(p, f"renderer.{kind}", renderer_class(kind).Config)
    subject = Subject(subject_dir)
    out = Path(tempfile.mkdtemp(prefix="bench-run-"))
    load = os.getloadavg()[0]
    m = train(subject, cfg, kind, rcfg, out, silent())
    threads = set_threads(cfg.threads)
    renderer, _ = load_renderer(out / "checkpoint.pt", device)
    data = load_subject_data(subject, size, renderer.meta.audio_feature)
    ft = FrameTensors.of(data, torch.device(device))
    times = []
    with torch.no_grad():
        for k in range(frames + 1):
            f = int(data.train[k % data.train.size])
            t0 = time.perf_counter()
            cond = frame_conditions(renderer, ft, f)
            _, bg, _ = ft.frames.image(f)
            renderer.render(frame_camera(data, ft, f), cond, bg)
            if device == "cuda":
                torch.cuda.synchronize()
            if k:  # the first frame warms caches up
                times.append(time.perf_counter() - t0)
    return {"preset": preset, "renderer": kind, "resolution": size, "device": device, "threads": threads,
            "train_iters": iters, "rays_per_iter": cfg.rays, "train_it_per_s": m["it_per_s"],
            "render_fps": round(1.0 / float(np.mean(times)), 3), "render_frames": frames,
            "samples_per_ray": m.get("samples_per_ray"), "compile": m.get("compile"), "loadavg_1min": round(load, 2),
            "run_dir": str(out)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subject", type=Path, help="a prepared subject (default: a synthetic one per size)")
    ap.add_argument("--preset", default="preview")
    ap.add_argument("--renderer", default="nerf", help="a registered renderer")
    ap.add_argument("--sizes", type=int, nargs="+", default=[96, 512])
    ap.add_argument("--iters", type=int, default=60)
    ap.add_argument("--frames", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--compile", choices=["preset", "on", "off"], default="preset",
                    help="torch.compile the hash grid as the preset says, or force it")
    args = ap.parse_args(argv)
    rows = []
    for size in args.sizes:
        if args.subject:
            subject_dir = args.subject
        else:
            from synthetic_head import make_subject

            subject_dir = make_subject(Path(tempfile.mkdtemp(prefix="bench-subject-")) / "s", n_frames=20, size=size)
        r = bench(subject_dir, args.preset, size, args.iters, args.frames, args.device, args.renderer,
                  synthetic=not args.subject, compile={"preset": None, "on": True, "off": False}[args.compile])
        print(json.dumps(r), flush=True)
        rows.append(r)
    print("\n| preset | resolution | device | threads | rays/iter | compile | train it/s | render fps | load avg |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['preset']} | {r['resolution']}² | {r['device']} | {r['threads']} | {r['rays_per_iter']} | "
              f"{r['compile']} | {r['train_it_per_s']} | {r['render_fps']} | {r['loadavg_1min']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
