"""``headsync eval --sync``: how well a video's lips follow its sound, judged by the subject's discriminator.

In the manner of SyncNet's LSE-D / LSE-C (Chung & Zisserman; used by Wav2Lip and the SyncTalk papers), but
with HeadSync's own per-subject lip-sync discriminator (:mod:`headsync.face_sync.syncnet`), so the numbers are
*not* comparable with published LSE figures. We call them:

* **HS-Sync distance** — mean distance between the unit face and audio embeddings at the best offset
  (lower is better; 0..sqrt(2));
* **HS-Sync confidence** — median over offsets of that mean distance minus its minimum (higher is better:
  how clearly one offset stands out);
* **no sync found** — when the confidence is no higher than what the same video reaches against its own
  sound shifted far out of sync (the 95th percentile over 40 such shifts, calibrated per clip);
* **offset** — the audio shift, in video frames, that fits best: ``+k`` means the sound comes ``k`` frames
  after the picture (video frame ``i`` matches audio at frame ``i + k``); 0 is in sync.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from . import syncnet
from ..core.errors import UserError
from .mouth_crops import Clip, video_clip
from ..core.progress import Reporter
from ..subject.folder import Subject

MAX_OFFSET = 15  # frames either way (0.6 s at 25 fps), as SyncNet's evaluation scans
NULL_TRIALS = 40  # circular audio shifts that calibrate "no sync found"
NULL_QUANTILE = 0.95


def _embeddings(net: syncnet.SyncNet, clip: Clip, max_offset: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit face embeddings of the usable window centres, unit audio embeddings of every frame, the centres."""
    n, half = clip.n_frames, net.spec.frames // 2
    centres = np.arange(half, n - half)
    centres = centres[clip.valid[centres]]
    if centres.size < 2 * max_offset + 1:
        raise UserError(f"the clip has {centres.size} usable frames, too few to judge offsets up to "
                        f"+-{max_offset}", "judge a longer clip (a few seconds at least)")
    face = syncnet.unit(syncnet.embed_faces(net, clip.crops, centres))
    audio = syncnet.unit(syncnet.embed_audio(net, clip.mel, np.arange(n), clip.fps))
    return face, audio, centres


def _curve(face: np.ndarray, audio: np.ndarray, centres: np.ndarray, offsets: np.ndarray, roll: int = 0
           ) -> np.ndarray:
    """Mean face-audio distance per offset; ``roll`` shifts the audio circularly first (0: as recorded)."""
    n = audio.shape[0]
    audio = np.roll(audio, roll, axis=0) if roll else audio
    dist = np.empty(offsets.size)
    for k, off in enumerate(offsets):
        inside = (centres + off >= 0) & (centres + off < n)
        dist[k] = np.linalg.norm(face[inside] - audio[centres[inside] + off], axis=1).mean()
    return dist


def offset_curve(net: syncnet.SyncNet, clip: Clip, max_offset: int = MAX_OFFSET) -> tuple[np.ndarray, np.ndarray]:
    """Mean embedding distance for each audio offset ``-max_offset..max_offset``: (offsets, distances).

    Each offset averages over the video windows (valid faces, whole window in the clip) whose shifted
    audio frame lies inside the clip, so no offset is scored on repeated edge audio."""
    face, audio, centres = _embeddings(net, clip, max_offset)
    offsets = np.arange(-max_offset, max_offset + 1)
    return offsets, _curve(face, audio, centres, offsets)


def confidence(dist: np.ndarray) -> float:
    """HS-Sync confidence of a distance curve: its median minus its minimum."""
    return float(np.median(dist) - dist.min())


