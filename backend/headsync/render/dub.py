"""``headsync render``: a trained head + any audio (+ curves) -> PNG frames, an MP4 with the audio, curves.json.

Frame ``t`` of the output is driven by row ``t`` of the new audio's features and by the expression (and
head pose) of the curves; its camera, torso and background come from source frame ``ping_pong(t)``, so the
plate loops back and forth when the audio outlasts the video. The head is rendered at the training
resolution and the Portrait-Sync Generator (:mod:`headsync.post.portrait`) puts it back into the source frame at
full resolution; ``portrait=False`` writes the crop renders instead (head over torso + plate). The torso
under the head comes from the subject's torso path (:mod:`headsync.post.torso`: source, restorer, field).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np
import torch

from .. import curves_format
from ..face_sync import lip_features
from ..core import keep, media
from ..core.devices import pick_device, set_threads
from ..renderers.base import Renderer
from ..renderers.common.cameras import Camera, camera_to_head
from ..renderers.common.conditioning import window_indices
from ..core.config import load_preset, section
from ..curves import Curves, captured_curves, ping_pong, pose_matrices, read_curves, write_curves
from ..subject.data import check_prepared, load_pose, read_labels, read_rgb
from ..core.errors import UserError
from ..post.occluders import HandFinder
from ..post.portrait import PortraitConfig, compose, head_support, limit_render
from ..post.torso.path import TorsoPath
from ..core.progress import Reporter
from ..core.atomic import staging_dir, write_json_atomic
from ..subject.folder import Subject
from ..training.checkpoints import load_renderer, run_dir
from ..tasks import shot_of
from .folder import MANIFEST as RENDER_MANIFEST, RENDERS, check_render_folder, manifest as render_manifest


@dataclass(frozen=True)
class RenderConfig:
    """The ``[render]`` table."""

    device: str = "auto"
    threads: int = 0
    blur: float = 0.02  # Portrait-Sync: Gaussian sigma of the merge mask, fraction of the crop side
    grow: float = 0.02  # Portrait-Sync: growth of the face region before blurring
    crf: int = 18  # H.264 quality of render.mp4
    keep_occluders: bool = True  # Portrait-Sync: hands in front of the face stay the source's (post/occluders.py)


def features_for_audio(subject: Subject, kind: str, audio: np.ndarray, fps: float, n_frames: int) -> np.ndarray:
    """Per-frame audio features (n_frames, D) of a new audio track, of the kind the model was trained on
    (``mel``, or ``ave`` with the subject's own audio-visual encoder): see ``lip_features``."""
    return lip_features.for_audio(subject, kind, audio, fps, n_frames)


def preload() -> None:
    """What the service's warm worker loads once, before its first Preview Frame: the hand detector
    (MediaPipe's import is most of a one-frame render's setup); torch and OpenCV came with this module."""
    keep.kept("hands", None, HandFinder)


class SourceFrames:
    """Full-resolution source frames by index, decoded once and kept JPEG-compressed in memory.

    The ping-pong loop revisits frames out of order; keeping every decoded frame raw would cost gigabytes
    for HD footage, compressed it is a few megabytes per hundred frames.
    """

    def __init__(self, path: str | Path, fps: float, count: int, size: tuple[int, int] | None,
                 keep: set[int] | None = None):
        # ``keep``: the only indices a frame-range render needs (ffmpeg passes on only their span)
        self._jpeg: dict[int, bytes] = {}
        first = min(keep) if keep else 0
        span = (first, max(keep)) if keep else None
        for i, frame in enumerate(media.iter_frames(path, fps, only=span), start=first):
            if i >= count:
                break
            if keep is not None and i not in keep:
                continue
            if size is not None and (frame.shape[1], frame.shape[0]) != size:
                frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 97])
            self._jpeg[i] = buf.tobytes()
        if not self._jpeg:
            raise UserError(f"no frames could be decoded from the source video {path}",
                            "the subject's source video changed or is damaged; prepare the subject again")

    def __len__(self) -> int:
        return len(self._jpeg)

    def __getitem__(self, i: int) -> np.ndarray:
        data = self._jpeg.get(i)
        if data is None:  # past the end of a video shorter than its subject.json says: its last frame
            data = self._jpeg[max(k for k in self._jpeg if k <= i) if min(self._jpeg) <= i else min(self._jpeg)]
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def render_id(audio_path: Path, curves_path: Path | None, run: str) -> str:
    """A short, sortable id: UTC timestamp + a hash of the inputs."""
    h = hashlib.sha1()
    h.update(audio_path.read_bytes())
    if curves_path is not None:
        h.update(curves_path.read_bytes())
    h.update(run.encode())
    h.update(str(time.time_ns()).encode())
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + h.hexdigest()[:6]


