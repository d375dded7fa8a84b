"""The ``gaussian`` renderer through the one trainer, the CLI and render/eval on the synthetic subject at a
tiny size: stage switch and densification from its callbacks, a resized checkpoint resumed and rendered,
a render longer than the source looping the plate, a checkpoint of the other kind refused."""

import contextlib
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from headsync import cli, tasks
from headsync.core import media
from headsync.core.errors import UserError
from headsync.core.progress import silent
from headsync.renderers.common.losses import mse, psnr_from_mse
from headsync.renderers.gaussian.model import STAGE_DEFORM
from headsync.renderers.registry import renderer_names
from headsync.subject.data import load_subject_data
from headsync.subject.folder import Subject
from headsync.training.checkpoints import load_renderer
from synthetic_head import make_subject, write_preset

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SIZE = 32
GAUSSIAN = {"gaussian": {"fill_points": 600, "hash": {"levels": 6, "finest_resolution": 64, "log2_table_size": 12},
                         "densify": {"refine_start_iter": 4, "refine_every": 6, "refine_stop_iter": 30,
                                     "grow_grad2d": 1e-4, "max_gaussians": 3000}}}


def run_cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(list(argv))
    return code, out.getvalue()


def speech(path: Path, seconds: float) -> Path:
    t = np.arange(int(seconds * media.AUDIO_RATE)) / media.AUDIO_RATE
    media.write_wav(path, (0.5 * np.sin(2 * np.pi * 3 * t) * np.sign(np.sin(2 * np.pi * 180 * t))).astype(np.float32))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gs")
    root = make_subject(tmp / "s", n_frames=20, size=SIZE)
    preset = write_preset(tmp / "p.toml", renderer=GAUSSIAN, coarse_iters=20, fine_iters=20, checkpoint_every=10,
                          log_every=10, heldout_eval_frames=2, threads=1)
    code, _ = run_cli("train", "--subject", str(root), "--preset", str(preset), "--renderer", "gaussian")
    assert code == 0
    return root, preset


def plate_psnr(root: Path) -> float:
    """PSNR of the background plate alone against the held-out frames: what a renderer must beat."""
    from headsync.training.frames import open_frames

    data = load_subject_data(Subject(root), SIZE, "mel")
    store = open_frames(data.subject, data.n_frames, data.size, torch.device("cpu"))
    errs = [float(mse(bg, target)) for target, bg, _ in (store.image(int(f)) for f in data.holdout)]
    return psnr_from_mse(float(np.mean(errs)))


def test_cli_trains_the_gaussian_renderer_in_two_stages_with_densification(trained):
    root, _ = trained
    assert "gaussian" in renderer_names()
    run = root / "models" / "default"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["renderer"] == "gaussian" and metrics["iterations"] == 40
    # Densification ran from its callback after the backward passes and changed the count.
    assert metrics["cloned"] + metrics["split"] > 0
    assert metrics["gaussians"] == 478 + 600 + metrics["cloned"] + metrics["split"] - metrics["pruned"]
    renderer, train_cfg = load_renderer(run / "checkpoint.pt")  # rebuilt at the densified size
    assert renderer.kind == "gaussian" and renderer.n_gaussians == metrics["gaussians"]
    assert int(renderer.stage) == STAGE_DEFORM  # the fine stage switched to deformation
    assert metrics["heldout_psnr"] > plate_psnr(root) + 1.0, metrics


def test_resume_loads_the_resized_state_before_the_optimizer(trained, tmp_path):
    root, preset = trained
    run = root / "models" / "default"
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    state["iteration"] = 34  # as if stopped there: the densified tensors and their Adam moments resume
    torch.save(state, run / "checkpoint.pt")
    metrics = tasks.run("train", {"subject": str(root), "preset": str(preset), "renderer": "gaussian",
                                  "resume": True}, silent())["metrics"]
    assert metrics["resumed_from"] == 34 and metrics["iterations"] == 40 and np.isfinite(metrics["loss"])


def test_render_loops_the_plate_and_eval_reads_the_gaussian_checkpoint(trained, tmp_path):
    root, _ = trained
    art = tasks.run("render", {"subject": str(root), "audio": str(speech(tmp_path / "a.wav", 1.2)),
                               "out": str(tmp_path / "r")}, silent())
    frames = sorted((tmp_path / "r" / "frames").glob("*.png"))
    assert art["frame_count"] == 30 and len(frames) == 30  # the subject has 20
    # Past the end of the clip the plate runs backwards, as with the NeRF: frame 21 shows source frame 17.
    a, b = cv2.imread(str(frames[21])), cv2.imread(str(frames[17]))
    assert np.abs(a.astype(int) - b.astype(int))[:, :4].mean() < 2  # the static left border matches
    code, _ = run_cli("eval", "--subject", str(root), "--json")
    assert code == 0
    ev = json.loads((root / "models" / "default" / "metrics.json").read_text())["eval"]
    assert ev["heldout_frames"] == 2 and ev["psnr"] > plate_psnr(root)


def test_checkpoint_of_the_other_kind_is_refused(trained):
    root, preset = trained
    with pytest.raises(UserError, match="made by the 'gaussian' renderer") as e:
        tasks.run("train", {"subject": str(root), "preset": str(preset), "renderer": "nerf", "resume": True},
                  silent())
    assert "--renderer gaussian" in e.value.hint


def test_preset_chooses_the_renderer(tmp_path):
    from headsync.core.config import load_preset
    from headsync.renderers.registry import preset_renderer

    assert preset_renderer(load_preset("gaussian_cpu").tables) == "gaussian"
    assert preset_renderer({"renderer": {"nerf": {}}}) == "nerf"
    with pytest.raises(UserError, match="renderer name"):
        preset_renderer({"renderer": {"default": 3}})