def null_confidence(face: np.ndarray, audio: np.ndarray, centres: np.ndarray, offsets: np.ndarray,
                    trials: int = NULL_TRIALS, seed: int = 0) -> float:
    """The confidence unrelated sound reaches on this clip: the ``NULL_QUANTILE`` quantile over ``trials``
    circular shifts of the audio by more than twice the offset range (so no shift lands near sync).
    A confidence at or below it is no evidence of sync: the calibration is per clip, as embeddings'
    spread differs between subjects and videos."""
    n = audio.shape[0]
    span = 2 * int(np.abs(offsets).max()) + 1
    if n <= 2 * span:
        return float("nan")
    rng = np.random.default_rng(seed)
    rolls = rng.integers(span, n - span, trials)
    return float(np.quantile([confidence(_curve(face, audio, centres, offsets, int(r))) for r in rolls],
                             NULL_QUANTILE))


def judge(net: syncnet.SyncNet, clip: Clip, max_offset: int = MAX_OFFSET) -> dict[str, Any]:
    """HS-Sync figures of ``clip`` (see the module docstring), plus the whole distance curve and whether
    any sync was found (confidence above :func:`null_confidence`)."""
    face, audio, centres = _embeddings(net, clip, max_offset)
    offsets = np.arange(-max_offset, max_offset + 1)
    dist = _curve(face, audio, centres, offsets)
    best = int(np.argmin(dist))
    conf = confidence(dist)
    null = null_confidence(face, audio, centres, offsets)
    found = bool(conf > null) if np.isfinite(null) else None
    return {"hs_sync_offset_frames": int(offsets[best]),
            "hs_sync_confidence": round(conf, 4),
            "hs_sync_null_confidence": None if not np.isfinite(null) else round(null, 4),
            "hs_sync_found": found,
            "hs_sync_distance": round(float(dist[best]), 4),
            "hs_sync_distance_at_0": round(float(dist[offsets == 0][0]), 4),
            "offsets": offsets.tolist(), "distances": [round(float(d), 4) for d in dist]}


def verdict(result: dict[str, Any]) -> str:
    """One line for people: the offset and confidence, or "no sync found" when the confidence is within
    what unrelated sound gives."""
    conf, null = result["hs_sync_confidence"], result.get("hs_sync_null_confidence")
    if result.get("hs_sync_found") is False:
        return (f"no sync found: confidence {conf:.3f} is within what unrelated sound reaches on this clip "
                f"({null:.3f}); the lips do not follow this sound")
    tail = "" if null is None else f" (unrelated sound: up to {null:.3f})"
    return (f"offset {result['hs_sync_offset_frames']:+d} frames, confidence {conf:.3f}{tail}, "
            f"distance {result['hs_sync_distance']:.3f}")


def latest_render(subject: Subject) -> Path:
    """The newest ``renders/*/render.mp4`` of the subject."""
    found = sorted(subject.path("renders").glob("*/render.mp4"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise UserError(f"subject {subject.root} has no renders to judge",
                        "render one first (`headsync render ...`) or pass the video: `--sync VIDEO`")
    return found[-1]


def sync_task(params: dict[str, Any], reporter: Reporter) -> dict[str, Any]:
    """Entry point of ``headsync eval --subject DIR --sync [VIDEO] [--audio FILE]``.

    ``params``: ``subject``; ``video`` (a path, or ``latest``/None for the newest render); ``audio`` (sound
    to judge against instead of the video's own track)."""
    subject = Subject(Path(params["subject"]).expanduser().resolve())
    if not subject.exists():
        raise UserError(f"{subject.root} is not a prepared subject", "pass the folder made by `headsync prepare`")
    net, fps = syncnet.load(subject.path("audio_features/syncnet.pt"))
    video = params.get("video")
    video = latest_render(subject) if video in (None, "", "latest") else Path(video).expanduser().resolve()
    clip = video_clip(video, fps, net.spec.crop_height, net.spec.crop_width, params.get("audio"), reporter)
    result = judge(net, clip)
    line = verdict(result)
    reporter.message(f"HS-Sync on {video.name}: {line}", level="warning" if result["hs_sync_found"] is False else "info")
    return {"video": str(video), "frames": clip.n_frames, "verdict": line, **result}
