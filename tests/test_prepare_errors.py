"""Bad input to `headsync prepare`: a clear message and hint, exit code 2, and nothing marked done."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from headsync.core import media
from headsync.subject.folder import Subject
from media_fixtures import tone


def headsync(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "headsync.cli", *args], capture_output=True, text=True, timeout=300)


def still_face_video(path: Path, seconds: float, audio: Path | None = None) -> Path:
    """A static video of the astronaut portrait (a real face), 25 fps."""
    from skimage import data

    img = np.ascontiguousarray(data.astronaut()[::2, ::2])
    media.write_video(path, (img for _ in range(int(seconds * 25))), 25.0, audio=audio)
    return path


def assert_user_error(r: subprocess.CompletedProcess, match: str) -> None:
    assert r.returncode == 2, r.stderr[-2000:]
    assert match in r.stderr, r.stderr
    assert "hint:" in r.stderr


def test_missing_and_corrupt_files(tmp_path):
    assert_user_error(headsync("prepare", str(tmp_path / "nope.mp4"), "--subject", str(tmp_path / "s")), "not found")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x01garbage" * 1000)
    assert_user_error(headsync("prepare", str(bad), "--subject", str(tmp_path / "s")), "cannot read")
    empty = tmp_path / "empty.mp4"
    empty.touch()
    assert_user_error(headsync("prepare", str(empty), "--subject", str(tmp_path / "s")), "empty")


def test_audio_only_file(tmp_path):
    wav = tone(tmp_path / "speech.wav", 5.0)
    assert_user_error(headsync("prepare", str(wav), "--subject", str(tmp_path / "s")), "no video stream")


def test_too_short_and_no_face(tmp_path):
    short = still_face_video(tmp_path / "short.mp4", 1.0)
    assert_user_error(headsync("prepare", str(short), "--subject", str(tmp_path / "s1")), "at least")
    empty_room = tmp_path / "room.mp4"  # a slowly panning gradient: moving picture, nobody in it
    grad = np.tile(np.linspace(0, 255, 256, dtype=np.uint8)[None, :, None], (128, 1, 3))
    media.write_video(empty_room, (np.ascontiguousarray(grad[:, i:i + 128]) for i in range(100)), 25.0)
    assert_user_error(headsync("prepare", str(empty_room), "--subject", str(tmp_path / "s2")), "no face")
    assert not Subject(tmp_path / "s2").load()["stages"]


@pytest.mark.slow
def test_no_audio_then_mismatched_audio(tmp_path):
    video = still_face_video(tmp_path / "still.mp4", 4.0)
    subj = tmp_path / "s"
    assert_user_error(headsync("prepare", str(video), "--subject", str(subj), "--preset", "preview"), "no audio track")
    stages = Subject(subj).load()["stages"]
    assert stages["crop"]["done"] and "audio" not in stages and "landmarks" not in stages
    r = headsync("prepare", str(video), "--audio", str(tone(tmp_path / "a.wav", 1.0)), "--subject", str(subj),
                 "--preset", "preview", "--json-progress")
    assert r.returncode == 2
    last = json.loads(r.stdout.strip().splitlines()[-1])
    assert last["event"] == "error" and "audio is 1.0 s long" in last["message"] and last["hint"]


def test_still_image_is_named_as_such(tmp_path):
    """Issue 11: a photo was reported as "0.0 s long"."""
    import cv2
    import skimage.data

    photo = tmp_path / "portrait.jpg"
    cv2.imwrite(str(photo), skimage.data.astronaut()[..., ::-1])
    assert_user_error(headsync("prepare", str(photo), "--subject", str(tmp_path / "s")), "still image")
