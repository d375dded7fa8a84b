"""Installed like a package: a wheel built from this checkout, installed into a fresh virtual environment
outside it, runs ``headsync demo`` end to end, finding its presets and the sample as package data.

The fresh environment gets the wheel through pip; its dependencies (torch, mediapipe, ...) are made
importable with a ``.pth`` line naming this environment's site-packages, so nothing is downloaded. That
line does not run this environment's own ``.pth`` files, so the checkout's editable install stays out.
The demo runs with a cut-down preset (``--preset PATH``: 10 fps, 128 px crops, a few dozen steps) because
the point is that the installed copy finds its data, not the quality the ``preview`` preset reaches.
"""

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

CUT_PRESET = """
[prepare]
fps = 10.0
resolution = 128

[train]
resolution = 32
coarse_iters = 30
fine_iters = 6
rays = 256
patch = 16
lips_patch = 8
heldout_eval_frames = 1
threads = 1
compile = false

[renderer.nerf.hash]
levels = 6
base_resolution = 8
finest_resolution = 64
log2_table_size = 12

[renderer.nerf.field]
hidden = 16
color_hidden = 16
geo_feat_dim = 8

[renderer.nerf.march]
samples = 8
probes = 32
grid_resolution = 16

[ave]
crop_height = 16
crop_width = 32
width = 8
embed_dim = 16
feature_dim = 8
sync_steps = 12
sync_batch = 8
ave_steps = 12
ave_batch = 8
"""


def _run(cmd, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_wheel_installed_in_a_fresh_venv_runs_the_demo(tmp_path):
    # Build from a copy: setuptools writes build/ and an .egg-info into the tree it builds.
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".venv", ".git", "out", "build", "dist", "*.egg-info",
                                                           "__pycache__", ".pytest_cache"))
    wheels = tmp_path / "wheels"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # only what is installed counts
    _run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-w", str(wheels),
          "-q"], cwd=tmp_path, env=env)
    (wheel,) = wheels.glob("headsync-*.whl")
    venv = tmp_path / "venv"
    _run([sys._base_executable, "-m", "venv", str(venv)])
    py = venv / "bin" / "python"
    _run([str(py), "-m", "pip", "install", "--no-index", "--no-deps", "-q", str(wheel)], env=env)
    purelib = _run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], env=env).stdout.strip()
    (Path(purelib) / "headsync_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    preset = tmp_path / "cut.toml"
    preset.write_text(CUT_PRESET)
    work = tmp_path / "elsewhere"  # not the checkout: nothing may be found relative to the working folder
    work.mkdir()
    where = _run([str(py), "-c", "import headsync.core.package_data as p; print(p.__file__, p.sample_dir())"],
                 cwd=work, env=env).stdout.split()
    assert all(w.startswith(purelib) for w in where), where  # the installed copy, not the checkout
    demo = _run([str(venv / "bin" / "headsync"), "demo", "--out", str(work / "demo"), "--preset", str(preset),
                 "--json-progress"], cwd=work, env=env)
    done = json.loads(demo.stdout.strip().splitlines()[-1])
    assert done["event"] == "done", done
    render = Path(done["result"]["render"]["out"])
    assert render.is_relative_to(work / "demo") and (render / "render.mp4").stat().st_size > 0
    assert len(list((render / "frames").glob("*.png"))) == done["result"]["render"]["frame_count"] > 0
    # The named presets are package data too: the installed copy lists them.
    names = _run([str(py), "-c", "from headsync.core.config import preset_names; print(preset_names())"],
                 cwd=work, env=env).stdout
    assert "preview" in names and "standard" in names
