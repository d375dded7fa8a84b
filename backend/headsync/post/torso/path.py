"""The render-time torso path: the layer a rendered head is laid over, and how its gaps are filled.

Renderer-agnostic: it takes what every renderer returns (``head`` premultiplied, ``opacity``, at the crop
side S) and the source frame's crop, labels and pose, so the NeRF and the Gaussian renderer share it.

* ``source``: the source torso + plate (:func:`subject.data.background_layer`), uncovered face pixels in
  the neck colour (:func:`post.portrait.fill_gaps`), as before this package existed;
* ``restorer``: the source crop with the face mask expanded by a fixed 15 px (at 512) removed, the head
  over it, the Torso-Inpainting Restorer filling whatever of the removed band the head leaves uncovered;
* ``field``: the torso field's neck and shoulders over the plate, rendered at the source frame's pose with
  the neck bent to the output pose (:mod:`.neck`); the merge region is the whole person, source and
  rendered, so an edited pose neither clips the head nor leaves the source's torso behind;
* ``field+restorer``: the field's layer, with the restorer filling the band as above.

The result goes to :func:`post.portrait.compose` (``composite`` and ``region``), the one composite into
the full-resolution plate.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import numpy as np
import torch

from ...renderers.common.cameras import Intrinsics, project
from ...subject.data import background_layer
from ...subject.folder import Subject
from ...subject.labels import HEAD_LABELS
from .. import portrait
from . import bands
from . import field as torso_field
from . import neck
from . import restorer as torso_restorer
from .config import FIELD_FILE, RECORD_FILE, RESTORER_FILE, TorsoConfig  # noqa: F401 (re-exported)


@dataclass
class TorsoLayer:
    """One frame's torso layer at S: ``background`` (S, S, 3) float [0, 1] and ``region`` (S, S) bool or
    None (the merge region; None keeps the Portrait-Sync face region)."""

    background: np.ndarray
    region: np.ndarray | None


class TorsoPath:
    """The torso parts of one subject, loaded once per render."""

    def __init__(self, mode: str, cfg: TorsoConfig, restorer: torso_restorer.TorsoRestorer | None = None,
                 field: torso_field.TorsoField | None = None, device: torch.device | str = "cpu"):
        self.mode, self.cfg, self.restorer, self.field, self.device = mode, cfg, restorer, field, device

    @classmethod
    def for_subject(cls, subject: Subject, device: torch.device | str = "cpu", mode: str | None = None
                    ) -> "TorsoPath":
        """The subject's trained torso path (``torso/torso.json``, written by the ``torso`` job), or
        ``source`` when that job never ran. ``mode`` picks another of the trained parts."""
        rec_path = subject.path(RECORD_FILE)
        rec = json.loads(rec_path.read_text()) if rec_path.is_file() else {"mode": "source", "config": {}}
        known = {f.name for f in dataclasses.fields(TorsoConfig)}  # a record from an older version may hold more
        cfg = TorsoConfig(**{**{k: v for k, v in rec.get("config", {}).items() if k in known},
                             "mode": mode or rec["mode"]})
        net = torso_restorer.load(subject.path(RESTORER_FILE), device) if cfg.uses_restorer else None
        fld = torso_field.load(subject.path(FIELD_FILE), device) if cfg.uses_field else None
        return cls(cfg.mode, cfg, net, fld, device)

    def layer(self, crop: np.ndarray, labels: np.ndarray, plate: np.ndarray, R: np.ndarray, T: np.ndarray,
              K: Intrinsics, source_pose: tuple[np.ndarray, np.ndarray] | None = None) -> TorsoLayer:
        """The layer under the head for one frame: ``crop``/``plate`` (S, S, 3) uint8, ``labels`` (S, S),
        head pose ``R`` (3, 3), ``T`` (3,) of the output frame (edited or source), ``K`` at any side.

        With the field and ``source_pose`` (the source frame's ``R``, ``T``), the field renders the torso
        at the source frame's pose (the poses it was trained on) and the neck is bent to the output pose
        by the key points' motion (:mod:`.neck`): a head-only edit moves the neck, not the shoulders."""
        if self.field is None:
            return TorsoLayer(background_layer(crop, labels, plate).astype(np.float32) / 255.0, None)
        rgb, alpha = self.torso_rgba(labels, R, T, K, source_pose)
        plate_f = plate.astype(np.float32) / 255.0
        bg = alpha[..., None] * rgb + (1 - alpha[..., None]) * plate_f
        person = np.isin(labels, HEAD_LABELS + bands.TORSO_LABELS) | (alpha >= 0.5)
        return TorsoLayer(bg.astype(np.float32), person)

    def torso_rgba(self, labels: np.ndarray, R: np.ndarray, T: np.ndarray, K: Intrinsics,
                   source_pose: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The field's torso for output pose ``R``, ``T`` at the side of ``labels`` (S, S): rgb (S, S, 3) and
        alpha (S, S); with ``source_pose``, rendered there and its neck bent to the output pose."""
        s = labels.shape[0]
        at = (R, T) if source_pose is None else source_pose
        rgb, alpha = self.field_torso(at[0], at[1], K, s)
        if source_pose is not None:
            maps = neck.follow_maps(self.keypoints_px(*source_pose, K, s), self.keypoints_px(R, T, K, s), labels)
            rgb, alpha = neck.warp(rgb, maps), neck.warp(alpha, maps)
        return rgb, alpha

    def keypoints_px(self, R: np.ndarray, T: np.ndarray, K: Intrinsics, side: int) -> np.ndarray:
        """The field's key points projected with pose ``R``, ``T``: (N, 2) pixels at ``side``."""
        return project(K.scaled(side), R, T, self.field.keys.detach().cpu().numpy().astype(np.float64))

    def field_torso(self, R: np.ndarray, T: np.ndarray, K: Intrinsics, side: int) -> tuple[np.ndarray, np.ndarray]:
        """The field's torso at ``side``: rgb (side, side, 3), alpha (side, side), float32."""
        import cv2

        r = int(getattr(self.field, "side", side))
        t = lambda a: torch.as_tensor(a, dtype=torch.float32, device=self.device)  # noqa: E731
        with torch.no_grad():
            rgb, alpha = self.field.render(t(R), t(T), K.scaled(r), r)
        rgb = cv2.resize(rgb.cpu().numpy(), (side, side), interpolation=cv2.INTER_LINEAR)
        alpha = cv2.resize(alpha.cpu().numpy(), (side, side), interpolation=cv2.INTER_LINEAR)
        return np.clip(rgb, 0, 1), np.clip(alpha, 0, 1)

    def composite(self, head: np.ndarray, opacity: np.ndarray, layer: TorsoLayer, labels: np.ndarray,
                  crop: np.ndarray) -> np.ndarray:
        """The head (S, S, 3) premultiplied with ``opacity`` (S, S) over ``layer``, gaps filled: the crop
        (S, S, 3) float32 that :func:`post.portrait.compose` pastes. ``crop`` (S, S, 3) float [0, 1]."""
        if self.restorer is None:
            if self.field is not None:  # the field extrapolates the neck under the chin: no flat fill needed
                return (head + (1 - opacity[..., None]) * layer.background).astype(np.float32)
            return portrait.fill_gaps(head, opacity, layer.background, labels, portrait.neck_colour(crop, labels),
                                     crop)
        under = crop if self.field is None else layer.background
        removed = render_hole(labels, self.cfg.expand_render)
        cover = chin_coverage(opacity, labels, self.cfg.chin_solid_opacity)
        face = head * (cover / np.maximum(opacity, 1e-6))[..., None]  # the head's colour at its new coverage
        hole = removed & (cover < 1.0)
        return torso_restorer.inpaint(self.restorer, face.astype(np.float32), cover,
                                      np.where(removed[..., None], 0.0, under), hole, self.device, removed)


def chin_coverage(opacity: np.ndarray, labels: np.ndarray, solid: float) -> np.ndarray:
    """How much of each pixel the rendered head covers in the restorer's composite, (S, S) float32 in [0, 1].

    From the lips' row down, on the source's face, neck and torso (where the gap between head and torso
    lies), ``opacity`` (S, S) under ``solid`` counts as uncovered and [``solid``, 1] ramps to [0, 1]: the
    head's semi-transparent chin edge, which carries the head's own chin shadow (drawn where the rendered
    jaw is, lower than the source's when the dub opens the mouth wider), is restored with the band rather
    than laid over it (SyncTalk++ Sec. III-F: the generated face merged, the restorer fills the rest).
    Elsewhere (hair, the face above the lips, a frame without a face) the opacity itself."""
    start = bands.mouth_row(labels)
    out = opacity.astype(np.float32).copy()
    if start is None:
        return out
    zone = np.zeros(labels.shape, bool)
    zone[start:] = True
    zone &= np.isin(labels, portrait.FACE_LABELS + bands.TORSO_LABELS)
    out[zone] = np.clip((opacity[zone] - solid) / (1.0 - solid), 0.0, 1.0)
    return out


def render_hole(labels: np.ndarray, px_at_512: float) -> np.ndarray:
    """``M + delta``: the source face mask expanded by the fixed render expansion, (S, S) bool."""
    return bands.expand_lower(bands.face_mask(labels), bands.scaled_px(px_at_512, labels.shape[0]), labels)
