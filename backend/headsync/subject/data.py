"""Training data of the head renderer, read from a prepared subject folder (DESIGN.md's contract).

:func:`load_subject_data` reads the per-frame arrays (pose, expression, audio features) and the split;
:func:`read_frame` reads one frame's crop and label map at the render resolution. A frame's *background*
is the crop with the head (labels 1-4, grown by a pixel) replaced by the plate, i.e. torso + background,
the layer the head NeRF is composited over (ER-NeRF renders its head on top of torso and background the
same way); :func:`plate_mask` says which pixels those are. ``training.frames`` stores the frames compactly.

What one training iteration draws from these arrays is :mod:`headsync.training.samplers`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..renderers.common.cameras import Intrinsics
from ..core.errors import UserError
from .folder import CORE_EXPRESSIONS, Subject
from .labels import HEAD_LABELS, LIPS
from .split import split_frames, subject_split



def required_files(audio_kind: str) -> tuple[str, ...]:
    """Subject files the renderer reads (each written atomically by its preparation stage)."""
    return ("subject.json", "frames", "masks", "background.jpg", "expression.npy", "pose.npz",
            f"audio_features/{audio_kind}.npy")


def check_prepared(subject: Subject, audio_kind: str) -> None:
    """Raise a :class:`UserError` naming what is missing when ``subject`` is not fully prepared."""
    if not subject.root.is_dir():
        raise UserError(f"subject folder {subject.root} does not exist",
                        "pass the folder written by `headsync prepare VIDEO --subject DIR`")
    missing = [f for f in required_files(audio_kind) if not subject.path(f).exists()]
    if missing:
        hint = f"run `headsync prepare VIDEO --subject {subject.root}` first"
        if missing == [f"audio_features/{audio_kind}.npy"]:
            hint = (f"this run uses the '{audio_kind}' audio feature, which the subject lacks: prepare it with "
                    f"that feature or train with the 'mel' feature")
        raise UserError(f"subject {subject.root} is not prepared: missing {', '.join(missing)}", hint)
    subject.frame_count()  # raises when the manifest has no source


@dataclass
class Pose:
    """Per-frame head pose ``X_cam = R @ X_head + T`` and the crop camera."""

    R: np.ndarray  # (N, 3, 3)
    T: np.ndarray  # (N, 3)
    K: Intrinsics  # at the crop resolution
    template: np.ndarray  # (P, 3) head units


def load_pose(subject: Subject) -> Pose:
    """``pose.npz`` -> :class:`Pose`, checked for shape and finiteness."""
    try:
        d = np.load(subject.path("pose.npz"))
        R, T = d["R"].astype(np.float64), d["T"].astype(np.float64)
        size = np.asarray(d["image_size"]).reshape(-1)
        K = Intrinsics(float(d["focal"]), float(d["cx"]), float(d["cy"]), int(size[0]))
        template = d["template"].astype(np.float32)
    except (KeyError, ValueError, OSError) as e:
        raise UserError(f"{subject.path('pose.npz')} is unreadable or incomplete ({e})",
                        "run `headsync prepare` again to redo the pose stage")
    if R.shape[1:] != (3, 3) or T.shape != (R.shape[0], 3) or not (np.isfinite(R).all() and np.isfinite(T).all()):
        raise UserError(f"{subject.path('pose.npz')} has bad shapes or non-finite values",
                        "run `headsync prepare` again to redo the pose stage")
    return Pose(R, T, K, template)


@dataclass
class SubjectData:
    """The per-frame arrays training needs, at render resolution ``size`` (the images themselves are read
    per frame, :func:`read_frame`, and stored by ``training.frames``).

    ``expression`` (N, 7) in [0, 1]; ``audio`` (N, D) audio-feature rows; ``pose`` at crop resolution;
    ``train``/``holdout`` frame indices (:mod:`headsync.subject.split`).
    """

    subject: Subject
    expression: np.ndarray
    audio: np.ndarray
    pose: Pose
    size: int
    fps: float
    train: np.ndarray
    holdout: np.ndarray

    @property
    def n_frames(self) -> int:
        return self.expression.shape[0]

    @property
    def K(self) -> Intrinsics:
        """The camera at render resolution."""
        return self.pose.K.scaled(self.size)


def plate_mask(labels: np.ndarray, grow: int = 1) -> np.ndarray:
    """Pixels (S, S) bool whose background is the plate: the head (labels 1-4) grown by ``grow`` px, so
    no face fringe remains in the layer the head is rendered over."""
    head = np.isin(labels, HEAD_LABELS).astype(np.uint8)
    if grow > 0:
        head = cv2.dilate(head, np.ones((2 * grow + 1, 2 * grow + 1), np.uint8))
    return head > 0


def background_layer(image: np.ndarray, labels: np.ndarray, plate: np.ndarray, grow: int = 1) -> np.ndarray:
    """The frame with its (grown) head replaced by the background plate: torso + background, what the head
    is rendered over. All (S, S, ...) arrays."""
    return np.where(plate_mask(labels, grow)[..., None], plate, image)


def read_frame(subject: Subject, i: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame ``i`` at ``size``: the crop (S, S, 3) uint8 RGB and its label map (S, S) uint8."""
    return read_rgb(subject.frame_path(i), size), read_labels(subject.mask_path(i), size)


