"""Preview Frame latency in Blender against a real service, and New Shot of 10,000 frames.

    .venv/bin/python benchmarks/bench_preview_frame.py --subject DIR [--run preview]
        [--blender-python .venv-bpy-5.0.1/bin/python] [--repeat 3]

``--subject`` is a trained subject folder (``headsync demo`` leaves one in out/demo/subject, trained as run
``preview``). A fresh workspace gets a copy of it as ``subjects/astronaut`` (a link out of the workspace
would be refused); ``headsync serve`` runs on it with this Python; Blender (the bpy wheel of
``--blender-python``) installs the built add-on, creates a shot from the sample's dub.wav, and times
Preview Frame from the operator's call to the image strip in the sequencer, polling as the add-on's timer
does while a preview runs (every ``polling.PREVIEW_INTERVAL`` s). The first preview is cold (the service
starts its warm worker for it), the next ones warm; then it closes the left eye on that frame and previews
again: the eye region must change. It also keys a 10,000-frame shot (400 s of silence) and reports New
Shot's time, before (the looped 10,000-frame curves fetched and validated every time, as the add-on did
until issue 13's second round) and after (the subject's own frames fetched once per subject with their
ETag and looped in Blender), side by side in one run, and the keys per curve with their largest deviation
from the captured curve.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import wave
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "backend" / "headsync" / "sample"

BLENDER = r'''
import json, os, sys, time
import numpy as np
import bpy
A = json.loads(sys.argv[1])
PKG = "bl_ext.user_default.headsync"
assert bpy.ops.extensions.package_install_files(filepath=A["zip"], repo="user_default", enable_on_install=True) == {'FINISHED'}
mod = lambda n: sys.modules[PKG + "." + n]
p = bpy.context.preferences.addons[PKG].preferences
p.workspace = A["ws"]
polling, compat, cio, ops, shotlib = mod("polling"), mod("compat"), mod("curves_io"), mod("operators"), mod("shots")
scene = bpy.context.scene
st = scene.headsync
scene.render.fps, scene.render.fps_base = 25, 1.0
s = st.subjects.add(); s.name = "astronaut"; s.stage = "trained"; s.run = A["run"]
out = {"preview_s": [], "load": [os.getloadavg()[0]]}
snd = compat.new_sound(scene, "dub", A["dub"], 3, 1)
assert bpy.ops.headsync.new_shot(subject="astronaut", strip="dub") == {'FINISHED'}
shot = st.shots["dub"]
frame = shot.frame_start + A["frame"]
scene.frame_current = frame
time.sleep(A["settle"])  # the user scrubbing to the frame: New Shot has started the service's warm worker

def preview():
    t0 = time.monotonic()
    assert bpy.ops.headsync.preview_frame(shot="dub") == {'FINISHED'}
    jid = shot.preview_job
    while True:
        polling.poll_once()
        j = st.jobs[jid]
        if j.state in ("failed", "cancelled"):
            raise SystemExit(f"preview {j.state}: {j.error} {j.hint}")
        if j.handled and compat.get_strip(scene, shot.preview_strip) is not None:
            break
        time.sleep(polling.PREVIEW_INTERVAL)
    strip = compat.get_strip(scene, shot.preview_strip)
    return time.monotonic() - t0, os.path.join(strip.directory, strip.elements[0].filename)

for _ in range(A["repeat"]):
    dt, before = preview()
    out["preview_s"].append(round(dt, 2))
fc = compat.find_fcurve(shot.controls, '["eyeBlinkLeft"]')
out["eye_before"] = fc.evaluate(frame)
fc.keyframe_points.insert(frame, 1.0 if out["eye_before"] < 0.5 else 0.0)
fc.update()
dt, after = preview()
out["preview_after_edit_s"] = round(dt, 2)
out["files"] = [before, after]
out["load"].append(os.getloadavg()[0])
# New Shot of 10,000 frames: before (the looped curves fetched and validated every time) and after (the
# subject's own frames fetched once per subject with their ETag, looped in Blender), side by side
compat.new_sound(scene, "long", A["long"], 5, 1)
def before(subject, frames):
    doc = ops._client(timeout=10.0).subject_curves(subject, frames)
    return shotlib.captured_rows(cio.validate(doc, frames))
after = ops.captured_curves
def new_shot(name, **kw):
    t0 = time.perf_counter()
    assert bpy.ops.headsync.new_shot(subject="astronaut", strip="long", name=name, **kw) == {'FINISHED'}
    return round(time.perf_counter() - t0, 3)
mod("client")._CAPTURED.clear()
out["new_shot"] = {"before": [], "after_first": [], "after": []}
for i in range(A["repeat"]):
    ops.captured_curves = before
    out["new_shot"]["before"].append(new_shot(f"before{i}"))
    ops.captured_curves = after
    mod("client")._CAPTURED.clear()
    out["new_shot"]["after_first"].append(new_shot(f"first{i}"))
    out["new_shot"]["after"].append(new_shot("long" if i == 0 else f"after{i}"))
out["new_shot_10000_dense_s"] = new_shot("dense", dense=True)
c = ops._client(timeout=10.0)
t0 = time.perf_counter(); big = c.subject_curves("astronaut", 10000); t1 = time.perf_counter()
cio.validate(big, 10000); t2 = time.perf_counter()
mod("client")._CAPTURED.clear()
own = c.captured("astronaut"); t3 = time.perf_counter()
c.captured("astronaut"); t4 = time.perf_counter()
cio.looped(cio.validate(own), 10000); t5 = time.perf_counter()
out["parts"] = {"fetch_10000": t1 - t0, "validate_10000": t2 - t1, "fetch_own": t3 - t2, "fetch_304": t4 - t3,
                "validate_own_and_loop": t5 - t4, "own_frames": own["frame_count"]}
out["load"].append(os.getloadavg()[0])
long = st.shots["long"]
cap = cio.validate(mod("prefs").make_client(bpy.context).subject_curves("astronaut", long.frame_count))
cols = {f'["{n}"]0': [r[j] for r in cap["expression"]["values"]] for j, n in enumerate(cio.CORE_NAMES)}
for i in range(3):
    cols[f"rotation_euler{i}"] = [r[i] for r in cap["head_pose"]["rotation_euler_xyz"]]
    cols[f"location{i}"] = [r[i] for r in cap["head_pose"]["translation"]]
frames = range(long.frame_start, long.frame_start + long.frame_count)
out["keys"] = {}
for fcu in compat.fcurves(long.controls):
    k = fcu.data_path + str(fcu.array_index)
    dev = float(np.abs(np.array([fcu.evaluate(f) for f in frames]) - np.array(cols[k])).max())
    out["keys"][k] = [len(fcu.keyframe_points), dev]
print("RESULT " + json.dumps(out), flush=True)
'''


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subject", required=True, help="a trained subject folder")
    ap.add_argument("--run", default="preview")
    ap.add_argument("--blender-python", default=str(REPO / ".venv-bpy-5.0.1" / "bin" / "python"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--frame", type=int, default=40, help="the previewed frame, counted from the shot's start")
    ap.add_argument("--settle", type=float, default=0.0,
                    help="seconds between New Shot and the first preview (0: at once, the coldest case)")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    import build_addon

    tmp = Path(tempfile.mkdtemp(prefix="headsync-bench-preview-"))
    ws = tmp / "ws"
    (ws / "subjects").mkdir(parents=True)
    shutil.copytree(Path(args.subject).resolve(), ws / "subjects" / "astronaut",
                    ignore=shutil.ignore_patterns("renders"))
    long_wav = tmp / "long.wav"
    with wave.open(str(long_wav), "wb") as w:  # 400 s: 10,000 frames at 25 fps
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000)
        w.writeframes(b"\0\0" * 8000 * 400)
    zip_path = build_addon.build(tmp / "dist")
    log = open(tmp / "service.log", "wb")
    serve = subprocess.Popen([sys.executable, "-m", "headsync.cli", "serve", "--workspace", str(ws)], stdout=log,
                             stderr=subprocess.STDOUT)
    try:
        t0 = time.monotonic()
        while not (ws / "server.json").exists():
            if serve.poll() is not None or time.monotonic() - t0 > 180:
                raise SystemExit("headsync serve did not start: " + (tmp / "service.log").read_text()[-2000:])
            time.sleep(0.2)
        script = tmp / "bench.py"
        script.write_text(textwrap.dedent(BLENDER))
        env = dict(os.environ, BLENDER_USER_RESOURCES=str(tmp / "profile"))
        a = {"zip": str(zip_path), "ws": str(ws), "run": args.run, "dub": str(SAMPLE / "dub.wav"),
             "long": str(long_wav), "repeat": args.repeat, "frame": args.frame, "settle": args.settle}
        p = subprocess.run([args.blender_python, str(script), json.dumps(a)], capture_output=True, text=True,
                           env=env, timeout=1800)
        lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
        if not lines:
            raise SystemExit(p.stdout[-3000:] + p.stderr[-3000:])
        res = json.loads(lines[-1][7:])
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(30)
        log.close()
    import cv2
    import numpy as np

    a, b = (cv2.imread(f).astype(np.float32) for f in res["files"])
    d = np.abs(a - b).mean(-1)
    print(f"load average (1 min) at the start, after the previews, at the end: {res['load']}")
    for line in (ws / "logs" / "warm-worker.log").read_text().splitlines():
        if "ready in" in line:
            print(f"  warm worker: {line.split('] ', 1)[-1]} (started by New Shot; first preview {args.settle:g} s "
                  f"after New Shot)")
    print(f"Preview Frame (operator -> image strip): cold {res['preview_s'][0]} s, warm {res['preview_s'][1:]} s; "
          f"after closing the eye: {res['preview_after_edit_s']} s")
    print(f"  the picture changed: mean |diff| {d.mean():.3f} grey levels, largest {d.max():.0f}, "
          f"{(d > 8).mean() * 100:.2f} % of pixels by more than 8")
    ns = res["new_shot"]
    print(f"New Shot of 10,000 frames, sparse keys: before {ns['before']} s; after: first of a subject "
          f"{ns['after_first']} s, then {ns['after']} s; dense keys (after) {res['new_shot_10000_dense_s']} s")
    pt = res["parts"]
    print(f"  the curves: fetch 10,000 looped frames {pt['fetch_10000']:.3f} s + validate {pt['validate_10000']:.3f} s;"
          f" fetch the {pt['own_frames']} own frames {pt['fetch_own']:.3f} s, again (304) {pt['fetch_304']:.3f} s,"
          f" validate + loop to 10,000 {pt['validate_own_and_loop']:.3f} s")
    print("keys per curve (of 10,000 frames) and the largest deviation from the captured curve:")
    for k, (n, dev) in sorted(res["keys"].items()):
        print(f"  {k:22s} {n:6d}  {dev:.5f}")


if __name__ == "__main__":
    main()
