"""Reading and writing media with the ffmpeg binary that ships in ``imageio-ffmpeg``.

Pure subprocess I/O, no decoding logic of our own: probe a file, stream its frames resampled to a target
frame rate, extract its audio as 16 kHz mono, and write an MP4 with audio.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import UserError

AUDIO_RATE = 16000


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary (from imageio-ffmpeg; no system ffmpeg needed)."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


@dataclass(frozen=True)
class MediaInfo:
    """What ffmpeg says about a file. ``fps``/``width``/``height`` are 0 when it has no video."""

    path: Path
    duration_s: float
    has_video: bool
    has_audio: bool
    width: int = 0
    height: int = 0
    fps: float = 0.0
    rotation: int = 0
    sample_aspect: float = 1.0  # pixel width over height (1: square pixels)


_DURATION = re.compile(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)")
_VIDEO = re.compile(r"Stream #\S+.*?: Video: .*?(\d{2,5})x(\d{2,5})")
_FPS = re.compile(r"(\d+(?:\.\d+)?) (?:fps|tbr)")
_SAR = re.compile(r"SAR (\d+):(\d+)")
_ROT = re.compile(r"rotate\s*:\s*(-?\d+)|displaymatrix: rotation of (-?\d+(?:\.\d+)?) degrees")


def probe(path: str | Path) -> MediaInfo:
    """Probe a media file. Raises :class:`UserError` when the file is missing or unreadable."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"file not found: {path}", "check the path (relative paths are from the current folder)")
    if path.is_dir():
        raise UserError(f"{path} is a folder, not a media file", "pass a video or audio file")
    if path.stat().st_size == 0:
        raise UserError(f"{path} is empty (0 bytes)", "the file was not written completely; export it again")
    r = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True)
    err = r.stderr
    if "Invalid data found" in err or "could not find codec" in err.lower() or "moov atom not found" in err:
        raise UserError(f"ffmpeg cannot read {path}: the file is corrupt or not a media file",
                        "re-export the file (H.264/MP4 or any format ffmpeg reads)")
    m = _DURATION.search(err)
    duration = 0.0
    if m:
        h, mi, s = m.groups()
        duration = int(h) * 3600 + int(mi) * 60 + float(s)
    video_line = next((ln for ln in err.splitlines() if ": Video:" in ln and "attached pic" not in ln), None)
    has_audio = any(": Audio:" in ln for ln in err.splitlines())
    width = height = 0
    fps = 0.0
    if video_line:
        vm = _VIDEO.search(video_line)
        if vm:
            width, height = int(vm.group(1)), int(vm.group(2))
        fm = _FPS.search(video_line)
        if fm:
            fps = float(fm.group(1))
    sar = 1.0
    sm = _SAR.search(video_line or "")
    if sm and int(sm.group(1)) > 0 and int(sm.group(2)) > 0:
        sar = int(sm.group(1)) / int(sm.group(2))
    rot = 0
    rm = _ROT.search(err)
    if rm:
        rot = int(float(rm.group(1) or rm.group(2)))
    if not video_line and not has_audio:
        raise UserError(f"ffmpeg found no video or audio stream in {path}", "pass a video file (mp4, mov, mkv, ...)")
    if rot % 180 != 0:  # ffmpeg auto-rotates on decode: report the displayed size
        width, height = height, width
    return MediaInfo(path, duration, video_line is not None, has_audio, width, height, fps, rot, sar)


def iter_frames(path: str | Path, fps: float, max_side: int | None = None,
                only: tuple[int, int] | None = None) -> Iterator[np.ndarray]:
    """Yield RGB frames (H, W, 3) uint8 resampled to ``fps`` (ffmpeg's fps filter: drops/duplicates
    frames by timestamp, so the video stays aligned with the audio). ``max_side`` downsizes on decode.
    ``only`` = (first, last): just those frames (inclusive, numbered as the full stream), exactly as the
    full decode gives them; ffmpeg drops the others, so a late frame does not cost the pipe all before it."""
    info = probe(path)
    if not info.has_video:
        raise UserError(f"{path} has no video stream", "pass a video of the subject, not an audio file")
    w, h = info.width, info.height
    vf = f"fps={fps}"
    if max_side and max(w, h) > max_side:
        s = max_side / max(w, h)
        w, h = int(round(w * s / 2) * 2), int(round(h * s / 2) * 2)
        vf += f",scale={w}:{h}:flags=area"
    keep = []
    if only is not None:  # passthrough: the muxer must not duplicate frames to fill the dropped ones
        vf += f",select='between(n\\,{int(only[0])}\\,{int(only[1])})'"
        keep = ["-fps_mode", "passthrough"]
    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-i", str(path), "-an", "-vf", vf, *keep,
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=w * h * 3 * 4)
    size = w * h * 3
    try:
        while True:
            buf = proc.stdout.read(size)
            if len(buf) < size:
                break
            yield np.frombuffer(buf, np.uint8).reshape(h, w, 3)
    finally:
        proc.stdout.close()
        proc.kill()
        proc.wait()


def read_audio(path: str | Path, rate: int = AUDIO_RATE) -> np.ndarray:
    """Decode the first audio stream of any file ffmpeg reads to mono float32 in [-1, 1] at ``rate`` Hz."""
    info = probe(path)
    if not info.has_audio:
        raise UserError(f"{path} has no audio stream",
                        "pass the dialogue with --audio FILE (wav, mp3, m4a, flac, ...)")
    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-i", str(path), "-vn", "-ac", "1",
           "-ar", str(rate), "-f", "s16le", "-acodec", "pcm_s16le", "-"]
    r = subprocess.run(cmd, capture_output=True)
    if r.returncode != 0:
        raise UserError(f"ffmpeg could not decode the audio of {path}: {r.stderr.decode(errors='replace')[-300:]}",
                        "re-export the audio as WAV or another common format")
    audio = np.frombuffer(r.stdout, np.int16).astype(np.float32) / 32768.0
    if audio.size == 0:
        raise UserError(f"the audio of {path} is empty", "pass a file with sound in it")
    return audio


def write_wav(path: str | Path, audio: np.ndarray, rate: int = AUDIO_RATE) -> None:
    """Write mono float audio in [-1, 1] as 16-bit PCM WAV."""
    import soundfile as sf

    sf.write(str(path), np.clip(audio, -1, 1), rate, subtype="PCM_16")


def write_video(path: str | Path, frames: Iterator[np.ndarray], fps: float, audio: str | Path | None = None,
                crf: int = 18) -> None:
    """Encode RGB frames (H, W, 3) uint8 to H.264 MP4, muxed with ``audio`` (cut to the video's length)."""
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise ValueError("no frames to write")
    h, w = first.shape[:2]
    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{w}x{h}", "-r", str(fps), "-i", "-"]
    if audio is not None:
        cmd += ["-i", str(audio), "-map", "0:v", "-map", "1:a", "-c:a", "aac", "-b:a", "128k", "-shortest"]
    # yuv420p needs even sizes
    cmd += ["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-c:v", "libx264", "-preset", "veryfast", "-crf", str(crf),
            "-pix_fmt", "yuv420p", "-movflags", "+faststart", str(path)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        proc.stdin.write(np.ascontiguousarray(first).tobytes())
        for f in frames:
            proc.stdin.write(np.ascontiguousarray(f).tobytes())
        proc.stdin.close()
    except BrokenPipeError:
        pass
    err = proc.stderr.read().decode(errors="replace")
    if proc.wait() != 0:
        raise RuntimeError(f"ffmpeg failed writing {path}: {err[-500:]}")