def load_curves(subject: Subject, curves_path: Path | None, n_frames: int, expressions: str = "captured",
                audio: np.ndarray | None = None, reporter: Reporter | None = None) -> Curves:
    """The curves of the render: the file's (validated against ``n_frames``), or the captured ones with the
    expression of ``expressions`` (captured | generated from ``audio`` | a curves.json or Live Link CSV, both
    mapped through the subject's VQ-VAE: ``expressions.express``)."""
    if curves_path is not None:
        if expressions != "captured":
            raise UserError("--curves and --expressions both set the expression",
                            "pass one: --curves FILE (used as it is) or --expressions generated|FILE")
        return read_curves(curves_path, n_frames)
    curves = captured_curves(subject, n_frames)
    if expressions != "captured":
        from ..expressions.express import render_expressions

        expr = render_expressions(subject, expressions, audio, n_frames, reporter)
        curves = Curves(curves.fps, curves.frame_start, expr.expression, curves.rotation, curves.translation,
                        expr.source)
    return curves


def render_frames(subject: Subject, renderer: Renderer, feats: np.ndarray, curves: Curves, portrait: bool,
                  rcfg: RenderConfig, device: torch.device, reporter: Reporter, src_idx: np.ndarray | None = None,
                  feat_rows: np.ndarray | None = None, torso: TorsoPath | None = None) -> Iterator[np.ndarray]:
    """Yield the output frames (uint8 RGB): full-resolution portraits, or crops (S, S) when ``portrait`` is False.

    Output frame ``t`` uses source frame ``src_idx[t]`` (default: the ping-pong loop) for camera, torso and
    plate (and, through the renderer's conditions, that frame's per-frame state), and audio-feature row
    ``feat_rows[t]`` (default ``t``) of ``feats`` (n, D). ``torso`` (default: the subject's trained torso
    path, :class:`post.torso.path.TorsoPath`) gives the layer under the head and fills its gaps.
    """
    n_src = subject.frame_count()
    n_out = curves.frame_count
    src_idx = ping_pong(n_src, n_out) if src_idx is None else np.asarray(src_idx)
    feat_rows = np.arange(n_out) if feat_rows is None else np.asarray(feat_rows)
    pose = load_pose(subject)
    S = pose.K.size
    res = renderer.output_resolution(S)
    K = pose.K.scaled(res)
    if curves.has_pose:
        R, T = pose_matrices(curves)
    else:
        R, T = pose.R[src_idx], pose.T[src_idx]
    Rc, o = camera_to_head(R, T)
    Rc = torch.as_tensor(Rc, dtype=torch.float32, device=device)
    o = torch.as_tensor(o, dtype=torch.float32, device=device)
    feats_t = torch.as_tensor(feats, dtype=torch.float32, device=device)
    expr_t = torch.as_tensor(curves.expression, dtype=torch.float32, device=device)
    plate = read_rgb(subject.path("background.jpg"), S)
    m = subject.load()
    box = tuple(m.get("crop", {}).get("box", (0.0, 0.0, float(S))))
    source = None
    if portrait:
        src = m["source"]
        path = Path(src.get("path", ""))
        if not path.is_file():
            raise UserError(f"the subject's source video {path} is missing, so the portrait cannot be composited",
                            "put the video back at that path, or render with --no-portrait")
        size = (int(src["width"]), int(src["height"])) if src.get("width") else None
        source = SourceFrames(path, float(src["fps"]), int(src_idx.max()) + 1, size, set(map(int, src_idx)))
    pcfg = PortraitConfig(blur=rcfg.blur, grow=rcfg.grow)
    torso = torso or TorsoPath.for_subject(subject, device)
    hands = keep.kept("hands", None, HandFinder) if portrait and rcfg.keep_occluders else None
    reporter.start("render", n_out)
    for t in range(n_out):
        j = int(src_idx[t])
        crop = read_rgb(subject.frame_path(j), S)
        labels = read_labels(subject.mask_path(j), S)
        layer = torso.layer(crop, labels, plate, R[t], T[t], pose.K, (pose.R[j], pose.T[j]))
        bg_r = cv2.resize(layer.background, (res, res), interpolation=cv2.INTER_AREA)
        win = torch.as_tensor(window_indices(feat_rows[t:t + 1], feats.shape[0], renderer.audio_window),
                              device=device)
        with torch.no_grad():
            cond = renderer.conditions(feats_t[win], expr_t[t:t + 1], torch.tensor([j], device=device))
            out = renderer.render(Camera(K, Rc[t], o[t]), cond, torch.as_tensor(bg_r, device=device))
        opacity = out["opacity"].cpu().numpy()
        head = cv2.resize(out["head"].cpu().numpy(), (S, S), interpolation=cv2.INTER_LINEAR)
        opacity = np.clip(cv2.resize(opacity, (S, S), interpolation=cv2.INTER_LINEAR), 0, 1)
        cropf = crop.astype(np.float32) / 255.0
        if layer.region is None:  # the head stays over the source's own head and neck (Portrait-Sync)
            head, opacity = limit_render(head, opacity, head_support(labels, pcfg))
        img = torso.composite(head, opacity, layer, labels, cropf)
        if portrait:
            frame = compose(source[j], box, head, opacity, layer.background, labels, cropf, pcfg,
                            hands.mask(crop) if hands is not None else None, img, layer.region)
        else:
            frame = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
        reporter.advance(1)
        yield frame


