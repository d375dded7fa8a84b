"""The lip-sync discriminator, the audio/video windows it reads, and the sync judge.

The synthetic clip: a "mouth" (a dark ellipse in a grey crop) opens with the loudness envelope of a
noise-burst "speech" track exactly at t = i / fps, so its true audio-video offset is known and the judge
must find any shift we apply to the sound (the classic off-by-one lives here).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from headsync.face_sync import syncnet
from headsync.prepare.audio_features import HOP, log_mel
from headsync.core.errors import UserError
from headsync.subject.split import holdout_start
from headsync.face_sync.mouth_crops import (Clip, audio_row_start, audio_windows, crop_affines, cut_mouth,
                                  video_windows)
from headsync.face_sync.sync_judge import judge

FPS = 25.0
RATE = 16000
H, W = 32, 64


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---- Eq. 1 and Eq. 2 -----------------------------------------------------------------------------------
def test_cosine_similarity_eq1_by_hand():
    f = torch.tensor([[1.0, 0.0], [3.0, 4.0], [1.0, 2.0]])
    a = torch.tensor([[1.0, 1.0], [3.0, 4.0], [-2.0, 1.0]])
    assert torch.allclose(syncnet.cosine_sim(f, a), torch.tensor([2 ** -0.5, 1.0, 0.0]), atol=1e-6)


def test_sync_loss_eq2_by_hand():
    sim = torch.tensor([0.8, 0.8, 0.1])
    y = torch.tensor([1.0, 0.0, 0.0])
    expected = -(np.log(0.8) + np.log(0.2) + np.log(0.9)) / 3
    assert syncnet.sync_loss(sim, y).item() == pytest.approx(expected, rel=1e-6)
    # A confident mistake is expensive but finite (sim is clamped away from 0 and 1).
    worst = syncnet.sync_loss(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0])).item()
    assert np.isfinite(worst) and worst > 10


def test_similarity_of_relu_embeddings_is_a_probability():
    net = syncnet.SyncNet(syncnet.Spec(crop_height=H, crop_width=W, width=4, embed_dim=8))
    sim = net(torch.rand(6, 5, H, W) - 0.5, torch.randn(6, 80, 20))
    assert sim.shape == (6,)
    assert ((sim >= 0) & (sim <= 1)).all()


def test_roc_auc_by_hand():
    assert syncnet.roc_auc([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0]) == 1.0
    assert syncnet.roc_auc([0.9, 0.1, 0.5, 0.2], [1, 0, 1, 0]) == 1.0
    assert syncnet.roc_auc([0.5, 0.5], [1, 0]) == 0.5
    assert syncnet.roc_auc([0.1, 0.9, 0.5], [1, 0, 0]) == 0.0


# ---- windows -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fps", [25.0, 30.0])
@pytest.mark.parametrize("onset", [12, 31])
def test_audio_window_is_centred_on_its_video_frame(fps, onset):
    """A tone starting exactly at frame k's timestamp: frame k's audio window is silent in its first
    half and loud in its second half, exactly from its middle row."""
    rows = 20
    n = 50
    a = np.zeros(int(n / fps * RATE), np.float32)
    start = int(round(onset / fps * RATE))
    a[start:] = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(a.size - start) / RATE)
    mel = log_mel(a)
    level = mel.max(1)
    mid = (level.min() + level.max()) / 2
    win = audio_windows(mel, np.array([onset]), fps, rows)[0].max(0)  # (rows,) loudest band per row
    loud = np.flatnonzero(win > mid)
    assert loud[0] == rows // 2, (loud, win.round(1))
    assert loud.size == rows - rows // 2
    # One frame earlier, the window starts earlier by that frame's rows and so holds fewer loud rows.
    step = int(audio_row_start(onset, fps, rows) - audio_row_start(onset - 1, fps, rows))
    before = audio_windows(mel, np.array([onset - 1]), fps, rows)[0].max(0)
    assert (before > mid).sum() == rows - rows // 2 - step


def test_audio_row_start_and_edges():
    assert audio_row_start(10, 25.0, 20) == 40 - 10
    assert audio_row_start(0, 25.0, 20) == -10
    mel = np.arange(30, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    w = audio_windows(mel, np.array([0, 7]), 25.0, 20)
    assert w.shape == (2, 3, 20)
    assert w[0, 0, :11].tolist() == [0] * 11  # rows before the start repeat row 0
    assert w[1, 0, -1] == 29  # and past the end repeat the last row


def test_video_window_is_centred_and_clipped():
    crops = np.arange(8, dtype=np.uint8)[:, None, None] * np.ones((1, 2, 2), np.uint8)
    w = video_windows(crops, np.array([0, 4, 7]), 5)
    assert w.shape == (3, 5, 2, 2)
    assert w[:, :, 0, 0].tolist() == [[0, 0, 0, 1, 2], [2, 3, 4, 5, 6], [5, 6, 7, 7, 7]]


def test_holdout_is_the_renderers_last_tenth():
    assert holdout_start(654, 0.1) == 589
    assert holdout_start(10, 0.1) == 9
    assert holdout_start(10, 0.0) == 10


# ---- mouth crop geometry -------------------------------------------------------------------------------
def _face_landmarks(n: int, centre=(60.0, 50.0), iod=40.0, roll=0.0) -> np.ndarray:
    """Landmarks (n, 478, 3) with only the crop's anchors placed: eye corners and the point below the nose."""
    lm = np.zeros((n, 478, 3), np.float32)
    c, s = np.cos(roll), np.sin(roll)
    right = np.array([-iod / 2, 0.0])
    nose = np.array([0.0, 0.9 * iod])
    rot = np.array([[c, -s], [s, c]])
    lm[:, :, :2] = centre
    lm[:, 33, :2] = centre + rot @ right
    lm[:, 263, :2] = centre - rot @ right
    lm[:, 164, :2] = centre + rot @ nose
    return lm


