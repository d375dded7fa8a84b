"""A second renderer registered inside the test suite (``colour_renderer``) trains, renders and evaluates
through the same trainer, CLI and service as the NeRF, with no change outside its own module; and a
checkpoint refuses to load into the wrong kind."""

import contextlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import colour_renderer  # noqa: F401  (registers "colour" in this process)
from headsync import cli, tasks
from headsync.core import media
from headsync.core.errors import UserError
from headsync.core.progress import silent
from headsync.renderers.registry import PLUGINS_ENV, renderer_names
from headsync.training.checkpoints import load_renderer
from synthetic_head import make_subject, write_preset

TESTS = Path(__file__).resolve().parent
COLOUR = {"colour": {"grid": 8, "hidden": 16}}


def speech(path: Path, seconds: float) -> Path:
    t = np.arange(int(seconds * media.AUDIO_RATE)) / media.AUDIO_RATE
    media.write_wav(path, (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32))
    return path


def run_cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            code = cli.main(list(argv))
        except SystemExit as e:  # --help
            code = e.code
    return code, out.getvalue()


def test_cli_trains_renders_and_evaluates_a_registered_second_renderer(tmp_path):
    assert renderer_names()[0] == "nerf" and "colour" in renderer_names()
    code, text = run_cli("train", "--help")
    assert code == 0 and "colour" in text and "nerf" in text  # --renderer lists what is registered
    root = make_subject(tmp_path / "s", n_frames=20, size=32)
    preset = write_preset(tmp_path / "p.toml", renderer=COLOUR, coarse_iters=40, fine_iters=10, rays=64,
                          checkpoint_every=25)
    code, _ = run_cli("train", "--subject", str(root), "--preset", str(preset), "--renderer", "colour")
    assert code == 0
    run = root / "models" / "default"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["renderer"] == "colour" and metrics["iterations"] == 50
    assert metrics["callback_steps"] == 50  # the renderer's callback ran at every step
    # It learned something: better than the plate alone on the held-out frames.
    renderer, train_cfg = load_renderer(run / "checkpoint.pt")
    assert renderer.kind == "colour" and renderer.meta.coefficient_names[0] == "browDownLeft"
    assert train_cfg["resolution"] == 32 and json.loads((run / "config.json").read_text())["renderer"] == "colour"
    assert metrics["heldout_psnr"] > 10

    code, _ = run_cli("render", "--subject", str(root), "--audio", str(speech(tmp_path / "a.wav", 0.6)),
                      "--no-portrait", "--out", str(tmp_path / "r"))
    assert code == 0 and len(list((tmp_path / "r" / "frames").glob("*.png"))) == 15
    code, text = run_cli("eval", "--subject", str(root), "--json")
    assert code == 0
    ev = json.loads((run / "metrics.json").read_text())["eval"]
    assert ev["heldout_frames"] == 2 and np.isfinite(ev["psnr"])

    # The checkpoint refuses to resume as another kind, with what to do.
    with pytest.raises(UserError, match="made by the 'colour' renderer") as e:
        tasks.run("train", {"subject": str(root), "preset": str(preset), "resume": True}, silent())
    assert "--renderer colour" in e.value.hint
    # State that changes size on load: the renderer's own hook decides (here the default, strict).
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    state["model"]["logits"] = torch.zeros(1, 1, 4, 4)
    with pytest.raises(RuntimeError):
        renderer.load_renderer_state(state["model"])


def test_service_trains_and_renders_a_plugin_renderer(tmp_path):
    from service_harness import ServiceProc

    ws = tmp_path / "ws"
    root = make_subject(ws / "subjects" / "s", n_frames=16, size=24)
    preset = write_preset(tmp_path / "p.toml", renderer=COLOUR, resolution=24, coarse_iters=20, fine_iters=0,
                          checkpoint_every=10, heldout_eval_frames=1)
    path = [str(TESTS.parent / "backend"), str(TESTS), os.environ.get("PYTHONPATH", "")]
    env = {PLUGINS_ENV: "colour_renderer", "PYTHONPATH": os.pathsep.join(p for p in path if p)}
    svc = ServiceProc(ws, test_tasks=False, extra_env=env)
    try:
        job = svc.submit("train", "s", preset=str(preset), renderer="colour")
        j = svc.wait(job, timeout=120)
        assert j["state"] == "succeeded", (j, svc.log(job))
        assert torch.load(root / "models/default/checkpoint.pt", weights_only=False)["renderer"] == "colour"
        job = svc.submit("render", "s", audio=str(speech(tmp_path / "a.wav", 0.4)), portrait=False)
        j = svc.wait(job, timeout=120)
        assert j["state"] == "succeeded", (j, svc.log(job))
        assert len(list(Path(j["artifacts"]["frames"]).glob("*.png"))) == 10
    finally:
        svc.stop()


def test_unknown_renderer_and_missing_plugin_are_user_errors(monkeypatch):
    from headsync.renderers import registry

    with pytest.raises(UserError, match="unknown renderer 'ghost'") as e:
        registry.renderer_class("ghost")
    assert "nerf" in e.value.hint and PLUGINS_ENV in e.value.hint
    monkeypatch.setattr(registry, "_loaded", False)
    monkeypatch.setenv(PLUGINS_ENV, "colour_renderer, no_such_renderer_plugin")
    with pytest.raises(UserError, match="no_such_renderer_plugin") as e:
        registry.renderer_names()
    assert PLUGINS_ENV in e.value.hint
