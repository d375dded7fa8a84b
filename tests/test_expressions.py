"""Expressions (issue 14): VQ-VAE (Eq. 25-27), blink model, default generator, EmoTalk loading, Live Link
Face import, the express job and render --expressions, on a small synthetic subject (fast) and on the
bundled sample (slow)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from headsync import cli, tasks
from headsync.core import media
from headsync.prepare.audio_features import mel_features
from headsync.curves import Curves, read_curves, write_curves
from headsync.core.errors import UserError
from headsync.expressions import coefficients, emotalk, express, livelink, vqvae
from headsync.expressions.blinks import BlinkModel, blink_statistics
from headsync.expressions.coefficients import Range, outside_fraction
from headsync.render.dub import load_curves
from headsync.subject.folder import CORE_EXPRESSIONS, Subject
from headsync.core.atomic import save_npy_atomic, save_npz_atomic, write_json_atomic

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FPS = 25.0
TINY = """
[split]
holdout_fraction = 0.1
[expressions.vqvae]
steps = 400
lr = 4e-3
window = 16
hop = 8
codes = 64
d_model = 32
[expressions.generator]
steps = 100
hidden = 16
window = 32
"""


# ---- a small synthetic subject ----------------------------------------------------------------------------
def blink_track(n: int, fps: float, rng: np.random.Generator, every=(2.0, 4.0), length=5) -> np.ndarray:
    eyes = np.zeros((n, 2), np.float32)
    t = rng.uniform(0.5, 1.5)
    shape = np.sin(np.linspace(0, np.pi, length + 2)[1:-1])
    while int(t * fps) + length < n:
        s = int(t * fps)
        eyes[s:s + length] = shape[:, None]
        t += rng.uniform(*every)
    return eyes


def make_expr_subject(root, n=400, seed=0) -> Subject:
    """subject.json, audio.wav (bursts of noise), mel.npy, expression.npy (brows follow loudness, blinks
    every 2-4 s), blendshapes.npz (7 core, geometry method) and a still pose.npz."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    env = np.clip(np.convolve(rng.random(n) > 0.7, np.ones(6) / 6, mode="same"), 0, 1)
    audio = np.repeat(env, int(media.AUDIO_RATE / FPS)) * rng.normal(0, 0.3, n * int(media.AUDIO_RATE / FPS))
    media.write_wav(root / "audio.wav", audio.astype(np.float32))
    (root / "preset.toml").write_text(TINY)
    write_json_atomic(root / "subject.json", {"schema": "headsync.subject/1", "preset": str(root / "preset.toml"),
                                              "source": {"fps": FPS, "frame_count": n}, "stages": {}})
    mel = mel_features(audio.astype(np.float32), FPS, n)
    save_npy_atomic(root / "audio_features/mel.npy", mel)
    core = np.zeros((n, 7), np.float32)
    core[:, 2] = 0.6 * env + 0.05 * rng.random(n)   # browInnerUp with the loudness
    core[:, 3] = core[:, 4] = 0.4 * env
    core[:, :2] = 0.1 * rng.random((n, 2))
    core[:, 5:] = blink_track(n, FPS, rng)
    core = np.clip(core, 0, 1)
    save_npy_atomic(root / "expression.npy", core)
    save_npz_atomic(root / "blendshapes.npz", names=np.array(CORE_EXPRESSIONS), values=core,
                    method=np.array("landmark_geometry"), face_found=np.ones(n, bool))
    save_npz_atomic(root / "pose.npz", R=np.repeat(np.eye(3)[None], n, 0), T=np.zeros((n, 3)))
    return Subject(root)


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    s = make_expr_subject(tmp_path_factory.mktemp("expr") / "s")
    torch.set_num_threads(1)
    express.load_models(s)  # trained once for the module
    return s


def livelink_csv(path, n=90, rate=60, values=None, start="14:03:59:50"):
    """A take in Live Link Face's layout: Timecode, BlendShapeCount, the 52 (PascalCase), 9 rotations."""
    names = [x[0].upper() + x[1:] for x in livelink.ARKIT_NAMES] + list(livelink.ROTATION_NAMES)
    h, m, s, f = (int(x) for x in start.split(":"))
    lines = [",".join(["Timecode", "BlendShapeCount"] + names)]
    rng = np.random.default_rng(1)
    for i in range(n):
        frame = f + i
        sec = s + frame // rate
        tc = f"{h:02d}:{m + sec // 60:02d}:{sec % 60:02d}:{frame % rate:02d}.{i % 10:03d}"  # sub-frame
        v = values(i) if values else rng.random(52) * 0.3
        lines.append(",".join([tc, "61"] + [f"{x:.6f}" for x in v] + ["0.01"] * 9))
    path.write_text("\n".join(lines) + "\n")
    return path


