"""The add-on inside Blender (the bpy 5.0.1 wheel, headless): build the zip, install it with
``bpy.ops.extensions.package_install_files`` into a temporary user profile, enable it, key and edit a shot,
sample it, save and reload; results of jobs applied from a fake service (strip placement, failures,
Render All, re-attach after reload).

Each test runs its Blender part in a fresh subprocess (``BLENDER_USER_RESOURCES`` points at a temporary
profile before ``import bpy``), so no bpy state leaks between tests and the user's own profile is never
touched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import wave
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

pytestmark = pytest.mark.blender

PKG = "bl_ext.user_default.headsync"

PRELUDE = r'''
import json, os, sys, time
import bpy
from headsync.core.package_data import sample_dir
PKG = "bl_ext.user_default.headsync"
ARGS = json.loads(sys.argv[1])
RESULT = {}

def install(zip_path):
    r = bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default", enable_on_install=True)
    assert r == {'FINISHED'}, r
    assert PKG in bpy.context.preferences.addons, list(bpy.context.preferences.addons.keys())

def mod(name):
    return sys.modules[PKG + "." + name]

def prefs():
    return bpy.context.preferences.addons[PKG].preferences

def done():
    print("RESULT " + json.dumps(RESULT), flush=True)
'''


def bpy_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("bpy") is not None


needs_bpy = pytest.mark.skipif(not bpy_available(), reason="the bpy wheel is not installed (pip install bpy==5.0.1)")


def run_blender(tmp_path: Path, body: str, args: dict, profile: Path | None = None, timeout: int = 300,
                extra: str = "") -> dict:
    """Run ``body`` (after PRELUDE) in a fresh Python with bpy; returns its RESULT dict."""
    profile = profile or (tmp_path / "profile")
    profile.mkdir(exist_ok=True)
    script = tmp_path / f"script_{abs(hash(body)) % 10**8}.py"
    script.write_text(PRELUDE + extra + textwrap.dedent(body) + "\ndone()\n")
    env = dict(os.environ, BLENDER_USER_RESOURCES=str(profile), PYTHONPATH=str(REPO / "tests"))
    p = subprocess.run([sys.executable, str(script), json.dumps(args)], capture_output=True, text=True,
                       timeout=timeout, env=env, cwd=str(tmp_path))
    out = p.stdout + p.stderr
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        raise AssertionError(f"Blender script failed (exit {p.returncode}):\n{out[-6000:]}")
    return json.loads(lines[-1][len("RESULT "):])


@pytest.fixture(scope="module")
def addon_zip(tmp_path_factory) -> Path:
    import build_addon

    out = build_addon.build(tmp_path_factory.mktemp("dist"))
    assert out is not None and out.exists()
    return out


def make_workspace(root: Path, n_frames: int = 300, fps: float = 25.0, seconds: float = 400.0) -> dict:
    """A workspace with one prepared-looking subject (expression + pose) and a long WAV of ``seconds``."""
    sd = root / "ws" / "subjects" / "astro"
    sd.mkdir(parents=True)
    rng = np.random.default_rng(0)
    np.save(sd / "expression.npy", rng.random((n_frames, 7)).astype(np.float32))
    eul = (rng.random((n_frames, 3)) - 0.5) * 0.2
    from blender_addon.shots import euler_xyz_to_matrix

    np.savez(sd / "pose.npz", R=np.stack([euler_xyz_to_matrix(e) for e in eul]), T=rng.random((n_frames, 3)))
    (sd / "subject.json").write_text(json.dumps({"schema": "headsync.subject/1", "source": {"fps": fps}}))
    wav = root / "dialogue.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\0\0" * int(8000 * seconds))
    return {"ws": str(root / "ws"), "wav": str(wav), "video": str(sample_dir() / "video.mp4")}


@needs_bpy
def test_build_install_enable(addon_zip, tmp_path):
    import zipfile

    with zipfile.ZipFile(addon_zip) as z:
        names = set(z.namelist())
    assert {"blender_manifest.toml", "__init__.py", "client.py", "curves_io.py", "shots.py", "props.py",
            "operators.py", "panels.py", "prefs.py", "polling.py", "compat.py"} <= names
    assert addon_zip.name == "headsync-0.1.0.zip"
    res = run_blender(tmp_path, r'''
        install(ARGS["zip"])
        RESULT["extensions_dir"] = bpy.utils.user_resource('EXTENSIONS')
        RESULT["ops"] = sorted(n for n in dir(bpy.ops.headsync))
        RESULT["panels"] = sorted(n for n in dir(bpy.types) if n.startswith("HEADSYNC_PT_"))
        RESULT["has_scene_props"] = hasattr(bpy.context.scene, "headsync")
        p = prefs()
        RESULT["prefs"] = [p.bl_rna.properties[k].identifier for k in ("backend_python", "service_url", "workspace", "auto_start")]
        # no service: a clear status, no traceback
        p.workspace = ARGS["tmp"]
        RESULT["check"] = sorted(bpy.ops.headsync.check_connection())
        RESULT["status"] = mod("prefs").STATUS["message"]
        # the 4.2 branches of compat, against stand-ins with the 4.2 API (sequences, action.fcurves)
        compat = mod("compat")
        class Coll(dict):
            def new_sound(self, name, filepath, channel, frame_start):
                self[name] = ("sound", filepath, channel, frame_start); return self[name]
            def find(self, path, index=0):
                return self.get((path, index))
            def new(self, path, index=0, action_group=""):
                self[(path, index)] = ("fcurve", path, index, action_group); return self[(path, index)]
        class NS:
            def __init__(self, **k): self.__dict__.update(k)
        seqs = Coll()
        scene42 = NS(sequence_editor=NS(sequences=seqs, sequences_all=seqs, active_strip=None))
        compat.new_sound(scene42, "dub", "/a.wav", 2, 5)
        action = NS(fcurves=Coll())
        obj42 = NS(animation_data=NS(action=action), name="HS_x")
        real = compat.has_slotted_actions
        compat.has_slotted_actions = lambda: False
        try:
            fc = compat.ensure_fcurve(obj42, '["eyeBlinkLeft"]', 0, "HeadSync Expression")
            RESULT["compat42"] = [list(compat.all_strips(scene42)), fc, compat.find_fcurve(obj42, '["eyeBlinkLeft"]') is fc]
        finally:
            compat.has_slotted_actions = real
        bpy.ops.preferences.addon_disable(module=PKG)
        RESULT["disabled"] = PKG not in bpy.context.preferences.addons and not hasattr(bpy.context.scene, "headsync")
    ''', {"zip": str(addon_zip), "tmp": str(tmp_path)})
    assert res["extensions_dir"].startswith(str(tmp_path / "profile"))
    for op in ("import_subject", "train_subject", "new_shot", "render_shot", "render_all", "cancel_job",
               "open_log", "refresh", "start_service", "check_connection"):
        assert op in res["ops"]
    assert "HEADSYNC_PT_main" in res["panels"] and res["has_scene_props"]
    assert res["check"] == ["CANCELLED"] and "no HeadSync service is running" in res["status"]
    assert res["disabled"]
    assert res["compat42"] == [["dub"], ["fcurve", '["eyeBlinkLeft"]', 0, "HeadSync Expression"], True]


@needs_bpy
def test_bulk_keying_edit_sample_save_reload(addon_zip, tmp_path):
    w = make_workspace(tmp_path)
    res = run_blender(tmp_path, r'''
        install(ARGS["zip"])
        prefs().workspace = ARGS["ws"]
        scene = bpy.context.scene
        scene.render.fps, scene.render.fps_base = 25, 1.0
        ops = mod("operators"); compat = mod("compat"); cio = mod("curves_io")
        strip = compat.new_sound(scene, "dub", ARGS["wav"], 3, 1)
        st = scene.headsync
        s = st.subjects.add(); s.name = "astro"; s.stage = "trained"
        strip.select = True
        t = time.perf_counter()
        r = bpy.ops.headsync.new_shot(subject="astro", strip="dub")
        RESULT["new_shot_s"] = time.perf_counter() - t
        shot = st.shots[0]
        obj = shot.controls
        RESULT["shot"] = [shot.name, shot.frame_start, shot.frame_count, obj.name]
        RESULT["props"] = sorted(k for k in obj.keys() if not k.startswith("_"))
        RESULT["n_keys"] = {fc.data_path + str(fc.array_index): len(fc.keyframe_points) for fc in compat.fcurves(obj)}
        # the acceptance figure: 10,000 frames x 7 curves keyed in bulk
        import numpy as np
        rows = np.random.default_rng(5).random((10000, 7)).tolist()
        times = []
        for _ in range(3):
            t = time.perf_counter(); ops.key_shot(obj, shot.frame_start, rows); times.append(time.perf_counter() - t)
        RESULT["bulk_key_s"] = min(times)
        # edit eyeBlinkLeft on ten frames, as a user would in the Graph Editor
        fc = compat.find_fcurve(obj, '["eyeBlinkLeft"]')
        edited = list(range(100, 110))
        for f in edited:
            k = fc.keyframe_points[f - shot.frame_start]
            k.co.y = 1.0
            k.handle_left.y = k.handle_right.y = 1.0
        fc.update()
        t = time.perf_counter()
        doc = ops.sample_shot(shot)
        RESULT["sample_s"] = time.perf_counter() - t
        path = os.path.join(ARGS["ws"], "check.curves.json")
        cio.write(path, doc)
        back = cio.read(path)
        vals = np.asarray(back["expression"]["values"])
        want = np.clip(np.asarray(rows), 0, 1); want[[f - shot.frame_start for f in edited], 5] = 1.0
        RESULT["sample_err"] = float(np.abs(vals - want).max())
        RESULT["has_pose"] = "head_pose" in back
        RESULT["curves_meta"] = [back["fps"], back["frame_start"], back["frame_count"], back["source"]]
        blend = os.path.join(ARGS["tmp"], "shot.blend")
        bpy.ops.wm.save_userpref()
        bpy.ops.wm.save_as_mainfile(filepath=blend)
        RESULT["blend"] = blend
        RESULT["checksum"] = float(vals.sum())
    ''', {"zip": str(addon_zip), "tmp": str(tmp_path), **w})
    print(f"\nbulk keying 10,000 frames x 7 curves: {res['bulk_key_s'] * 1000:.1f} ms; whole New Shot "
          f"(7 expression + 6 pose curves, 10,000 frames): {res['new_shot_s'] * 1000:.0f} ms; sampling: "
          f"{res['sample_s'] * 1000:.0f} ms")
    assert res["shot"] == ["dub", 1, 10000, "HS_dub"]
    assert res["props"] == sorted(["browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft",
                                   "browOuterUpRight", "eyeBlinkLeft", "eyeBlinkRight"])
    assert res["n_keys"]['["eyeBlinkLeft"]0'] == 10000 and res["n_keys"]["rotation_euler2"] == 10000
    assert len(res["n_keys"]) == 13
    assert res["bulk_key_s"] < 1.0
    assert res["sample_err"] < 1e-6
    assert res["has_pose"] and res["curves_meta"] == [25.0, 1, 10000, "edited"]

    # a fresh Blender with the same profile (the extension enabled from the saved preferences)
    back = run_blender(tmp_path, r'''
        # bpy as a module starts with factory settings: load the saved preferences as Blender does at startup
        if PKG not in bpy.context.preferences.addons:
            bpy.ops.wm.read_userpref()
        assert PKG in bpy.context.preferences.addons, "the extension is not enabled after a restart"
        bpy.ops.wm.open_mainfile(filepath=ARGS["blend"])
        scene = bpy.context.scene
        shot = scene.headsync.shots[0]
        compat = mod("compat"); ops = mod("operators")
        fc = compat.find_fcurve(shot.controls, '["eyeBlinkLeft"]')
        RESULT["shot"] = [shot.name, shot.subject, shot.frame_start, shot.frame_count, shot.controls.name, shot.state]
        RESULT["edited"] = [fc.evaluate(f) for f in range(100, 110)]
        import numpy as np
        RESULT["checksum"] = float(np.asarray(ops.sample_shot(shot)["expression"]["values"]).sum())
        RESULT["subjects"] = [s.name for s in scene.headsync.subjects]
    ''', {"blend": res["blend"]})
    assert back["shot"] == ["dub", "astro", 1, 10000, "HS_dub", "keyed"]
    assert back["edited"] == [1.0] * 10
    assert abs(back["checksum"] - res["checksum"]) < 1e-3
    assert back["subjects"] == ["astro"]


FAKE_SERVICE = r'''
import threading, json as _json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Fake:
    """A stand-in HeadSync service: accepts jobs; the test sets their records."""
    def __init__(self, ws):
        self.jobs, self.submitted, self.n = {}, [], 0
        outer = self
        class H(BaseHTTPRequestHandler):
            def log_message(self, *a): pass
            def _send(self, code, obj):
                data = obj.encode() if isinstance(obj, str) else _json.dumps(obj).encode()
                self.send_response(code); self.send_header("Content-Length", str(len(data))); self.end_headers()
                self.wfile.write(data)
            def do_GET(self):
                if self.headers.get("Authorization") != "Bearer tok":
                    return self._send(401, {"message": "bad token"})
                p = self.path.split("?")[0]
                if p == "/api/v1/health":
                    return self._send(200, {"version": "0.1.0", "device": "cpu", "gpu": None})
                if p.startswith("/api/v1/jobs/") and p.endswith("/log"):
                    return self._send(200, "the log of " + p.split("/")[4] + "\n")
                jid = p.rsplit("/", 1)[-1]
                if jid in outer.jobs:
                    return self._send(200, outer.jobs[jid])
                return self._send(404, {"message": f"no job {jid!r}", "hint": "list the jobs"})
            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = _json.loads(self.rfile.read(n) or b"{}")
                if self.path.endswith("/cancel"):
                    jid = self.path.split("/")[4]
                    outer.jobs[jid]["state"] = "cancelled"
                    return self._send(200, outer.jobs[jid])
                if body.get("subject") == "ghost":
                    return self._send(404, {"message": "unknown subject 'ghost'", "hint": "prepare it first"})
                outer.n += 1
                jid = f"job{outer.n}"
                outer.submitted.append(body)
                outer.jobs[jid] = {"id": jid, "kind": body["kind"], "subject": body["subject"], "state": "queued",
                                   "progress": {"fraction": 0.0, "stage": "", "message": "", "eta_s": None},
                                   "error": None, "artifacts": {}}
                return self._send(201, {"id": jid, "state": "queued"})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        os.makedirs(ws, exist_ok=True)
        with open(os.path.join(ws, "server.json"), "w") as f:
            _json.dump({"url": f"http://127.0.0.1:{self.httpd.server_address[1]}", "token": "tok", "pid": os.getpid()}, f)

def write_frames(folder, n):
    import numpy as np
    os.makedirs(folder, exist_ok=True)
    img = bpy.data.images.new("tmp_frame", 8, 8)
    img.pixels.foreach_set(np.ones(8 * 8 * 4, np.float32))
    for i in range(n):
        img.filepath_raw = os.path.join(folder, f"{i:06d}.png"); img.file_format = 'PNG'; img.save()
    bpy.data.images.remove(img)
'''


@needs_bpy
def test_jobs_render_placement_failures_and_reattach(addon_zip, tmp_path):
    w = make_workspace(tmp_path, seconds=4.0)
    res = run_blender(tmp_path, r'''
        install(ARGS["zip"])
        prefs().workspace = ARGS["ws"]
        fake = Fake(ARGS["ws"])
        scene = bpy.context.scene
        polling = mod("polling"); compat = mod("compat")
        st = scene.headsync
        # Import Subject: movie + sound strips, subject registered, prepare submitted
        r = bpy.ops.headsync.import_subject(filepath=ARGS["video"], name="astro", preset="preview", frame_start=1)
        RESULT["import"] = sorted(r)
        RESULT["strips"] = sorted((s.type, s.channel) for s in compat.all_strips(scene))
        RESULT["scene_fps"] = scene.render.fps / scene.render.fps_base
        RESULT["scene_res"] = [scene.render.resolution_x, scene.render.resolution_y, scene.frame_start, scene.frame_end]
        RESULT["prepare_body"] = fake.submitted[-1]
        subj = st.subjects["astro"]
        fake.jobs["job1"].update(state="running", progress={"fraction": 0.4, "stage": "landmarks", "message": "", "eta_s": 30})
        polling.poll_once()
        RESULT["preparing"] = [subj.stage, st.jobs["job1"].fraction, st.jobs["job1"].stage, st.jobs["job1"].eta]
        fake.jobs["job1"].update(state="succeeded")
        polling.poll_once()
        RESULT["prepared"] = subj.stage
        r = bpy.ops.headsync.train_subject(subject="astro", preset="preview", resume=True)
        RESULT["train_body"] = fake.submitted[-1]
        fake.jobs["job2"].update(state="succeeded"); polling.poll_once()
        RESULT["trained"] = subj.stage
        # two shots from two sound strips
        compat.new_sound(scene, "dubA", ARGS["wav"], 5, 1)
        compat.new_sound(scene, "dubB", ARGS["wav"], 5, 200)
        bpy.ops.headsync.new_shot(subject="astro", strip="dubA")
        bpy.ops.headsync.new_shot(subject="astro", strip="dubB")
        a, b = st.shots["dubA"], st.shots["dubB"]
        RESULT["counts"] = [a.frame_count, b.frame_count]
        r = bpy.ops.headsync.render_shot(shot="dubA")
        body = fake.submitted[-1]
        RESULT["render_body"] = body
        RESULT["curves_inside_ws"] = os.path.realpath(body["params"]["curves"]).startswith(os.path.realpath(ARGS["ws"]))
        jid = a.render_job
        out = os.path.join(ARGS["ws"], "subjects", "astro", "renders", jid)
        write_frames(os.path.join(out, "frames"), a.frame_count)
        fake.jobs[jid].update(state="succeeded", artifacts={"out": out, "frames": os.path.join(out, "frames"),
                              "frame_count": a.frame_count})
        polling.poll_once()
        strip = compat.get_strip(scene, a.result_strip)
        movie = compat.get_strip(scene, subj.movie_strip)
        RESULT["placed"] = [a.state, strip.type, strip.frame_final_start, strip.frame_final_duration,
                            strip.channel > movie.channel, len(strip.elements)]
        # render again: the strip is replaced, not duplicated
        bpy.ops.headsync.render_shot(shot="dubA")
        jid2 = a.render_job
        fake.jobs[jid2].update(state="succeeded", artifacts={"frames": os.path.join(out, "frames")})
        polling.poll_once()
        RESULT["replaced"] = [len([s for s in compat.all_strips(scene) if s.name.startswith("HS_dubA_render")]), a.state]
        # Render All: one shot's sound goes missing; the other is queued and then fails on the service
        b.audio = os.path.join(ARGS["tmp"], "moved_away.wav")
        r = bpy.ops.headsync.render_all()
        RESULT["render_all"] = sorted(r)
        RESULT["after_all"] = [a.state, b.state, b.message]
        fake.jobs[a.render_job].update(state="failed", error={"message": "CUDA out of memory", "hint": "use a smaller preset"})
        polling.poll_once()
        RESULT["batch"] = [a.state, a.message, a.hint, st.batch_report]
        # every panel draws with subjects, shots, running and failed jobs (a recording stand-in layout)
        class Rec:
            def __init__(self, log): self.log = log
            def __getattr__(self, name):
                def call(*a, **k):
                    self.log.append((name, k.get("text")))
                    return Rec(self.log)
                return call
            def __setattr__(self, k, v):
                object.__setattr__(self, k, v)
        j = st.jobs.add(); j.name = "jobX"; j.kind = "train"; j.subject = "astro"; j.state = "running"; j.fraction = 0.3
        subj.train_job = "jobX"
        drawn = {}
        panels = mod("panels")
        for cls in (panels.HEADSYNC_PT_main, panels.HEADSYNC_PT_subjects, panels.HEADSYNC_PT_shots,
                    panels.HEADSYNC_PT_jobs, panels.HEADSYNC_PT_graph_shot):
            log = []
            holder = type("P", (), {})(); holder.layout = Rec(log)
            cls.draw(holder, bpy.context)
            drawn[cls.__name__] = log
        log = []
        holder = type("P", (), {})(); holder.layout = Rec(log)
        type(prefs()).draw(holder, bpy.context)
        drawn["prefs"] = log
        RESULT["drawn"] = {k: [c[0] for c in v] for k, v in drawn.items()}
        RESULT["progress_texts"] = [c[1] for v in drawn.values() for c in v if c[0] == "progress"]
        st.jobs.remove(len(st.jobs) - 1); subj.train_job = ""
        # log and cancel
        bpy.ops.headsync.open_log(job_id=a.render_job)
        RESULT["log"] = bpy.data.texts[f"headsync-{a.render_job}.log"].as_string()
        # errors are messages, not tracebacks
        errs = {}
        def expect_error(name, fn):
            try:
                fn(); errs[name] = None
            except RuntimeError as e:
                errs[name] = str(e)
        expect_error("missing_video", lambda: bpy.ops.headsync.import_subject(filepath="/no/such/video.mp4"))
        expect_error("missing_subject", lambda: bpy.ops.headsync.new_shot(subject="nobody", strip="dubA"))
        expect_error("moved_sound", lambda: bpy.ops.headsync.render_shot(shot="dubB"))
        g = st.subjects.add(); g.name = "ghost"; g.stage = "prepared"
        expect_error("unknown_subject", lambda: bpy.ops.headsync.train_subject(subject="ghost"))
        RESULT["errors"] = errs
        # a job left running when the file is saved is picked up again after reopening
        b.audio = ARGS["wav"]
        bpy.ops.headsync.render_shot(shot="dubB")
        RESULT["pending"] = b.render_job
        fake.jobs[b.render_job].update(state="running")
        polling.poll_once()
        blend = os.path.join(ARGS["tmp"], "jobs.blend")
        bpy.ops.wm.save_as_mainfile(filepath=blend)
        out_b = os.path.join(ARGS["ws"], "subjects", "astro", "renders", b.render_job)
        write_frames(os.path.join(out_b, "frames"), b.frame_count)
        fake.jobs[b.render_job].update(state="succeeded", artifacts={"frames": os.path.join(out_b, "frames")})
        bpy.ops.wm.open_mainfile(filepath=blend)
        scene = bpy.context.scene
        b = scene.headsync.shots["dubB"]
        RESULT["reopened_state"] = b.state
        RESULT["timer_registered"] = bpy.app.timers.is_registered(polling._timer)
        polling._load_post()   # what the load_post handler runs (timers do not fire without an event loop)
        RESULT["timer_after_load_post"] = bpy.app.timers.is_registered(polling._timer)
        polling.poll_once()
        RESULT["reattached"] = [b.state, compat.get_strip(scene, b.result_strip) is not None]
    ''', {"zip": str(addon_zip), "tmp": str(tmp_path), **w}, extra=FAKE_SERVICE)
    assert res["import"] == ["FINISHED"]
    assert res["strips"] == [["MOVIE", 2], ["SOUND", 1]]
    assert res["scene_fps"] == 25.0 and res["scene_res"] == [512, 512, 1, 654]
    assert res["prepare_body"] == {"kind": "prepare", "subject": "astro",
                                   "params": {"video": res["prepare_body"]["params"]["video"], "preset": "preview"}}
    assert os.path.isabs(res["prepare_body"]["params"]["video"])
    assert res["preparing"] == ["preparing", pytest.approx(0.4), "landmarks", "30s"]
    assert res["prepared"] == "prepared"
    assert res["train_body"] == {"kind": "train", "subject": "astro",
                                 "params": {"preset": "preview", "run": "default", "resume": True}}
    assert res["trained"] == "trained"
    assert res["counts"] == [100, 100]
    assert res["render_body"]["kind"] == "render" and res["curves_inside_ws"]
    assert set(res["render_body"]["params"]) == {"audio", "curves", "run"}
    assert res["placed"] == ["rendered", "IMAGE", 1, 100, True, 100]
    assert res["replaced"] == [1, "rendered"]
    assert res["render_all"] == ["FINISHED"]
    assert res["after_all"][:2] == ["queued", "failed"] and "missing" in res["after_all"][2]
    assert res["batch"][:3] == ["failed", "CUDA out of memory", "use a smaller preset"]
    assert "0 rendered" in res["batch"][3] and "2 failed" in res["batch"][3]
    assert res["log"].startswith("the log of")
    assert "progress" in res["drawn"]["HEADSYNC_PT_subjects"] and "template_list" in res["drawn"]["HEADSYNC_PT_shots"]
    assert "progress" in res["drawn"]["HEADSYNC_PT_jobs"] and "prop" in res["drawn"]["prefs"]
    assert any("30%" in (t or "") for t in res["progress_texts"])
    errs = res["errors"]
    assert "no such video" in errs["missing_video"]
    assert "not in this scene" in errs["missing_subject"]
    assert "missing" in errs["moved_sound"]
    assert "unknown subject 'ghost'" in errs["unknown_subject"] and "prepare it first" in errs["unknown_subject"]
    for e in errs.values():
        assert "Traceback" not in e
    assert res["reopened_state"] == "rendering"
    assert res["timer_after_load_post"]
    assert res["reattached"] == ["rendered", True]


@needs_bpy
def test_start_service_from_blender(addon_zip, tmp_path):
    """Start Service runs the real ``headsync serve`` with the backend Python and connects to it."""
    if not (REPO / "backend" / "headsync" / "service" / "server.py").is_file():
        pytest.skip("backend/headsync/service/server.py is missing (the service is not written yet)")
    ws = tmp_path / "ws"
    try:
        res = run_blender(tmp_path, r'''
            install(ARGS["zip"])
            p = prefs(); p.workspace = ARGS["ws"]; p.backend_python = sys.executable
            polling = mod("polling"); status = mod("prefs").STATUS
            r = bpy.ops.headsync.start_service()
            RESULT["start"] = sorted(r)
            t0 = time.monotonic()
            # timers do not fire without Blender's event loop: run the waiting timer by hand, as it would run
            while polling._wait_for_service() is not None and time.monotonic() - t0 < 180:
                time.sleep(0.5)
            RESULT["status"] = dict(status)
            RESULT["again"] = sorted(bpy.ops.headsync.start_service())  # already running: no second service
            RESULT["subjects"] = mod("prefs").make_client(bpy.context).subjects()
        ''', {"zip": str(addon_zip), "ws": str(ws)})
    finally:
        try:
            pid = json.loads((ws / "server.json").read_text())["pid"]
            os.kill(pid, 15)
        except (OSError, ValueError, KeyError):
            pass
    assert res["start"] == ["FINISHED"] and res["again"] == ["FINISHED"]
    assert res["status"]["connected"], res["status"]
    assert res["status"]["device"] in ("cpu", "cuda")
    assert res["subjects"] == []
    assert (ws / "blender_service.log").exists()
