"""Portrait-Sync Generator (SyncTalk Sec. 3.4): the rendered head back into the full-resolution frame.

1. Gap fill: where the source frame had face (labels 1-3) but the rendered head does not cover it (the
   source mouth was open wider than the rendered one, say), the background layer shows the plate: a dark
   gap between head and torso. Those pixels get the frame's average neck colour ``C_n``.
2. Face merge: the rendered face region ``F_r`` is feathered with a Gaussian blur, ``G(F_r)``, and merged
   with the original crop, so hair and the rest of the plate keep the source's detail.
3. Paste-back: the merged crop is scaled to the recorded crop box and written into the full-resolution
   source frame; the part of the box outside the image is dropped.

Three guards keep the rest of the frame the source's (issue 11 found each artefact on a real clip):

* the render only counts on the source's head and neck (labels 1-5) grown by ``support_grow``: density the
  field left over the shoulder or beside the chin (floaters, the translucent patch) is dropped, and only
  neck pixels (the chin dropping with an open mouth), never torso, join the merge region;
* under the rendered head, hair and ears (label 4) show the source crop, not the background plate, so a
  rendered ear a pixel narrower than the source's leaves no plate-coloured (bluish) halo;
* occluders (a hand in front of the face, :mod:`headsync.post.occluders`) are cut out of the merge mask.

All functions are pure array code: (H, W, 3) float32 RGB in [0, 1] unless stated.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..subject.labels import EYES_BROWS, FACE, HEAD, LIPS, NECK, TORSO

FACE_LABELS = (FACE, LIPS, EYES_BROWS)


@dataclass(frozen=True)
class PortraitConfig:
    """Feathering and growth of the merge mask, as fractions of the crop side."""

    blur: float = 0.02  # Gaussian sigma of G(F_r)
    grow: float = 0.02  # dilation of the face region before blurring (keeps the blur inside the face edge)
    opacity_threshold: float = 0.5  # rendered pixels with at least this alpha belong to F_r
    support_grow: float = 0.03  # the render counts only on the source's head + neck grown by this


def neck_colour(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Average colour (3,) of the neck (label 5); the upper torso, then the face skin, when there is none."""
    for lab in (NECK, TORSO, FACE):
        m = labels == lab
        if m.any():
            return image[m].mean(0)
    return image.reshape(-1, 3).mean(0)


def fill_gaps(head_rgb: np.ndarray, opacity: np.ndarray, background: np.ndarray, labels: np.ndarray,
              neck: np.ndarray, crop_image: np.ndarray | None = None) -> np.ndarray:
    """Composite the premultiplied head over the background, with uncovered face pixels in the neck colour.

    ``head_rgb`` (S, S, 3) premultiplied, ``opacity`` (S, S), ``background`` (S, S, 3) the torso + plate
    layer, ``labels`` the source frame's label map at S. With ``crop_image`` (the source crop), hair and
    ears (label 4) left uncovered show the source instead of the plate.
    """
    gap = np.isin(labels, FACE_LABELS)[..., None]
    under = np.where(gap, neck[None, None, :], background)
    if crop_image is not None:
        under = np.where((labels == HEAD)[..., None], crop_image, under)
    return head_rgb + (1.0 - opacity[..., None]) * under


def head_support(labels: np.ndarray, cfg: PortraitConfig) -> np.ndarray:
    """(S, S) float mask in [0, 1]: the source's head and neck (labels 1-5) grown by ``support_grow``, edge
    softened; where the render may count."""
    size = labels.shape[0]
    g = max(1, int(round(cfg.support_grow * size)))
    m = cv2.dilate(np.isin(labels, (*FACE_LABELS, HEAD, NECK)).astype(np.uint8),
                   cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * g + 1,) * 2)).astype(np.float32)
    return np.clip(cv2.GaussianBlur(m, (0, 0), g / 2.0), 0.0, 1.0)