# ---- VQ-VAE ---------------------------------------------------------------------------------------------
def test_vqvae_losses_and_straight_through():
    cfg = vqvae.VQConfig(window=8, stride=2, d_model=16, codes=16, code_dim=8, layers=1)
    x = np.random.default_rng(0).random((20, 3)).astype(np.float32)
    model = vqvae.VQVAE(3, cfg, Range.of(x))
    b = torch.as_tensor(x[None, :8])
    out = model(b, b)
    z_q = model.codebook[out["indices"]]
    assert torch.allclose(out["commit_loss"], ((out["z_e"] - z_q) ** 2).mean())
    assert torch.allclose(out["loss"], out["recon_loss"] + out["commit_loss"] + cfg.beta * out["book_loss"])
    out["recon_loss"].backward()  # the reconstruction gradient passes the quantiser to the encoder ...
    assert model.to_code.weight.grad.abs().sum() > 0
    assert model.codebook.grad is None or model.codebook.grad.abs().sum() == 0  # ... not into the codebook
    model.zero_grad()
    model(b, b)["book_loss"].backward()
    assert model.codebook.grad.abs().sum() > 0 and model.to_code.weight.grad is None


def test_vqvae_reconstructs_held_out_and_pulls_ood_into_range():
    rng = np.random.default_rng(0)
    t = np.arange(700) / FPS
    x = np.stack([0.3 + 0.25 * np.sin(2 * np.pi * 0.4 * t + rng.uniform(0, 6)) for _ in range(4)], 1)
    x = np.clip(x + 0.02 * rng.normal(size=x.shape), 0, 1).astype(np.float32)
    train, held = x[:600], x[600:]
    cfg = vqvae.VQConfig(window=16, hop=8, d_model=32, codes=64, steps=200, lr=4e-3)
    model, info = vqvae.train(train, cfg)
    err = vqvae.reconstruction_error(model, held)
    assert err["rmse"] < 0.35 * held.std(), err        # most of the signal is reconstructed
    rg = Range.of(train)
    extreme = np.clip((held - 0.3) * 3.0 + 0.5, -1, 2)   # scaled and shifted: far outside
    before = outside_fraction(extreme, rg)["values"]
    out = model.project(extreme)
    assert np.all(out >= rg.lo - 1e-6) and np.all(out <= rg.hi + 1e-6)
    assert before > 0.4 and outside_fraction(out, rg)["values"] < 0.5 * before
    assert model.project(held[:5]).shape == (5, 4)        # shorter than a window


def test_vqvae_save_load_round_trip(tmp_path):
    x = np.random.default_rng(0).random((40, 3)).astype(np.float32)
    model, info = vqvae.train(x, vqvae.VQConfig(window=8, d_model=16, codes=8, steps=5))
    vqvae.save(model, tmp_path / "v.pt", ["a", "b", "c"], info)
    back, names, _ = vqvae.load(tmp_path / "v.pt")
    np.testing.assert_allclose(back.project(x), model.project(x), atol=1e-6)
    assert names == ["a", "b", "c"]
    (tmp_path / "bad.pt").write_bytes(b"nope")
    with pytest.raises(UserError, match="unreadable"):
        vqvae.load(tmp_path / "bad.pt")


def test_vqvae_refuses_too_few_frames():
    with pytest.raises(UserError, match="too few"):
        vqvae.train(np.zeros((5, 2), np.float32), vqvae.VQConfig(window=16))


# ---- blinks -------------------------------------------------------------------------------------------------
def test_blink_model_reproduces_rate_and_duration():
    rng = np.random.default_rng(3)
    eyes = blink_track(3000, FPS, rng, every=(2.0, 4.0), length=6)
    truth = blink_statistics(eyes, FPS)
    model = BlinkModel.fit(eyes, FPS)
    gen = model.sample(6000, FPS, np.random.default_rng(0))
    got = blink_statistics(gen, FPS)
    assert abs(got["rate_per_min"] / truth["rate_per_min"] - 1) < 0.15, (got, truth)
    assert abs(got["duration_s"] / truth["duration_s"] - 1) < 0.15
    at50 = blink_statistics(model.sample(12000, 50.0, np.random.default_rng(0)), 50.0)
    assert abs(at50["duration_s"] / truth["duration_s"] - 1) < 0.3  # about the same seconds at another frame rate
    assert BlinkModel.from_json(json.loads(json.dumps(model.to_json()))).intervals_s == model.intervals_s
    assert len(BlinkModel.fit(np.zeros((200, 2)), FPS).intervals_s) >= 2  # no blinks: the human prior