def test_crop_follows_the_face_and_undoes_roll():
    for roll in (0.0, 0.3):
        lm = _face_landmarks(3, roll=roll)
        aff = crop_affines(lm, H, W)
        eyes = np.c_[lm[0, [33, 263], :2], np.ones(2)] @ aff[0].T
        assert abs(eyes[0, 1] - eyes[1, 1]) < 1e-6  # eye line horizontal in the crop
        anchor = aff[0] @ np.r_[lm[0, 164, :2], 1.0]
        assert anchor[0] == pytest.approx(W / 2)
        assert 0 <= anchor[1] < H / 4  # the crop starts just under the nose


def test_crop_geometry_fills_frames_without_a_face():
    lm = _face_landmarks(5)
    lm[2] = np.nan
    aff = crop_affines(lm, H, W, smooth_frames=0)
    assert np.isfinite(aff).all()
    assert np.allclose(aff[2], aff[1])
    with pytest.raises(UserError):
        crop_affines(np.full((3, 478, 3), np.nan), H, W)


def test_cut_mouth_shape():
    img = np.random.default_rng(0).integers(0, 255, (128, 128, 3), np.uint8)
    crop = cut_mouth(img, crop_affines(_face_landmarks(1), H, W)[0], H, W)
    assert crop.shape == (H, W) and crop.dtype == np.uint8


# ---- sampler -------------------------------------------------------------------------------------------
def test_pair_sampler_negatives_are_shifted_and_stay_in_range():
    clip = Clip(np.zeros((200, H, W), np.uint8), np.zeros((800, 80), np.float32), FPS, np.ones(200, bool))
    s = syncnet.PairSampler([clip], [(0, 150)], syncnet.Spec(crop_height=H, crop_width=W), min_shift=3)
    _, mels, y, centres, audio_c = s.sample(2000, np.random.default_rng(0))
    i = centres[:, 1]
    assert ((y == 1) == (audio_c == i)).all()
    assert (np.abs(audio_c - i)[y == 0] >= 3).all()
    assert i.min() >= 2 and i.max() <= 147 and audio_c.min() >= 2 and audio_c.max() <= 147
    assert 0.4 < y.mean() < 0.6
    assert mels.shape == (2000, 80, 20)


# ---- checkpoints ---------------------------------------------------------------------------------------
def test_checkpoint_round_trip_and_mismatch(tmp_path):
    spec = syncnet.Spec(crop_height=H, crop_width=W, width=4, embed_dim=8)
    net = syncnet.SyncNet(spec).eval()
    syncnet.save(net, tmp_path / "syncnet.pt", 25.0)
    back, fps = syncnet.load(tmp_path / "syncnet.pt")
    assert fps == 25.0 and back.spec == spec
    f, a = torch.rand(2, 5, H, W) - 0.5, torch.randn(2, 80, 20)
    with torch.no_grad():
        assert torch.allclose(net(f, a), back(f, a))
    state = net.state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["fc.weight" if "fc.weight" in state else "face.fc.weight"]
    with pytest.raises(UserError) as e:
        syncnet.load_state(syncnet.SyncNet(spec), state, "test checkpoint")
    assert "missing keys: face.fc.weight" in e.value.message and "unexpected keys: extra.weight" in e.value.message
    with pytest.raises(UserError):
        syncnet.load(tmp_path / "nothing.pt")