def limit_render(head_rgb: np.ndarray, opacity: np.ndarray, support: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The premultiplied head and its opacity with everything outside ``support`` (S, S) removed."""
    return head_rgb * support[..., None], opacity * support


def merge_mask(labels: np.ndarray, opacity: np.ndarray, cfg: PortraitConfig,
               occluder: np.ndarray | None = None, region: np.ndarray | None = None) -> np.ndarray:
    """``G(F_r)``: the face region (source face labels plus rendered pixels over the neck), grown and
    blurred, (S, S) in [0, 1]; zero on ``occluder`` (S, S) bool, which keeps the source. A given ``region``
    (S, S) bool replaces the face region: the torso field's path merges the whole person, the region and
    every rendered pixel (a head moved by a pose edit is never cut off; see
    :mod:`headsync.post.torso.path`)."""
    size = labels.shape[0]
    if region is None:
        region = np.isin(labels, FACE_LABELS) | ((opacity >= cfg.opacity_threshold) & (labels == NECK))
    else:
        region = region | (opacity >= cfg.opacity_threshold)
    g = max(1, int(round(cfg.grow * size)))
    region = cv2.dilate(region.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * g + 1,) * 2))
    sigma = max(cfg.blur * size, 0.5)
    mask = np.clip(cv2.GaussianBlur(region.astype(np.float32), (0, 0), sigma), 0.0, 1.0)
    if occluder is not None and occluder.any():
        # a hard cut at the occluder's (already grown) edge: blending a hand with skin shows a ghost
        mask = mask * (1.0 - occluder.astype(np.float32))
    return mask


def crop_region(box: tuple[float, float, float], width: int, height: int) -> tuple[int, int, int, int, int]:
    """Integer crop box and its visible part: ``(x0, y0, side, vis)`` with vis = (ix0, iy0, ix1, iy1) in
    the frame, returned flat as (x0, y0, side, ix0, iy0, ix1, iy1)."""
    x0, y0, side = int(round(box[0])), int(round(box[1])), max(1, int(round(box[2])))
    ix0, iy0 = max(x0, 0), max(y0, 0)
    ix1, iy1 = min(x0 + side, width), min(y0 + side, height)
    return x0, y0, side, ix0, iy0, ix1, iy1


def paste(frame: np.ndarray, crop: np.ndarray, mask: np.ndarray, box: tuple[float, float, float]) -> np.ndarray:
    """Blend ``crop`` (s, s, 3) into ``frame`` (H, W, 3) uint8 at ``box`` = (x0, y0, side) in frame pixels,
    weighted by ``mask`` (s, s); both are scaled to the box first. Returns a new uint8 frame."""
    h, w = frame.shape[:2]
    x0, y0, side, ix0, iy0, ix1, iy1 = crop_region(box, w, h)
    out = frame.copy()
    if ix1 <= ix0 or iy1 <= iy0:
        return out
    big = cv2.resize(crop.astype(np.float32), (side, side), interpolation=cv2.INTER_LINEAR)
    m = cv2.resize(mask.astype(np.float32), (side, side), interpolation=cv2.INTER_LINEAR)[..., None]
    sub = (slice(iy0 - y0, iy1 - y0), slice(ix0 - x0, ix1 - x0))
    orig = frame[iy0:iy1, ix0:ix1].astype(np.float32) / 255.0
    blended = m[sub] * big[sub] + (1.0 - m[sub]) * orig
    out[iy0:iy1, ix0:ix1] = np.clip(blended * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out


def compose(frame: np.ndarray, box: tuple[float, float, float], head_rgb: np.ndarray, opacity: np.ndarray,
            background: np.ndarray, labels: np.ndarray, crop_image: np.ndarray, cfg: PortraitConfig,
            occluder: np.ndarray | None = None, composite: np.ndarray | None = None,
            region: np.ndarray | None = None) -> np.ndarray:
    """The whole generator for one frame.

    ``frame`` (H, W, 3) uint8 full-resolution source frame; ``box`` its crop box; ``head_rgb``/``opacity``
    the render at S; ``background``, ``labels``, ``crop_image`` the source frame's torso+plate layer, label
    map and crop at S (float RGB in [0, 1]); ``occluder`` (S, S) bool, what lies in front of the face.
    ``composite`` (S, S, 3), when given, is the head already over its gap-filled torso layer (the torso
    path's :meth:`~headsync.post.torso.path.TorsoPath.composite`) and replaces step 1; ``region`` as in
    :func:`merge_mask`. A caller passing ``composite`` limits the render itself (:func:`limit_render`, not
    for the field path, which moves the whole person). Returns the full-resolution uint8 frame.
    """
    if composite is None:
        if region is None:
            head_rgb, opacity = limit_render(head_rgb, opacity, head_support(labels, cfg))
        composite = fill_gaps(head_rgb, opacity, background, labels, neck_colour(crop_image, labels), crop_image)
    return paste(frame, composite, merge_mask(labels, opacity, cfg, occluder, region), box)