# ---- Live Link Face -----------------------------------------------------------------------------------------
def test_livelink_parse_and_resample(tmp_path):
    p = livelink_csv(tmp_path / "take.csv", n=90, rate=60,
                     values=lambda i: np.full(52, (i % 60) / 100.0))
    take = livelink.read(p)
    assert take.fps == 60.0 and take.values.shape == (90, 52) and take.rotations.shape == (90, 9)
    np.testing.assert_allclose(np.diff(take.times_s), 1 / 60, atol=1e-3)   # across the second boundary
    v = coefficients.resample(take.times_s, take.values, 25.0)
    assert len(v) == int(89 / 60 * 25) + 1
    assert livelink.is_livelink(p) and not livelink.is_livelink(tmp_path / "missing.csv")
    assert livelink.parse_timecode("01:02:03:04.5") == (3723, 4.5)


@pytest.mark.parametrize("mutate, message", [
    (lambda t: "", "empty"),
    (lambda t: t.replace("Timecode", "Time", 1), "Timecode"),
    (lambda t: t.replace("JawOpen,", "", 1), "lacks blendshape"),
    (lambda t: "\n".join(t.splitlines()[:2]), "at least two"),
    (lambda t: t.replace("14:03:59:51", "14-03-59-51", 1), "not HH:MM:SS:FF"),
    (lambda t: t.replace(",61,", ",61,abc,", 1), "fields|not a number"),
    (lambda t: "\n".join([t.splitlines()[0]] + t.splitlines()[1:][::-1]), "do not increase"),
])
def test_livelink_bad_files(tmp_path, mutate, message):
    p = livelink_csv(tmp_path / "t.csv", n=6)
    p.write_text(mutate(p.read_text()))
    with pytest.raises(UserError, match=message):
        livelink.read(p)


def test_livelink_not_text(tmp_path):
    (tmp_path / "b.csv").write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(UserError):
        livelink.read(tmp_path / "b.csv")
    with pytest.raises(UserError, match="not found"):
        livelink.read(tmp_path / "none.csv")


def test_map_named_matches_case_and_fills():
    out, missing = coefficients.map_named(["EyeBlinkLeft", "JawOpen"], np.array([[0.7, 0.2]]),
                                          ["eyeBlinkLeft", "browInnerUp"], np.array([0.0, 0.3]))
    np.testing.assert_allclose(out, [[0.7, 0.3]])
    assert missing == ["browInnerUp"]


# ---- the express job and render --expressions ------------------------------------------------------------
def test_models_are_saved_reused_and_retrained_when_the_capture_changes(subject):
    d = express.folder(subject)
    info = json.loads((d / "models.json").read_text())
    assert {"vqvae.pt", "generator.pt", "models.json"} <= {p.name for p in d.iterdir()}
    assert info["train_frames"] == [0, 360] and info["heldout_frames"] == [360, 400]
    assert info["vqvae"]["heldout"]["rmse"] < 0.2
    stamp = (d / "vqvae.pt").stat().st_mtime_ns
    express.load_models(subject)
    assert (d / "vqvae.pt").stat().st_mtime_ns == stamp  # reused


def test_express_generates_curves_within_range(subject, tmp_path):
    audio = np.random.default_rng(5).normal(0, 0.3, 16000 * 6).astype(np.float32)
    media.write_wav(tmp_path / "dub.wav", audio)
    res = tasks.run("express", {"subject": str(subject.root), "audio": str(tmp_path / "dub.wav"),
                                "out": str(tmp_path / "c.json"), "seed": 3}, _silent())
    c = read_curves(tmp_path / "c.json", 150)
    assert c.source == "generated" and res["frame_count"] == 150 and not c.has_pose
    models = express.load_models(subject)
    core = models.range
    assert np.all(c.expression >= core.lo[:7] - 1e-5) and np.all(c.expression <= core.hi[:7] + 1e-5)
    assert blink_statistics(c.expression[:, 5:], FPS)["count"] >= 1  # the stochastic blinks are there
    # another seed, other blinks; the audio-driven brows stay the same
    other = express.generate(subject, audio, 150, seed=4, models=models)
    assert not np.allclose(other[:, 5:], c.expression[:, 5:])


