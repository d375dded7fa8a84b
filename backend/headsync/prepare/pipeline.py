"""``headsync prepare``: video (+ audio) -> a prepared subject folder, stage by stage.

Stages run in order; each is skipped when already done with the same inputs and settings, so an
interrupted run resumes where it stopped and a re-run with a new setting redoes only what it affects.

    crop -> audio -> landmarks -> landmarks68 (optional face-alignment tracker) -> masks,
    expression (Facial Animation Capturer), pose (Head-Sync Stabilizer), mel, ave (audio-visual encoder)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import audio as audio_stage
from . import audio_features, capture as expression, checks, landmarks68, masks, stabilizer, tracking
from ..face_sync import av_encoder
from ..core import registry
from ..core.config import AUTO, Preset, as_dict, load_preset, section
from ..core.errors import UserError
from ..core.progress import Reporter
from .stages import run_stage
from ..subject.folder import Subject
from ..subject.split import SplitConfig
from ..tasks import FPS_RANGE, RESOLUTION_RANGE


@dataclass(frozen=True)
class PrepareConfig:
    """The ``[prepare]`` table: frame rate of the subject and side of its square crops."""

    fps: float = 25.0
    resolution: int = 512


#: The stages in the order they run.
STAGES = (tracking.CROP, audio_stage.AUDIO, tracking.LANDMARKS, landmarks68, masks, expression, stabilizer,
          audio_features, av_encoder)


def stage_configs(preset: Preset, video: Path, audio: Path | None, fps: float | None,
                  resolution: int | None) -> dict[str, Any]:
    """Each stage's config from the preset, with the inputs and command-line overrides filled in."""
    pcfg = section(preset, "prepare", PrepareConfig, fps=fps, resolution=resolution)
    split = section(preset, "split", SplitConfig)
    sound = audio or video
    # The video's hash identifies the input: a different file under the same name redoes everything.
    video_sha = tracking.file_sha256(video)
    sound_sha = video_sha if sound == video else tracking.file_sha256(sound)
    cfgs = {}
    for st in STAGES:
        extra: dict[str, Any] = {}
        if st is tracking.CROP:
            extra = {"video": str(video), "sha256": video_sha, "fps": pcfg.fps}
        elif st is tracking.LANDMARKS:
            extra = {"resolution": pcfg.resolution}
        elif st is audio_stage.AUDIO:
            extra = {"path": str(sound), "sha256": sound_sha}
        elif st is av_encoder:
            extra = {"holdout_fraction": split.holdout_fraction}
        cfgs[st.NAME] = section(preset, st.NAME, st.Config, **extra)
    # Record what the installed models make of "auto" settings, so installing the face_landmarker model
    # later redoes the capture (blendshapes) and the pose (canonical template, focal search).
    exp, pose = cfgs[expression.NAME], cfgs[stabilizer.NAME]
    cfgs[expression.NAME] = replace(exp, method=expression.resolve_method(exp.method)[0])
    cfgs[stabilizer.NAME] = replace(pose, use_canonical=pose.use_canonical and registry.find("face_landmarker") is not None)
    return cfgs


def prepare_subject(video: str | Path, subject_dir: str | Path, audio: str | Path | None = None,
                    preset: str | Preset = AUTO, fps: float | None = None, resolution: int | None = None,
                    reporter: Reporter | None = None, force: bool = False) -> Subject:
    """Prepare ``video`` into ``subject_dir`` (created). Returns the :class:`Subject`.

    Raises :class:`UserError` for bad input; nothing is marked done that is not.
    """
    reporter = reporter or Reporter()
    video = Path(video).expanduser().resolve()
    audio = Path(audio).expanduser().resolve() if audio else None
    preset = preset if isinstance(preset, Preset) else load_preset(preset)
    for p in filter(None, (video, audio)):
        if not p.is_file():
            raise UserError(f"file not found: {p}", "check the path")
    lo, hi = RESOLUTION_RANGE
    if resolution is not None and not lo <= resolution <= hi:
        raise UserError(f"--resolution {resolution} is out of range", f"use {lo}..{hi} (the papers use 512)")
    lo, hi = FPS_RANGE
    if fps is not None and not lo <= fps <= hi:
        raise UserError(f"--fps {fps} is out of range", f"use {lo:g}..{hi:g} (the papers use 25)")
    subject = Subject(Path(subject_dir).expanduser().resolve())
    subject.root.mkdir(parents=True, exist_ok=True)
    cfgs = stage_configs(preset, video, audio, fps, resolution)
    # The split every learner of this subject uses (the encoder below, the renderer later): subject.split.
    subject.update(split=as_dict(section(preset, "split", SplitConfig)))
    t0 = time.perf_counter()
    for i, st in enumerate(STAGES):
        reporter.begin_step(i, len(STAGES), getattr(st, "PHASES", 1))
        run_stage(st, subject, cfgs[st.NAME], reporter, force=force)
    reporter.begin_step(0, 0)  # what follows (train, render) is not a step of prepare
    subject.update(preset=preset.name)
    for w in checks.footage_warnings(subject, cfgs[tracking.LANDMARKS.NAME].resolution):
        if w not in subject.load().get("warnings", []):
            reporter.message(w, level="warning")
        subject.warn(w)
    reporter.message(f"prepared {subject.frame_count()} frames into {subject.root} in {time.perf_counter() - t0:.1f} s")
    return subject


def prepare_task(params: dict[str, Any], reporter: Reporter) -> dict[str, Any]:
    """Job entry point (CLI and service): see ``tasks.TASKS['prepare']`` for the parameters."""
    s = prepare_subject(params["video"], params["subject"], params.get("audio"), params.get("preset") or AUTO,
                        params.get("fps"), params.get("resolution"), reporter)
    m = s.load()
    return {"subject": str(s.root), "frames": m["source"]["frame_count"], "warnings": m.get("warnings", []),
            "stages": {k: v.get("seconds") for k, v in m.get("stages", {}).items()}}
