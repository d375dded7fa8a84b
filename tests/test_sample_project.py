"""Fast checks of the committed sample subject (package data: backend/headsync/sample/).

They look at the committed files only (no MediaPipe, no rendering); the
generator is sample_projects/make_sample.py.
"""
from __future__ import annotations

import re
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from headsync.core.package_data import sample_dir

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_projects"  # the generator and its source speech
SUBJECT = sample_dir()
VIDEO = SUBJECT / "video.mp4"
GT = SUBJECT / "ground_truth.npz"

CORE = ["browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft",
        "browOuterUpRight", "eyeBlinkLeft", "eyeBlinkRight"]
BROW = ["browInnerUp", "browOuterUpLeft", "browOuterUpRight", "browDownLeft", "browDownRight"]
FPS = 25


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path.relative_to(ROOT)} is absent")
    return path


@pytest.fixture(scope="module")
def gt():
    with np.load(_need(GT)) as data:
        return {k: data[k] for k in data.files}


def _ffmpeg() -> str:
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    return imageio_ffmpeg.get_ffmpeg_exe()


def _seconds(stamp: str) -> float:
    h, m, s = stamp.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


@pytest.fixture(scope="module")
def probe():
    """Stream info of the committed video from the ffmpeg binary (no decoding)."""
    ff = _ffmpeg()
    video = _need(VIDEO)
    info = subprocess.run([ff, "-hide_banner", "-i", str(video)], capture_output=True, text=True,
                          timeout=30).stderr

    def copy_stats(sel):
        err = subprocess.run([ff, "-hide_banner", "-i", str(video), "-map", sel, "-c", "copy", "-f", "null", "-"],
                             capture_output=True, text=True, timeout=30).stderr
        frames = re.findall(r"frame=\s*(\d+)", err)
        times = re.findall(r"time=\s*(\d+:\d+:\d+\.\d+)", err)
        return (int(frames[-1]) if frames else None), (_seconds(times[-1]) if times else None)

    v_frames, v_time = copy_stats("0:v:0")
    _, a_time = copy_stats("0:a:0")
    return {"info": info, "v_frames": v_frames, "v_time": v_time, "a_time": a_time}


def test_video_stream(probe):
    m = re.search(r"Stream #0:\d+.*Video: h264.*?, (\d+)x(\d+)[, ].*?([\d.]+) fps", probe["info"])
    assert m, probe["info"]
    w, h, fps = int(m.group(1)), int(m.group(2)), float(m.group(3))
    assert (w, h) == (512, 512)
    assert fps == FPS
    assert "yuv420p" in probe["info"]


def test_audio_track(probe):
    assert re.search(r"Stream #0:\d+.*Audio: aac", probe["info"]), probe["info"]
    assert probe["a_time"] is not None


def test_frame_count_matches_ground_truth(probe, gt):
    n = len(gt["mouth_open"])
    assert probe["v_frames"] == n
    assert int(gt["frame_count"]) == n
    assert 20 * FPS <= n <= 30 * FPS  # about 25 s


def test_video_and_audio_durations_agree(probe, gt):
    # the video lasts frames / fps; the muxed audio must last as long, within one frame
    assert probe["v_frames"] == len(gt["mouth_open"])
    assert probe["a_time"] == pytest.approx(probe["v_frames"] / FPS, abs=1.0 / FPS)
    m = re.search(r"Duration: (\d+:\d+:\d+\.\d+)", probe["info"])
    assert m and _seconds(m.group(1)) == pytest.approx(probe["v_frames"] / FPS, abs=1.0 / FPS)


def test_ground_truth_shapes_and_order(gt):
    n = len(gt["mouth_open"])
    assert gt["mouth_open"].shape == (n,)
    assert gt["blink"].shape == (n, 2)
    assert gt["brow"].shape == (n, 5)
    assert list(gt["brow_names"]) == BROW
    assert gt["expression"].shape == (n, 7)
    assert list(gt["names"]) == CORE
    assert gt["rotation_euler_xyz"].shape == (n, 3)
    assert gt["rotation_matrix"].shape == (n, 3, 3)
    assert gt["translation"].shape == (n, 3)
    assert float(gt["fps"]) == FPS
    assert float(gt["focal"]) > 0
    ev = gt["blink_events"]
    assert ev.ndim == 2 and ev.shape[1] == 3 and len(ev) >= 3
    assert np.issubdtype(ev.dtype, np.integer)
    assert ((ev[:, 0] <= ev[:, 1]) & (ev[:, 0] >= 0) & (ev[:, 1] < n)).all()
    assert set(ev[:, 2].tolist()) <= {0, 1, 2}


def test_ground_truth_values(gt):
    for key in ("mouth_open", "blink", "brow", "expression"):
        v = gt[key]
        assert np.isfinite(v).all() and v.min() >= 0.0 and v.max() <= 1.0, key
    e, b, br = gt["expression"], gt["blink"], gt["brow"]
    col = {name: i for i, name in enumerate(CORE)}
    np.testing.assert_allclose(e[:, col["eyeBlinkLeft"]], b[:, 0])
    np.testing.assert_allclose(e[:, col["eyeBlinkRight"]], b[:, 1])
    for j, name in enumerate(BROW):
        np.testing.assert_allclose(e[:, col[name]], br[:, j])
    # the eye named in each event is the one that closes
    for start, end, eye in gt["blink_events"]:
        peak = b[start:end + 1].max(axis=0)
        if eye == 2:
            assert peak.min() > 0.5
        else:
            assert peak[eye] > 0.2 and peak[1 - eye] < 0.05
    # head motion stays small: |pitch| <= 5, |yaw| <= 8, |roll| <= 4 degrees (+ margin)
    deg = np.degrees(np.abs(gt["rotation_euler_xyz"])).max(axis=0)
    assert (deg <= np.array([5.5, 8.5, 4.5])).all(), deg
    R = gt["rotation_matrix"].astype(np.float64)
    np.testing.assert_allclose(R @ R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), R.shape), atol=1e-5)


def test_speech_and_dub_audio_present():
    speech = _need(SAMPLE / "speech")
    clips = sorted(speech.glob("*.wav"))
    assert len(clips) == 5
    assert (speech / "PROVENANCE.md").exists()
    for clip in clips + [_need(SUBJECT / "dub.wav")]:
        with wave.open(str(clip)) as w:
            assert w.getframerate() == 16000 and w.getnchannels() == 1