def test_express_livelink_and_render_expressions_stay_in_range(subject, tmp_path):
    models = express.load_models(subject)
    extreme = livelink_csv(tmp_path / "wild.csv", n=200, rate=60, values=lambda i: np.full(52, float(i % 2)))
    res = tasks.run("express", {"subject": str(subject.root), "livelink": str(extreme),
                                "out": str(tmp_path / "ll.json")}, _silent())
    take = livelink.read(extreme)
    assert res["input"] == "livelink" and res["frame_count"] == int(take.times_s[-1] * 25) + 1 == 83
    audio = np.zeros(16000 * 3, np.float32)
    wild = np.tile(np.array([[0.0] * 7, [1.0] * 7], np.float32), (38, 1))[:75]
    write_curves(tmp_path / "wild.json", Curves(25.0, 1, wild, source="edited"))  # someone else's, extreme
    for source in (str(extreme), "generated", str(tmp_path / "wild.json")):
        curves = load_curves(subject, None, 75, source, audio)   # what the renderer is given
        assert curves.expression.shape == (75, 7) and curves.source == "generated"
        assert np.all(curves.expression >= models.range.lo[:7] - 1e-5), source
        assert np.all(curves.expression <= models.range.hi[:7] + 1e-5), source
    assert outside_fraction(wild, models.range)["values"] > 0.3  # before the VQ-VAE
    with pytest.raises(UserError, match="both set"):
        load_curves(subject, tmp_path / "ll.json", 75, "generated", audio)
    with pytest.raises(UserError, match="not found"):
        load_curves(subject, None, 75, str(tmp_path / "nope.csv"), audio)


def test_express_train_only_and_bad_input(subject, tmp_path):
    res = tasks.run("express", {"subject": str(subject.root)}, _silent())
    assert "curves" not in res and res["vqvae_heldout"]["rmse"] >= 0
    with pytest.raises(UserError, match="not prepared"):
        tasks.run("express", {"subject": str(tmp_path / "none")}, _silent())
    with pytest.raises(UserError, match="must be a int|must be positive"):
        tasks.validate("express", {"subject": "x", "seed": 0})


def test_cli_express_and_render_flag(subject, tmp_path, capsys):
    csv = livelink_csv(tmp_path / "t.csv", n=60)
    assert cli.main(["express", "--subject", str(subject.root), "--livelink", str(csv),
                     "--out", str(tmp_path / "o.json")]) == 0
    assert read_curves(tmp_path / "o.json").source == "generated"
    assert cli.main(["express", "--subject", str(subject.root), "--livelink", str(tmp_path / "no.csv")]) == 2
    parse = cli._parser().parse_args
    assert cli._params(parse(["render", "--subject", "s", "--audio", "a", "--expressions", "t.csv"])) \
        ["expressions_file"] == "t.csv"
    assert cli._params(parse(["render", "--subject", "s", "--audio", "a", "--expressions", "generated"])) \
        ["expressions"] == "generated"


# ---- EmoTalk ---------------------------------------------------------------------------------------------------
TINY_W2V = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
            "conv_dim": [8, 8], "conv_kernel": [10, 8], "conv_stride": [5, 64], "conv_bias": True,
            "num_conv_pos_embeddings": 4, "num_conv_pos_embedding_groups": 2}


def install_tiny_emotalk(models, content_stable=True):
    """Randomly initialised EmoTalk of the real structure with tiny backbones, saved as a user would have it."""
    torch.manual_seed(0)
    c = {**TINY_W2V, "feat_extract_norm": "layer", "do_stable_layer_norm": content_stable}
    e = {**TINY_W2V, "feat_extract_norm": "group", "do_stable_layer_norm": False}
    for name, cfg in ((emotalk.CONTENT_DIR, c), (emotalk.EMOTION_DIR, e)):
        (models / name).mkdir(parents=True)
        (models / name / "config.json").write_text(json.dumps(cfg))
    net = emotalk.EmoTalk(emotalk.Wav2Vec2Spec.from_config(c), emotalk.Wav2Vec2Spec.from_config(e))
    with torch.no_grad():
        net.bs_map_r.weight.normal_(0, 0.05)
        net.bs_map_r.bias.fill_(0.2)
    state = net.state_dict()
    # the checkpoint carries the weight norm as newer transformers name it, plus heads it does not use
    state = {k.replace("conv.weight_g", "conv.parametrizations.weight.original0")
             .replace("conv.weight_v", "conv.parametrizations.weight.original1"): v for k, v in state.items()}
    state["audio_encoder_emo.classifier.dense.weight"] = torch.zeros(2, 2)
    torch.save(state, models / "EmoTalk.pth")
    return net.eval()


