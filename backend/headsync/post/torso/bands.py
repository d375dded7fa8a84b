"""Face masks and the bands around them (pure array code, (S, S) label maps as in DESIGN.md).

SyncTalk++ expands the face mask "at the cheeks and chin" by 10-30 px for training and 15 px at render,
for 512 px frames; :func:`scaled_px` converts those to any crop side. The expansion is kept below the eye
line, so the hair and forehead (which the source frame still shows) are never cut away.
"""

from __future__ import annotations

import cv2
import numpy as np

from ...subject.labels import EYES_BROWS, LIPS, NECK, TORSO
from ..portrait import FACE_LABELS

#: The side the papers' pixel counts refer to.
REFERENCE_SIDE = 512
TORSO_LABELS = (NECK, TORSO)


def scaled_px(px_at_512: float, side: int) -> int:
    """A length given in pixels of a 512 px frame, at ``side`` px (at least 1)."""
    return max(1, int(round(px_at_512 * side / REFERENCE_SIDE)))


def face_mask(labels: np.ndarray) -> np.ndarray:
    """``M``: face skin, lips and eyes (labels 1-3), (S, S) bool."""
    return np.isin(labels, FACE_LABELS)


def disk(radius: int) -> np.ndarray:
    """An elliptical structuring element of the given radius (px)."""
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1,) * 2)


def expand_lower(mask: np.ndarray, px: int, labels: np.ndarray | None = None) -> np.ndarray:
    """``M + delta``: ``mask`` (S, S) bool dilated by ``px`` pixels at the cheeks and chin only.

    Growth is kept at and below the eye line (the mean row of the eyes label, else the mask's top
    third), so the expansion never eats into the forehead or hair. Returns (S, S) bool.
    """
    if px <= 0 or not mask.any():
        return mask.copy()
    grown = cv2.dilate(mask.astype(np.uint8), disk(px)) > 0
    rows = np.nonzero(mask.any(1))[0]
    eye_rows = np.nonzero((labels == EYES_BROWS).any(1))[0] if labels is not None else np.zeros(0, int)
    top = int(eye_rows.mean()) if eye_rows.size else int(rows[0] + (rows[-1] - rows[0]) / 3)
    grown[:top] = mask[:top]
    return grown


def gap_band(labels: np.ndarray, px: int) -> np.ndarray:
    """The ring ``delta`` removed around the face: ``expand_lower(M, px) & ~M``, (S, S) bool."""
    m = face_mask(labels)
    return expand_lower(m, px, labels) & ~m


def mouth_row(labels: np.ndarray) -> int | None:
    """The lips' mean row (the face mask's middle row without lips); None without a face."""
    lips = np.nonzero((labels == LIPS).any(1))[0]
    if lips.size:
        return int(lips.mean())
    rows = np.nonzero(face_mask(labels).any(1))[0]
    return int((rows[0] + rows[-1]) / 2) if rows.size else None


def chin_neck_band(labels: np.ndarray, px: int, face: np.ndarray | None = None, rim: int = 2) -> np.ndarray:
    """Where a gap between head and torso shows: the ring up to ``px`` outside the lower edge of ``face``
    (S, S) bool (default the source face mask ``M``; pass a render's face to follow its jaw) and ``rim`` px
    inside it (a soft edge's partial coverage), rows from the lips' centre down, on the source's face, neck
    or torso only (never hair or background). The mouth, ``rim`` px and more inside the face, is not in
    it. (S, S) bool; empty when the frame shows no face."""
    face = face_mask(labels) if face is None else face
    start = mouth_row(labels)
    if start is None or not face.any():
        return np.zeros(labels.shape, bool)
    f = face.astype(np.uint8)
    ring = (cv2.dilate(f, disk(px)) > 0) & ~(cv2.erode(f, disk(rim)) > 0 if rim > 0 else face)
    ring[:start] = False
    return ring & np.isin(labels, FACE_LABELS + TORSO_LABELS)


def rotate(image: np.ndarray, labels: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """Rotate an image (S, S, C) and its label map (S, S) about the centre (reflected border for the
    image, background label 0 outside for the labels)."""
    s = labels.shape[0]
    A = cv2.getRotationMatrix2D((s / 2, s / 2), degrees, 1.0)
    img = cv2.warpAffine(image, A, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    lab = cv2.warpAffine(labels, A, (s, s), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return img, lab
