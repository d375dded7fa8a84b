import numpy as np
import pytest
import soundfile as sf

from headsync.core import media
from headsync.core.errors import UserError
from media_fixtures import numbered_video, tone


def test_probe_reports_streams(tmp_path):
    v = numbered_video(tmp_path / "v.mp4", 30, 30.0, audio=tone(tmp_path / "a.wav", 1.0))
    info = media.probe(v)
    assert info.has_video and info.has_audio
    assert (info.width, info.height) == (64, 48)
    assert info.fps == pytest.approx(30.0)
    assert info.duration_s == pytest.approx(1.0, abs=0.1)


@pytest.mark.parametrize("content,match", [(None, "not found"), (b"", "empty"), (b"\x00garbage" * 500, "cannot read")])
def test_probe_bad_files(tmp_path, content, match):
    p = tmp_path / "bad.mp4"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(UserError, match=match) as e:
        media.probe(p)
    assert e.value.hint


def test_frames_resampled_by_timestamp(tmp_path):
    # 60 frames at 30 fps (2 s) -> 50 frames at 25 fps; frame i at 25 fps shows source frame floor-ish(i*30/25)
    v = numbered_video(tmp_path / "v.mp4", 60, 30.0)
    frames = list(media.iter_frames(v, 25.0))
    assert len(frames) == 50
    levels = np.array([f.mean() for f in frames]) / 4
    expected = np.round(np.arange(50) * 30 / 25)
    assert np.abs(levels - expected).max() <= 1.01


def test_only_some_frames_are_exactly_those_of_the_full_decode(tmp_path):
    """``only=(first, last)`` (a Preview Frame's source frame): ffmpeg passes on just those, the same pixels."""
    v = numbered_video(tmp_path / "v.mp4", 30, 25.0)
    full = list(media.iter_frames(v, 12.5))
    part = list(media.iter_frames(v, 12.5, only=(9, 11)))
    assert len(full) == 15 and len(part) == 3
    assert all(np.array_equal(a, b) for a, b in zip(part, full[9:12]))
    assert len(list(media.iter_frames(v, 12.5, only=(14, 40)))) == 1  # past the end: what there is


def test_read_audio_resamples_to_16k_mono(tmp_path):
    t = np.arange(44100) / 44100
    stereo = np.stack([np.sin(2 * np.pi * 300 * t), np.sin(2 * np.pi * 300 * t)], 1) * 0.5
    sf.write(str(tmp_path / "s.wav"), stereo, 44100)
    a = media.read_audio(tmp_path / "s.wav")
    assert a.dtype == np.float32 and a.ndim == 1
    assert abs(a.size - 16000) <= 16
    assert 0.3 < np.abs(a).max() <= 0.51


def test_read_audio_of_silent_video_is_a_user_error(tmp_path):
    v = numbered_video(tmp_path / "v.mp4", 10, 25.0)
    with pytest.raises(UserError, match="no audio"):
        media.read_audio(v)
