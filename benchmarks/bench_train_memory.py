"""Peak memory (RSS) and iterations/s of ``headsync train`` on a long subject (issue 10's bounded memory).

Runs ``headsync train`` in a child process with a copy of a preset whose schedule is cut to ``--iters``
coarse iterations (every other setting as the preset has it), and reports the child's peak resident set
size (``getrusage(RUSAGE_CHILDREN).ru_maxrss``, the figure ``/usr/bin/time -v`` prints as "Maximum resident
set size") and the run's iterations/s from its ``metrics.json``.

A long subject is made by looping the sample (ffmpeg from imageio-ffmpeg) and preparing it at 512 px::

    ffmpeg -stream_loop 12 -i backend/headsync/sample/video.mp4 -t 300 -c:v libx264 -c:a aac long300.mp4
    headsync prepare long300.mp4 --subject /tmp/long300 --preset preview --resolution 512
    python benchmarks/bench_train_memory.py --subject /tmp/long300 --preset standard --iters 4
    python benchmarks/bench_train_memory.py --subject /tmp/long300 --preset standard --frames 1500

``--frames N`` trains on a copy of the subject cut to its first N frames (links to the frame and mask
files, sliced arrays), to measure how memory grows with the clip's length without the whole clip.
The code measured is whatever ``headsync`` the child imports (``PYTHONPATH`` is passed on), so the same
script measures a checkout before and after a change.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import numpy as np


def cut_subject(src: Path, dst: Path, n: int) -> Path:
    """A copy of the prepared subject ``src`` holding only its first ``n`` frames (images linked)."""
    manifest = json.loads((src / "subject.json").read_text())
    total = int(manifest["source"]["frame_count"])
    if not 0 < n <= total:
        raise SystemExit(f"--frames {n}: the subject has {total} frames")
    dst.mkdir(parents=True)
    manifest["source"]["frame_count"] = n
    (dst / "subject.json").write_text(json.dumps(manifest))
    for name in ("frames", "masks"):
        (dst / name).mkdir()
        for f in sorted((src / name).iterdir())[:n]:  # 000000.jpg, 000001.jpg, ...
            os.symlink(f, dst / name / f.name)
    shutil.copy(src / "background.jpg", dst / "background.jpg")
    for f in ["expression.npy", "landmarks.npy", *(p.relative_to(src) for p in src.glob("audio_features/*.npy"))]:
        if (src / f).exists():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            np.save(dst / f, np.load(src / f)[:n])
    pose = dict(np.load(src / "pose.npz"))
    np.savez(dst / "pose.npz", **{k: v[:n] if v.ndim and v.shape[0] == total else v for k, v in pose.items()})
    return dst


def cut_preset(preset: str, iters: int, out: Path) -> Path:
    """The preset (a name from presets/ or a path) with ``iters`` coarse iterations, no fine stage, no
    checkpoint or held-out render before the end: a copy that measures the loop and nothing else."""
    try:
        from headsync.core.config import load_preset
    except ImportError:  # the package layout before issue 10, to measure a checkout from before it
        from headsync.config import load_preset

    tables = {k: dict(v) for k, v in load_preset(preset).tables.items()}
    tables.setdefault("train", {}).update(coarse_iters=iters, fine_iters=0, checkpoint_every=10 ** 9,
                                          heldout_eval_frames=0, log_every=max(1, iters // 4))
    out.write_text(_toml(tables))
    tomllib.loads(out.read_text())  # the copy must read back
    return out


def _toml(tables: dict, prefix: str = "") -> str:
    lines, subs = [], []
    for k, v in tables.items():
        if isinstance(v, dict):
            subs.append(_toml(v, f"{prefix}{k}."))
        else:
            lines.append(f"{k} = {json.dumps(list(v) if isinstance(v, tuple) else v)}")
    head = f"[{prefix[:-1]}]\n" if prefix and lines else ""
    return head + "\n".join(lines) + ("\n\n" if lines else "") + "".join(subs)


def measure(subject: Path, preset: Path) -> dict:
    """Train once in a child process; its peak RSS (GiB), iterations/s and wall time."""
    run = f"memory-{os.getpid()}"
    cmd = [sys.executable, "-m", "headsync.cli", "train", "--subject", str(subject), "--preset", str(preset),
           "--run", run, "--json-progress"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"train failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
    metrics = json.loads((subject / "models" / run / "metrics.json").read_text())
    shutil.rmtree(subject / "models" / run)
    return {"peak_rss_gib": round(peak_kib / 2 ** 20, 3), "it_per_s": metrics["it_per_s"],
            "iterations": metrics["iterations"], "wall_s": round(wall, 1),
            "frames": json.loads((subject / "subject.json").read_text())["source"]["frame_count"],
            "frame_store": metrics.get("frame_store")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subject", type=Path, required=True, help="a prepared subject")
    ap.add_argument("--preset", default="standard", help="name or path; its [train] table is used as is")
    ap.add_argument("--iters", type=int, default=200, help="coarse iterations to run")
    ap.add_argument("--frames", type=int, help="train on the first N frames only (a linked copy)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a [train] setting of the copy (TOML value), e.g. --set rays=1024")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        tmp = Path(tmp)
        subject = cut_subject(args.subject, tmp / "subject", args.frames) if args.frames else args.subject
        preset = cut_preset(args.preset, args.iters, tmp / "memory.toml")
        if args.set:
            tables = tomllib.loads(preset.read_text())
            tables["train"].update(tomllib.loads("\n".join(args.set)))
            preset.write_text(_toml(tables))
        r = {"preset": args.preset, "overrides": args.set, **measure(subject, preset),
             "loadavg_1min": round(os.getloadavg()[0], 2)}
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
