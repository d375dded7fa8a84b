"""Preparation throughput, per stage and in total, in frames per second of video.

    .venv/bin/python benchmarks/bench_prepare.py [--video FILE] [--resolution 512] [--out DIR]

Defaults to the bundled sample at 512x512 crops, no downloaded model (the default pipeline). Each stage's
wall time is read from the subject manifest; the run starts from an empty subject folder, so nothing is
reused. Real time is 25 fps for a 25 fps video.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from headsync.core.package_data import sample_dir

REPO = Path(__file__).resolve().parents[1]
LEARNED = ("ave",)  # stages that train a network rather than process frames


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video", default=str(next(sample_dir().glob("*.mp4"), "")))
    ap.add_argument("--audio")
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--preset", default="standard")
    ap.add_argument("--models", help="folder holding face_landmarker.task (the blendshape capturer)")
    ap.add_argument("--out")
    args = ap.parse_args()
    os.environ.pop("HEADSYNC_MODELS", None)
    if args.models:
        os.environ["HEADSYNC_MODELS"] = args.models
    from headsync.prepare.pipeline import prepare_subject

    out = Path(args.out or tempfile.mkdtemp(prefix="bench-prepare-"))
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    s = prepare_subject(args.video, out, audio=args.audio, preset=args.preset, resolution=args.resolution)
    total = time.perf_counter() - t0
    m = s.load()
    n = m["source"]["frame_count"]
    rows = {k: v["seconds"] for k, v in m["stages"].items()}
    print(f"video {args.video}: {n} frames, crop {args.resolution}px, {os.cpu_count()} cores, {platform.processor()}")
    print(f"{'stage':<12} {'seconds':>8} {'fps':>8}")
    for k, sec in rows.items():
        if m["stages"][k].get("info", {}).get("skipped"):
            print(f"{k:<12} {'skipped (optional model not installed)':>26}")
            continue
        print(f"{k:<12} {sec:8.2f} {n / max(sec, 1e-9):8.1f}")
    # The audio-visual encoder is a network trained per subject: its cost is a fixed number of steps, not
    # work per frame, so it is reported apart from the per-frame stages.
    per_frame = sum(sec for k, sec in rows.items() if k not in LEARNED)
    print(f"{'per-frame':<12} {per_frame:8.2f} {n / per_frame:8.1f}   (all stages but {', '.join(LEARNED)})")
    print(f"{'total':<12} {total:8.2f} {n / total:8.1f}")
    print(json.dumps({"frames": n, "resolution": args.resolution, "stages_s": rows, "per_frame_s": round(per_frame, 2), "total_s": round(total, 2),
                      "fps": round(n / total, 1)}))
    if not args.out:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