def test_emotalk_loads_and_predicts(tmp_path, monkeypatch):
    monkeypatch.setenv("HEADSYNC_MODELS", str(tmp_path))
    with pytest.raises(UserError, match="EmoTalk.pth"):
        emotalk.model_paths()
    net = install_tiny_emotalk(tmp_path)
    audio = np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32)
    names, values = emotalk.generate(audio, 25.0, 25)
    assert names[8] == "eyeBlinkLeft" and values.shape == (25, 52)
    direct = net.predict(torch.as_tensor(emotalk.normalise_audio(audio))[None])[0].numpy()
    assert direct.shape == (30, 52)   # 30 fps
    np.testing.assert_allclose(values[0], np.clip(direct[0], 0, 1), atol=1e-5)
    mask = emotalk.biased_mask(4, 65, 30)
    assert mask[0, 40, 5] == pytest.approx(-0.25) and mask[1, 64, 0] == pytest.approx(-0.125)
    assert torch.isinf(mask[0, 3, 4]) and mask[0, 7, 7] == 0


def test_emotalk_missing_weights_are_named(tmp_path):
    install_tiny_emotalk(tmp_path)
    state = torch.load(tmp_path / "EmoTalk.pth")
    del state["bs_map_r.weight"]
    torch.save(state, tmp_path / "EmoTalk.pth")
    with pytest.raises(UserError, match="bs_map_r.weight"):
        emotalk.build(tmp_path / "EmoTalk.pth", tmp_path / emotalk.CONTENT_DIR, tmp_path / emotalk.EMOTION_DIR)


def test_express_with_emotalk_generator(subject, tmp_path, monkeypatch):
    import shutil

    s = Subject(tmp_path / "s")
    shutil.copytree(subject.root, s.root)  # with its trained models: the generator choice does not retrain them
    (s.root / "preset.toml").write_text('[expressions]\naudio_model = "emotalk"\n' + TINY)
    m = json.loads((s.root / "subject.json").read_text())
    write_json_atomic(s.root / "subject.json", {**m, "preset": str(s.root / "preset.toml")})
    monkeypatch.setenv("HEADSYNC_MODELS", str(tmp_path / "models"))
    with pytest.raises(UserError, match="EmoTalk.pth"):
        express.generate(s, np.zeros(16000, np.float32), 25)
    install_tiny_emotalk(tmp_path / "models")
    values = express.generate(s, np.random.default_rng(0).normal(0, 0.1, 32000).astype(np.float32), 50)
    models = express.load_models(s)
    assert values.shape == (50, 7)
    assert (express.folder(s) / "models.json").read_text() == (express.folder(subject) / "models.json").read_text()
    assert np.all(values >= models.range.lo - 1e-5) and np.all(values <= models.range.hi + 1e-5)


def _silent():
    from headsync.core.progress import silent

    return silent()


# ---- the bundled sample (slow) ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_sample_expression_models(prepared_sample, tmp_path):
    """On the sample: the VQ-VAE reconstructs held-out captured coefficients and generated curves for the
    dub stay inside the subject's range."""
    from conftest import SAMPLE

    import shutil

    s = Subject(tmp_path / "s")
    shutil.copytree(prepared_sample.root, s.root)
    res = tasks.run("express", {"subject": str(s.root), "audio": str(SAMPLE / "dub.wav"),
                                "out": str(tmp_path / "dub.json")}, _silent())
    info = json.loads((express.folder(s) / "models.json").read_text())
    coeffs = coefficients.load(s)
    # better than the held-out frames' own spread (0.67 of it in docs/benchmarks.md)
    assert info["vqvae"]["heldout"]["rmse"] < 0.85 * coeffs.values[coeffs.holdout].std()
    c = read_curves(tmp_path / "dub.json", res["frame_count"])
    rg = Range.from_json(info["range"])
    assert np.all(c.expression >= rg.lo[:7] - 1e-5) and np.all(c.expression <= rg.hi[:7] + 1e-5)