def render(subject: Subject, audio_path: Path, run: str = "default", curves_path: Path | None = None,
           out: Path | None = None, portrait: bool = True, rcfg: RenderConfig | None = None,
           reporter: Reporter | None = None, expressions: str = "captured", shot: str | None = None,
           frames: str | None = None, torso_mode: str | None = None) -> dict[str, Any]:
    """Render ``audio_path`` with run ``run``; returns the artifacts (paths, frame count, timing).

    ``rcfg`` defaults to the ``[render]`` table of the preset the run was trained with; ``expressions`` is
    the expression source (see :func:`load_curves`). ``out`` must be a folder
    :func:`headsync.render.folder.check_render_folder` allows for ``shot`` (default: the audio file); the
    folder gets a ``render.json`` naming the subject and the shot. ``frames`` ("A-B",
    in the curves' frame numbers: ``frame_start`` ..., 1-based without ``curves``) renders only those
    frames, exactly as the whole render would draw them (Blender's Preview Frame): their PNGs keep their
    place in the numbering (``frames/{row:06d}.png``) and no ``render.mp4`` is written. ``torso_mode``
    picks another of the torso paths the subject's ``torso`` job trained (default: that job's mode).
    """
    from ..core.progress import silent

    reporter = reporter or silent()
    rdir = run_dir(subject, run)
    rcfg = rcfg or run_render_config(rdir)
    set_threads(rcfg.threads)
    device = pick_device(rcfg.device, "[render] device")
    ckpt = rdir / "checkpoint.pt"
    # kept between jobs only in the service's warm worker (core/keep.py); built afresh everywhere else
    renderer, _ = keep.kept("renderer", (keep.file_key(ckpt), str(device)), lambda: load_renderer(ckpt, device))
    kind = renderer.meta.audio_feature
    check_prepared(subject, kind)
    fps = float(subject.source()["fps"])
    audio = keep.kept("audio", keep.file_key(audio_path), lambda: media.read_audio(audio_path))
    n_out = int(round(audio.size / media.AUDIO_RATE * fps))
    if n_out < 1:
        raise UserError(f"the audio {audio_path} is shorter than one frame", "pass a longer dialogue clip")
    curves = load_curves(subject, curves_path, n_out, expressions, audio, reporter)
    first, last = frame_rows(frames, curves)
    made_of = [keep.file_key(p) for p in (audio_path, subject.path("subject.json"),
                                          subject.path("audio_features/ave_encoder.pt"))]
    feats = keep.kept("audio_features", (*made_of, kind, fps, n_out),
                      lambda: features_for_audio(subject, kind, audio, fps, n_out))
    out = out or subject.path(f"{RENDERS}/{render_id(audio_path, curves_path, run)}")
    shot = shot or str(Path(audio_path).resolve())
    check_render_folder(out, subject.root, shot)
    rows = np.arange(first, last + 1)
    t0 = time.monotonic()
    with staging_dir(out) as tmp:
        write_json_atomic(tmp / RENDER_MANIFEST, render_manifest(subject.root, shot, run=run, audio=str(audio_path),
                                                                 curves=str(curves_path) if curves_path else None))
        (tmp / "frames").mkdir()
        torso = TorsoPath.for_subject(subject, device, torso_mode)
        drawn = render_frames(subject, renderer, feats, curves_rows(curves, rows), portrait, rcfg, device, reporter,
                              src_idx=ping_pong(subject.frame_count(), n_out)[rows], feat_rows=rows, torso=torso)
        for t, frame in zip(rows, drawn):
            cv2.imwrite(str(tmp / "frames" / f"{t:06d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        seconds = time.monotonic() - t0
        write_curves(tmp / "curves.json", curves)
        whole = len(rows) == n_out
        if whole:
            pngs = sorted((tmp / "frames").glob("*.png"))
            media.write_video(tmp / "render.mp4", (cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in pngs),
                              fps, audio=audio_path, crf=rcfg.crf)
        check_render_folder(out, subject.root, shot)  # again: the folder may have changed while rendering
    return {"out": str(out), "frames": str(out / "frames"), "video": str(out / "render.mp4") if whole else None,
            "curves": str(out / "curves.json"), "frame_count": n_out, "fps": fps,
            "frame_range": [curves.frame_start + first, curves.frame_start + last],
            "render_fps": round(len(rows) / max(seconds, 1e-6), 3), "portrait": portrait,
            "curves_source": curves.source, "torso": torso.mode}


def frame_rows(frames: str | None, curves: Curves) -> tuple[int, int]:
    """The first and last row (inclusive) of ``curves`` that ``frames`` ("A-B", curves' numbering) names."""
    if frames is None:
        return 0, curves.frame_count - 1
    try:
        return curves_format.parse_frame_range(frames, curves.frame_start, curves.frame_count)
    except curves_format.CurvesError as e:
        raise UserError(f"render: {e.message}", e.hint) from None


def curves_rows(curves: Curves, rows: np.ndarray) -> Curves:
    """The rows ``rows`` of ``curves`` (a frame range of a render)."""
    pose = curves.has_pose
    return Curves(curves.fps, curves.frame_start + int(rows[0]), curves.expression[rows],
                  curves.rotation[rows] if pose else None, curves.translation[rows] if pose else None, curves.source)


def run_render_config(rdir: Path) -> RenderConfig:
    """The ``[render]`` table of the preset recorded in the run's config.json (defaults without one)."""
    try:
        name = json.loads((rdir / "config.json").read_text()).get("preset")
    except (OSError, json.JSONDecodeError):
        name = None
    if not name:
        return RenderConfig()
    try:
        return section(load_preset(name), "render", RenderConfig)
    except UserError:  # the preset was removed or renamed since training: its defaults are fine
        return RenderConfig()


def render_task(params: dict[str, Any], reporter: Reporter) -> dict[str, Any]:
    """Entry of the ``render`` job: ``subject``, ``audio``, ``run``, ``curves``, ``out``, ``portrait``,
    ``expressions`` (captured | generated), ``expressions_file`` (a curves.json or Live Link CSV), ``frames``,
    ``torso`` (a torso mode)."""
    subject = Subject(Path(params["subject"]).expanduser().resolve())
    if not subject.exists():
        raise UserError(f"subject {subject.root} is not prepared (no subject.json)",
                        "run `headsync prepare VIDEO --subject DIR` and `headsync train` first")
    audio = Path(params["audio"]).expanduser().resolve()
    media.probe(audio)  # a missing/unreadable file is a UserError before the model loads
    curves = Path(params["curves"]).expanduser().resolve() if params.get("curves") else None
    out = Path(params["out"]).expanduser().resolve() if params.get("out") else None
    expressions = params.get("expressions") or "captured"
    if params.get("expressions_file"):
        if expressions != "captured":
            raise UserError("expressions and expressions_file both set the expression source", "pass one of them")
        expressions = str(Path(params["expressions_file"]).expanduser().resolve())
    return render(subject, audio, params.get("run") or "default", curves, out,
                  bool(params.get("portrait", True)), None, reporter, expressions, shot=shot_of(params),
                  frames=params.get("frames"), torso_mode=params.get("torso"))