def read_rgb(path: Path, size: int | None = None) -> np.ndarray:
    """An image file as RGB uint8, optionally resized to ``size`` x ``size`` (area filter)."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise UserError(f"cannot read image {path}", "the subject folder is damaged; run `headsync prepare` again")
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if size is not None and img.shape[0] != size:
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    return img


def read_labels(path: Path, size: int | None = None) -> np.ndarray:
    """A label map (PNG) as uint8, optionally resized with nearest neighbour (labels are not blended)."""
    lab = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if lab is None:
        raise UserError(f"cannot read label map {path}", "the subject folder is damaged; run `headsync prepare` again")
    if lab.ndim == 3:
        lab = lab[..., 0]
    if size is not None and lab.shape[0] != size:
        lab = cv2.resize(lab, (size, size), interpolation=cv2.INTER_NEAREST)
    return lab


def lips_box(labels: np.ndarray) -> np.ndarray:
    """Bounding box (x0, y0, x1, y1), exclusive end, of the lips label, or all -1."""
    return mask_box(labels == LIPS)


def mask_box(mask: np.ndarray) -> np.ndarray:
    """Bounding box (x0, y0, x1, y1), exclusive end, of a bool mask (S, S), or all -1 when it is empty."""
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return np.full(4, -1, np.int64)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.int64)


def load_audio_features(subject: Subject, kind: str, n: int) -> np.ndarray:
    """``audio_features/KIND.npy`` checked to have one finite row per frame."""
    path = subject.path(f"audio_features/{kind}.npy")
    try:
        feats = np.load(path).astype(np.float32)
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is unreadable ({e})", "run `headsync prepare` again")
    if feats.ndim != 2 or feats.shape[0] != n or not np.isfinite(feats).all():
        raise UserError(f"{path} has shape {feats.shape}, expected ({n}, D) finite rows",
                        "run `headsync prepare` again")
    return feats


def load_expression(subject: Subject, n: int) -> np.ndarray:
    expr = np.load(subject.path("expression.npy")).astype(np.float32)
    if expr.shape != (n, len(CORE_EXPRESSIONS)) or not np.isfinite(expr).all():
        raise UserError(f"{subject.path('expression.npy')} has shape {expr.shape}, expected ({n}, 7) finite",
                        "run `headsync prepare` again")
    return np.clip(expr, 0.0, 1.0)


def load_subject_data(subject: Subject, size: int, audio_kind: str) -> SubjectData:
    """Read a prepared subject at render resolution ``size`` (see :class:`SubjectData`)."""
    check_prepared(subject, audio_kind)
    n = subject.frame_count()
    pose = load_pose(subject)
    if pose.R.shape[0] != n:
        raise UserError(f"pose.npz has {pose.R.shape[0]} frames, the subject {n}", "run `headsync prepare` again")
    expr = load_expression(subject, n)
    audio = load_audio_features(subject, audio_kind, n)
    train, holdout = split_frames(n, subject_split(subject).holdout_fraction)
    return SubjectData(subject, expr, audio, pose, size, float(subject.source()["fps"]), train, holdout)
