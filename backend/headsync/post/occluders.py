"""Occluders: what is in front of the face in the source frame (a raised hand) stays in the composite.

The label map calls everything inside the face outline "face", so a hand over the chin would be painted
over with the rendered skin. :class:`HandFinder` runs MediaPipe's hand landmarker (the ``mp.solutions.hands``
models ship inside the mediapipe 0.10.21 wheel: palm detection + 21 hand landmarks; nothing is downloaded)
on the source crop, and :func:`hand_mask` turns each hand's landmarks into a filled, grown hull. The
Portrait-Sync merge (:func:`headsync.post.portrait.compose`) then takes the source pixels there.
"""

from __future__ import annotations

import cv2
import numpy as np

#: Growth of a hand's hull (fraction of the hand's size): the landmarks are joint centres, the skin is wider.
HAND_GROW = 0.15


def hand_mask(hands: list[np.ndarray], shape: tuple[int, int], grow: float = HAND_GROW) -> np.ndarray:
    """(H, W) bool mask of the hands: each (21, 2) landmark array in pixels -> its convex hull, dilated by
    ``grow`` x the hand's larger extent."""
    mask = np.zeros(shape, np.uint8)
    for pts in hands:
        pts = np.asarray(pts, np.float32)
        hull = cv2.convexHull(np.round(pts).astype(np.int32))
        one = np.zeros(shape, np.uint8)
        cv2.fillConvexPoly(one, hull, 1)
        g = int(round(grow * float(np.ptp(pts, 0).max())))
        if g > 0:
            one = cv2.dilate(one, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * g + 1, 2 * g + 1)))
        mask |= one
    return mask > 0


class HandFinder:
    """MediaPipe hands on single RGB images -> list of (21, 2) pixel landmark arrays (empty: no hand)."""

    def __init__(self, min_confidence: float = 0.5):
        import mediapipe as mp

        self._hands = mp.solutions.hands.Hands(static_image_mode=True, max_num_hands=2, model_complexity=1,
                                               min_detection_confidence=min_confidence)

    def __call__(self, rgb: np.ndarray) -> list[np.ndarray]:
        res = self._hands.process(np.ascontiguousarray(rgb))
        if not res.multi_hand_landmarks:
            return []
        h, w = rgb.shape[:2]
        return [np.array([(p.x * w, p.y * h) for p in hand.landmark], np.float32) for hand in res.multi_hand_landmarks]

    def mask(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W) bool mask of the hands in ``rgb`` (uint8 RGB)."""
        return hand_mask(self(rgb), rgb.shape[:2])

    def close(self) -> None:
        self._hands.close()

    def __enter__(self) -> "HandFinder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