# ---- the synthetic clip and the judge ------------------------------------------------------------------
def envelope(n_frames: int, seed: int) -> np.ndarray:
    """A syllable-like loudness envelope in [0, 1] at 100 Hz (random bursts of 80-250 ms)."""
    rng = np.random.default_rng(seed)
    n = int(n_frames / FPS * 100)
    env = np.zeros(n)
    t = 0
    while t < n:
        t += int(rng.integers(4, 20))  # a pause
        length = int(rng.integers(8, 25))
        env[t:t + length] = rng.uniform(0.4, 1.0) * np.sin(np.linspace(0, np.pi, min(length, max(n - t, 0))))
        t += length
    return env


def synthetic_clip(n_frames: int, seed: int = 0, audio_delay: int = 0) -> Clip:
    """Mouth crops whose opening is the envelope at t = i / fps, and noise "speech" following the same
    envelope, delayed by ``audio_delay`` frames (negative: the sound comes early)."""
    rng = np.random.default_rng(seed + 100)
    env = envelope(n_frames + 2 * abs(audio_delay) + 2, seed)
    samples = int(n_frames / FPS * RATE)
    t_env = np.arange(env.size) * (RATE // 100)
    t = np.arange(samples) - audio_delay * RATE / FPS
    amp = np.interp(t, t_env, env, left=0, right=0)
    audio = (amp * rng.standard_normal(samples) * 0.3).astype(np.float32)
    opening = np.interp(np.arange(n_frames) / FPS * 100, np.arange(env.size), env)
    yy, xx = np.mgrid[0:H, 0:W]
    crops = np.empty((n_frames, H, W), np.uint8)
    for i, o in enumerate(opening):
        inside = ((xx - W / 2) / (W * 0.3)) ** 2 + ((yy - H * 0.45) / (1 + H * 0.35 * o)) ** 2 < 1
        crops[i] = np.where(inside, 40, 170) + rng.integers(0, 12, (H, W))
    return Clip(crops, log_mel(audio), FPS, np.ones(n_frames, bool))


@pytest.fixture(scope="module")
def synthetic_net():
    torch.set_num_threads(1)
    clip = synthetic_clip(400)
    spec = syncnet.Spec(crop_height=H, crop_width=W, width=8, embed_dim=32)
    sampler = syncnet.PairSampler([clip], [(0, 360)], spec, min_shift=3, max_shift=12)
    return syncnet.train(sampler, steps=160, batch=32, lr=3e-3, seed=0), clip


def test_discriminator_separates_synthetic_sync_on_heldout_frames(synthetic_net):
    net, clip = synthetic_net
    res = syncnet.shift_auc(net, clip, 360, 400)
    assert res["auc"] > 0.9, res
    assert res["sim_in_sync"] > res["sim_shifted"]


@pytest.mark.parametrize("delay", [0, 1, 2, -3])
def test_judge_finds_the_known_offset(synthetic_net, delay):
    net, _ = synthetic_net
    clip = synthetic_clip(200, seed=7, audio_delay=delay)  # unseen clip
    res = judge(net, clip, max_offset=8)
    assert res["hs_sync_offset_frames"] == delay, res["distances"]
    assert res["hs_sync_confidence"] > 0


def test_mel_hop_is_ten_ms():
    assert RATE / HOP == 100  # the windows above assume 100 log-mel rows per second


@pytest.mark.parametrize("steps", [1, 3, 10, 300])
def test_one_cycle_handles_short_schedules(steps):
    """CPU-sized presets train for a handful of steps: the warm-up must never be empty (ZeroDivisionError)."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1e-3)
    sched = syncnet.one_cycle(opt, 1e-3, steps)
    lrs = []
    for _ in range(steps):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert all(np.isfinite(lrs)) and max(lrs) <= 1e-3 + 1e-12


def test_judge_says_no_sync_for_unrelated_sound(synthetic_net):
    """`eval --sync`: a confidence within what far-shifted sound reaches is "no sync found"."""
    from headsync.face_sync.sync_judge import verdict

    net, _ = synthetic_net
    clip = synthetic_clip(200, seed=7)
    other = synthetic_clip(200, seed=8)
    matched = judge(net, clip, max_offset=8)
    assert matched["hs_sync_found"] is True, matched
    unrelated = judge(net, Clip(clip.crops, other.mel, FPS, clip.valid), max_offset=8)
    assert unrelated["hs_sync_found"] is False, unrelated
    assert verdict(unrelated).startswith("no sync found") and not verdict(matched).startswith("no sync")
