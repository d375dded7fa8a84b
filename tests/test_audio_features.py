import numpy as np
import pytest

from headsync.prepare.audio import fit_length
from headsync.prepare.audio_features import log_mel, mel_features, per_video_frame


@pytest.mark.parametrize("fps", [25.0, 30.0, 24.0])
@pytest.mark.parametrize("onset_frame", [10, 37])
def test_mel_rows_align_with_video_frames(fps, onset_frame):
    """A tone starting exactly at video frame k must light up row k, not k-1 or k+1 (the classic off-by-one)."""
    rate = 16000
    n = 60
    a = np.zeros(int(n / fps * rate), np.float32)
    start = int(round(onset_frame / fps * rate))  # the tone starts at frame k's timestamp
    t = np.arange(a.size - start) / rate
    a[start:] = 0.5 * np.sin(2 * np.pi * 1000 * t)
    energy = mel_features(a, fps, n).max(1)  # the loudest band: the tone lives in one or two
    assert energy.shape == (n,)
    silence = energy[: onset_frame - 2].mean()
    first_loud = int(np.argmax(energy > silence + 3.0))  # log units: e^3 = 20x the power
    assert first_loud == onset_frame
    assert energy[onset_frame + 1] > silence + 3.0


def test_log_mel_shape_and_rate():
    a = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    m = log_mel(a)
    assert m.shape == (100, 80)
    assert np.isfinite(m).all()


def test_per_video_frame_fills_tail():
    feat = np.arange(10, dtype=np.float32)[:, None]  # 10 rows at 100 Hz = 0.1 s
    out = per_video_frame(feat, 100.0, 25.0, 5)  # 5 frames = 0.2 s: the last ones repeat the last filled row
    assert out.shape == (5, 1)
    assert np.isfinite(out).all()
    assert out[-1, 0] == out[2, 0]


def test_fit_length_pads_and_trims():
    a = np.ones(10, np.float32)
    assert fit_length(a, 4).tolist() == [1, 1, 1, 1]
    assert fit_length(a, 12)[-2:].tolist() == [0, 0]
