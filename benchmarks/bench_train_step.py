"""Side-by-side timings of the training step, in one process so machine load hits both sides alike.

``--what compile``: eager vs ``torch.compile`` of the hash grid (as training compiles it,
``TalkingHead.compile_hot_paths``): a training step of tri-plane hash grid + density/colour MLPs
(forward and backward) on a varying number of sample points, alternating eager and compiled each round;
prints the first compiled call's seconds and the ratio.

``--what resolution``: training iterations/s at two render resolutions with the same table (same rays per
iteration), short runs alternating, with a cProfile of each: where the time goes.

    .venv/bin/python benchmarks/bench_train_step.py --what compile --device cpu
    .venv/bin/python benchmarks/bench_train_step.py --what resolution --sizes 96 512
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the synthetic subject lives with the tests


def compile_vs_eager(preset: str, rounds: int, points: int, device: str) -> dict:
    from headsync.core.compile import compile_forward
    from headsync.core.config import load_preset, section
    from headsync.renderers.common.hashgrid import HashGrid2D
    from headsync.renderers.nerf.field import HeadField
    from headsync.renderers.nerf.model import ModelConfig

    mc = section(load_preset(preset), "renderer.nerf", ModelConfig)
    dev = torch.device(device)
    grids = {"eager": HashGrid2D(mc.hash, 3).to(dev), "compiled": HashGrid2D(mc.hash, 3).to(dev)}
    state = compile_forward(grids["compiled"])
    field = HeadField(grids["eager"].out_dim, mc.cond.audio_dim, 7, mc.field).to(dev)

    def step(grid, n: int) -> float:
        x = torch.rand(n, 3, 2, device=dev)
        t0 = time.perf_counter()
        fx = grid(x)
        sigma, geo = field.density(fx, torch.zeros(n, mc.cond.audio_dim, device=dev), torch.zeros(n, 7, device=dev))
        rgb = field.color(geo, torch.ones(n, 3, device=dev) / 3 ** 0.5, torch.zeros(1, mc.field.appearance_dim, device=dev))
        (sigma.mean() + rgb.mean()).backward()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    first = step(grids["compiled"], points)  # compiles
    step(grids["compiled"], points + 97)  # a second shape: dynamic shapes must not recompile per size
    step(grids["eager"], points)
    t = {"eager": 0.0, "compiled": 0.0}
    for r in range(rounds):
        n = points - points // 8 + (r * 397) % (points // 4)  # kept samples vary per iteration in training
        for k in t:
            t[k] += step(grids[k], n)
    return {"what": "compile", "preset": preset, "device": device, "threads": torch.get_num_threads(),
            "points": points, "rounds": rounds, "compile_state": state, "first_compiled_call_s": round(first, 1),
            "eager_step_ms": round(1e3 * t["eager"] / rounds, 1), "compiled_step_ms": round(1e3 * t["compiled"] / rounds, 1),
            "speedup": round(t["eager"] / t["compiled"], 2), "loadavg_1min": round(os.getloadavg()[0], 2)}


def resolutions(preset: str, sizes: list[int], iters: int, rounds: int) -> dict:
    from headsync import tasks
    from headsync.core.config import load_preset
    from headsync.core.progress import silent
    from synthetic_head import make_subject, write_preset

    nerf = load_preset(preset).tables.get("renderer", {}).get("nerf", {})
    table = {**load_preset(preset).tables.get("train", {}), "coarse_iters": iters, "fine_iters": 0,
             "checkpoint_every": 10 ** 9, "heldout_eval_frames": 0, "threads": 1, "audio_feature": "mel",
             "compile": False, "log_every": iters}
    tmp = Path(tempfile.mkdtemp(prefix="bench-step-"))
    subjects = {s: make_subject(tmp / f"s{s}", n_frames=20, size=s) for s in sizes}
    rates: dict[int, list[float]] = {s: [] for s in sizes}
    profiles: dict[int, str] = {}
    for r in range(rounds):
        for s in sizes:
            preset_file = write_preset(tmp / f"p{s}.toml", renderer={"nerf": nerf}, **{**table, "resolution": s})
            prof = cProfile.Profile() if r == rounds - 1 else None
            if prof:
                prof.enable()
            m = tasks.run("train", {"subject": str(subjects[s]), "preset": str(preset_file), "run": f"r{r}"},
                          silent())["metrics"]
            if prof:
                prof.disable()
                buf = io.StringIO()
                pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(12)
                profiles[s] = buf.getvalue()
            rates[s].append(m["it_per_s"])
    for s in sizes:
        print(f"---- profile at {s} px (last round) ----\n{profiles[s]}", file=sys.stderr)
    med = {s: sorted(v)[len(v) // 2] for s, v in rates.items()}
    return {"what": "resolution", "preset": preset, "rays": table.get("rays"), "iters": iters, "it_per_s": rates,
            "median_it_per_s": med, "ratio_first_to_last": round(med[sizes[0]] / med[sizes[-1]], 2),
            "loadavg_1min": round(os.getloadavg()[0], 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--what", choices=["compile", "resolution"], required=True)
    ap.add_argument("--preset", default="preview")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--points", type=int, default=16384, help="sample points per step (compile)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[96, 512])
    ap.add_argument("--iters", type=int, default=40, help="iterations per run (resolution)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.what == "compile":
        r = compile_vs_eager(args.preset, args.rounds, args.points, args.device)
    else:
        r = resolutions(args.preset, args.sizes, args.iters, args.rounds)
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
