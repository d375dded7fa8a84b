"""The audio-visual encoder (Eq. 3), its checkpoints, its stage on a tiny synthetic subject, the per-frame
lip features for new audio, and (slow) the discriminator and judge on the bundled sample."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from headsync.face_sync import av_encoder, lip_features, syncnet
from headsync.prepare.audio_features import log_mel, mel_features
from headsync.core.errors import UserError
from headsync.core.media import write_wav
from headsync.face_sync.mouth_crops import audio_windows
from headsync.core.progress import silent
from headsync.subject.folder import Subject

FPS = 25.0
RATE = 16000


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---- Eq. 3 and the network -----------------------------------------------------------------------------
def test_recon_loss_eq3_by_hand():
    target = torch.zeros(2, 5, 4, 8)
    restored = torch.full((2, 5, 4, 8), 0.1)
    restored[1] = -0.3
    assert av_encoder.recon_loss(target, restored).item() == pytest.approx((0.1 + 0.3) / 2)


def test_mask_hides_the_mouth_only():
    faces = torch.ones(1, 5, 32, 64)
    m = av_encoder.mask_lower(faces)
    assert (m[..., :8, :] == 1).all() and (m[..., 8:, :] == 0).all()
    assert (faces == 1).all()  # not in place


def test_sync_ramp():
    assert av_encoder.sync_ramp(0, 100) == 0.0
    assert av_encoder.sync_ramp(30, 100) == 0.0
    assert av_encoder.sync_ramp(45, 100) == pytest.approx(0.5)
    assert av_encoder.sync_ramp(99, 100) == 1.0


def test_network_shapes_and_feature_rows():
    spec = av_encoder.EncoderSpec(width=4, feature_dim=6)
    model = av_encoder.AVEncoder(5, spec).eval()
    faces = torch.rand(3, 5, 32, 64) - 0.5
    mel = torch.randn(3, 80, 20)
    out = model(av_encoder.mask_lower(faces), faces, mel)
    assert out.shape == faces.shape and out.abs().max() <= 0.5
    audio = np.random.default_rng(0).standard_normal(RATE).astype(np.float32) * 0.1
    m = log_mel(audio)
    f = av_encoder.features(model.audio, m, FPS, 30)
    assert f.shape == (30, 6) and f.dtype == np.float32
    with torch.no_grad():  # row i is Conv(A) of the window centred on frame i
        row = model.audio(torch.from_numpy(audio_windows(m, np.array([17]), FPS, 20)))[0].numpy()
    assert np.allclose(f[17], row, atol=1e-5)


# ---- checkpoints ---------------------------------------------------------------------------------------
def test_encoder_checkpoint_good_bare_and_mismatched(tmp_path):
    spec = av_encoder.EncoderSpec(width=4, feature_dim=6)
    enc = spec.build().eval()
    enc.mel_mean.fill_(-3.0)
    av_encoder.save_encoder(enc, spec, tmp_path / "ave_encoder.pt", FPS)
    back, back_spec = av_encoder.load_encoder(tmp_path / "ave_encoder.pt")
    assert back_spec == spec and back.mel_mean.item() == -3.0
    x = torch.randn(2, 80, 20)
    with torch.no_grad():
        assert torch.allclose(enc(x), back(x))

    torch.save(enc.state_dict(), tmp_path / "bare.pt")  # a bare state dict fits the spec it is given
    av_encoder.load_encoder(tmp_path / "bare.pt", spec)
    with pytest.raises(UserError) as e:  # ... and not another one
        av_encoder.load_encoder(tmp_path / "bare.pt", av_encoder.EncoderSpec(width=4, feature_dim=8))
    assert "wrong shapes: fc.bias, fc.weight" in e.value.message

    state = {("encoder." + k if k.startswith("fc.") else k): v for k, v in enc.state_dict().items()}
    torch.save(state, tmp_path / "renamed.pt")
    with pytest.raises(UserError) as e:
        av_encoder.load_encoder(tmp_path / "renamed.pt", spec)
    assert "missing keys: fc.bias, fc.weight" in e.value.message
    assert "unexpected keys: encoder.fc.bias, encoder.fc.weight" in e.value.message

    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    for bad in ("junk.pt", "absent.pt"):
        with pytest.raises(UserError):
            av_encoder.load_encoder(tmp_path / bad)


# ---- the stage on a tiny synthetic subject -------------------------------------------------------------
def _anchor_landmarks(n: int, size: int) -> np.ndarray:
    lm = np.full((n, 478, 3), size / 2, np.float32)
    lm[:, 33, :2] = (size * 0.3, size * 0.35)
    lm[:, 263, :2] = (size * 0.7, size * 0.35)
    lm[:, 164, :2] = (size * 0.5, size * 0.55)
    return lm


@pytest.fixture(scope="module")
def tiny_subject(tmp_path_factory):
    """120 frames of a 96 px "face" whose mouth opens with the loudness of a noise track, as ``prepare``
    would leave it (frames, landmarks, audio.wav, manifest with the mel stage's settings)."""
    root = tmp_path_factory.mktemp("tiny") / "subject"
    n, size = 120, 96
    rng = np.random.default_rng(0)
    env = np.clip(np.sin(np.arange(n) / FPS * 2 * np.pi * 2.3), 0, None)  # 2.3 "syllables" per second
    (root / "frames").mkdir(parents=True)
    for i in range(n):
        img = np.full((size, size, 3), 170, np.uint8)
        cv2.ellipse(img, (48, 62), (12, int(1 + 8 * env[i])), 0, 0, 360, (40, 40, 40), -1)
        cv2.imwrite(str(root / "frames" / f"{i:06d}.jpg"), img)
    np.save(root / "landmarks.npy", _anchor_landmarks(n, size))
    t = np.arange(int(n / FPS * RATE)) / RATE
    audio = np.interp(t, np.arange(n) / FPS, env) * rng.standard_normal(t.size) * 0.3
    write_wav(root / "audio.wav", audio.astype(np.float32))
    subject = Subject(root)
    subject.save({"schema": "headsync.subject/1", "source": {"fps": FPS, "frame_count": n},
                  "stages": {"mel": {"done": True, "params": {"n_mels": 80, "fmin": 55.0, "fmax": 7600.0}}}})
    return subject


TINY = dict(crop_height=32, crop_width=64, width=4, embed_dim=8, feature_dim=6, sync_steps=3, sync_batch=8,
            ave_steps=3, ave_batch=4, max_shift=6, device="cpu")


def test_stage_writes_features_encoder_and_discriminator(tiny_subject):
    info = av_encoder.run(tiny_subject, av_encoder.Config(**TINY), silent())
    json.dumps(info)  # recorded in the manifest
    feats = np.load(tiny_subject.path("audio_features/ave.npy"))
    assert feats.shape == (120, 6) and np.isfinite(feats).all()
    assert info["shape"] == [120, 6] and info["holdout_start"] == 108
    assert 0.0 <= info["sync_auc_heldout"] <= 1.0
    assert "recon_l1_heldout" in info
    net, fps = syncnet.load(tiny_subject.path("audio_features/syncnet.pt"))
    assert fps == FPS and net.spec.crop_height == 32

    # Render-time features of the subject's own audio are the prepared rows.
    import soundfile as sf

    audio, _ = sf.read(str(tiny_subject.path("audio.wav")), dtype="float32")
    again = lip_features.for_audio(tiny_subject, "ave", audio, FPS, 120)
    assert np.allclose(again, feats, atol=1e-5)
    assert np.array_equal(lip_features.for_subject(tiny_subject, "ave"), feats)
    # New audio at another frame rate: one row per requested frame.
    assert lip_features.for_audio(tiny_subject, "ave", audio[:RATE], 30.0, 30).shape == (30, 6)


def test_stage_loads_a_pretrained_encoder_instead_of_training(tiny_subject, tmp_path):
    spec = av_encoder.EncoderSpec(width=4, feature_dim=5)
    enc = spec.build()
    av_encoder.save_encoder(enc, spec, tmp_path / "pre.pt", FPS)
    cfg = av_encoder.Config(**{**TINY, "checkpoint": str(tmp_path / "pre.pt")})
    info = av_encoder.run(tiny_subject, cfg, silent())
    assert info["pretrained"].endswith("pre.pt") and "recon_l1_heldout" not in info
    assert np.load(tiny_subject.path("audio_features/ave.npy")).shape == (120, 5)

    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(UserError) as e:
        av_encoder.run(tiny_subject, av_encoder.Config(**{**TINY, "checkpoint": str(tmp_path / "foreign.pt")}),
                       silent())
    assert "unexpected keys: conv.weight" in e.value.message and "missing keys" in e.value.message


def test_stage_rejects_missing_extra_clip(tiny_subject):
    with pytest.raises(UserError, match="extra training clip not found"):
        av_encoder.run(tiny_subject, av_encoder.Config(**{**TINY, "extra_clips": ("/nonexistent/clip.mp4",)}),
                       silent())


# ---- lip features --------------------------------------------------------------------------------------
def test_mel_for_new_audio_uses_the_subjects_settings(tiny_subject):
    audio = np.random.default_rng(1).standard_normal(RATE).astype(np.float32) * 0.1
    got = lip_features.for_audio(tiny_subject, "mel", audio, FPS, 25)
    assert got.shape == (25, 80)
    assert np.array_equal(got, mel_features(audio, FPS, 25))


def test_unknown_and_missing_features_are_user_errors(tiny_subject, tmp_path):
    with pytest.raises(UserError, match="unknown audio feature"):
        lip_features.for_subject(tiny_subject, "wav2vec")
    bare = Subject(tmp_path)
    bare.save({"source": {"fps": FPS, "frame_count": 3}, "stages": {}})
    with pytest.raises(UserError, match="has no 'mel' audio feature"):
        lip_features.for_subject(bare, "mel")
    with pytest.raises(UserError, match="no audio-visual encoder"):
        lip_features.for_audio(bare, "ave", np.zeros(RATE, np.float32), FPS, 25)


def test_an_unknown_feature_says_which_exist(tmp_path):
    bare = Subject(tmp_path / "s")
    for call in (lambda: lip_features.for_subject(bare, "hubert"),
                 lambda: lip_features.for_audio(bare, "hubert", np.zeros(RATE, np.float32), FPS, 25)):
        with pytest.raises(UserError, match="unknown audio feature 'hubert'") as e:
            call()
        assert "mel, ave" in e.value.hint