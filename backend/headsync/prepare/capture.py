"""Preparation stage ``expression``: the Facial Animation Capturer (SyncTalk, section 3.2).

SyncTalk captures 52 ARKit-named blendshape coefficients per frame and conditions the renderer on seven of
them that control the brows, forehead and eyes and are independent of the lips (``CORE_EXPRESSIONS``)::

    browDownLeft, browDownRight, browInnerUp, browOuterUpLeft, browOuterUpRight, eyeBlinkLeft, eyeBlinkRight

ARKit names sides from the subject's point of view: ``...Left`` is the subject's left, which is the
*image's right* in an unmirrored video (face-mesh landmarks 263/362/386/374 and brow 300..336).

Two capture methods, recorded in ``blendshapes.npz`` as ``method``:

``mediapipe_blendshapes`` (when the ``face_landmarker`` model is installed, see ``registry``)
    MediaPipe's FaceLandmarker scores every crop: 51 ARKit blendshapes (its ``_neutral`` is dropped, and
    MediaPipe has no ``tongueOut``). The raw scores go to ``blendshapes.npz``. Its scores are not zero at
    rest nor one at full strength, and the offset depends on the face: a fully open eye often scores
    0.05-0.3 on ``eyeBlink`` and a closed one 0.5-0.9. So the seven core are *calibrated per subject*,
    exactly like the geometry estimates below (blink: the subject's open level -> 0, closed level -> 1;
    brows: the resting level -> 0, the subject's large excursions -> 1).

``landmark_geometry`` (the default when the model is absent)
    The seven are measured on the face mesh (``landmarks.npy``) after the head pose is removed: every
    frame is rigidly aligned in 3D (scale + rotation, Procrustes on the mesh's x, y and relative depth)
    onto the subject's median face using points that expressions barely move (eye corners, nose,
    cheekbones, face sides); that median face is then rolled so the eye line is horizontal. Roll, yaw,
    pitch and distance to the camera then change the measurements only through errors of the mesh's
    depth. In that face frame, lengths are in inter-ocular distances (outer eye corners):

    * eye openness = eyelid gap (three upper/lower lid pairs) / eye width, per eye;
    * brow height = height of brow points above the eye corners (which do not move when blinking):
      inner points (both brows) for ``browInnerUp``, outer points for ``browOuterUp``, inner+middle
      points below their rest for ``browDown``.

    ``blendshapes.npz`` then holds these seven calibrated, unsmoothed estimates (K = 7). Known limit:
    MediaPipe's face mesh hardly moves its brow points on a frown, so ``browDown`` is weak here (the
    FaceLandmarker method reads frowns better from the whole face's appearance).

Per-subject calibration (both methods), on the frames that have a face:

* blink, from an openness ``o`` (lid gap / eye width, or 1 - eyeBlink score), the larger of two readings:
  the *level* (open - o) / (open - closed) with ``open`` a high percentile (most frames are open eyes)
  and ``closed`` a low percentile but at most ``closed_ratio`` x open, so that a subject who never
  blinks in the clip does not get her narrowest eye called closed; and the *dip*, ``o`` relative to its
  upper envelope over ~0.5 s, which sees the short dips of blinks that the tracker closes only part of
  the way (common: the mesh's lids often stop at 60-70 % open on a real blink) while ignoring a slow
  downward gaze or a held squint;
* brow raise = (h - rest) / amplitude with ``rest`` = the median, ``amplitude`` = (high percentile - rest)
  but at least ``min_amplitude``, so that a face that never moves its brows is not scaled up to noise;
  brow lowering mirrors it below rest. MediaPipe's browDown scores are treated as raises of their own.

Then missing frames (no face) are filled by linear interpolation, the curves are filtered in time (a
3-frame median, which removes single-frame spikes but keeps the 4-6 frame blinks at 25 fps, then a light
Gaussian, narrower for the eyes than for the slower brows) and clipped to [0, 1].

The event helpers :func:`blink_events` and :func:`event_precision_recall` are used by tests and benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.ndimage import gaussian_filter1d, grey_closing, median_filter

from ..core.errors import UserError
from ..core.progress import Reporter
from ..core.atomic import save_npy_atomic, save_npz_atomic
from ..subject.folder import CORE_EXPRESSIONS, Subject
from . import face_template as ft

NAME = "expression"
VERSION = 1
REQUIRES = ("landmarks",)

METHOD_MEDIAPIPE = "mediapipe_blendshapes"
METHOD_GEOMETRY = "landmark_geometry"
METHODS = ("auto", METHOD_MEDIAPIPE, METHOD_GEOMETRY)

# Column indices into the (N, 7) core array.
BROW_DOWN_L, BROW_DOWN_R, BROW_INNER_UP, BROW_OUTER_L, BROW_OUTER_R, BLINK_L, BLINK_R = range(7)
BLINK_COLUMNS = (BLINK_L, BLINK_R)

# ---- face-mesh indices (MediaPipe 478-point mesh). "Right" = subject's right = image left. ----------
#: Points that expressions barely move: eye corners, nose bridge/ridge/base, cheekbones, face sides.
STABLE = (33, 133, 362, 263, 168, 6, 197, 195, 5, 4, 1, 2, 98, 327, 234, 454, 127, 356, 116, 345, 123, 352)
EYE_CORNERS_R, EYE_CORNERS_L = (33, 133), (362, 263)
#: Upper/lower eyelid pairs, middle pair first.
LIDS_R = ((159, 145), (158, 153), (160, 144))
LIDS_L = ((386, 374), (385, 380), (387, 373))
#: Brow points (upper and lower edge of each brow).
BROW_INNER_R, BROW_INNER_L = (107, 66, 55, 65), (336, 296, 285, 295)
BROW_OUTER_R, BROW_OUTER_L = (70, 63, 46, 53), (300, 293, 276, 283)
BROW_MIDIN_R, BROW_MIDIN_L = (107, 66, 105, 55, 65, 52), (336, 296, 334, 285, 295, 282)
#: Per core coefficient, the face-mesh points it moves: those it is read from here, and for the blinks the
#: whole eye contour and iris (the lid sweeps the eye). The renderers' expression basis lets each
#: coefficient act only around its points (``renderers/common/expression_basis.py``).
COEFFICIENT_POINTS = {
    "browDownLeft": BROW_MIDIN_L, "browDownRight": BROW_MIDIN_R,
    "browInnerUp": BROW_INNER_L + BROW_INNER_R,
    "browOuterUpLeft": BROW_OUTER_L, "browOuterUpRight": BROW_OUTER_R,
    "eyeBlinkLeft": ft.LEFT_EYE + ft.LEFT_IRIS, "eyeBlinkRight": ft.RIGHT_EYE + ft.RIGHT_IRIS,
}


@dataclass(frozen=True)
class Config:
    """Settings of the ``expression`` stage (preset table ``[expression]``).

    Percentiles are in percent over the frames with a face; amplitudes in inter-ocular distances for the
    geometry method and in score units for the MediaPipe one.
    """

    method: str = "auto"                   # auto | mediapipe_blendshapes | landmark_geometry
    blink_open_percentile: float = 75.0    # the subject's open-eye level
    blink_closed_percentile: float = 1.0   # the subject's closed-eye level (blinks fill ~2-4% of frames)
    closed_ratio_geometry: float = 0.35    # closed level <= this x open level (lid gap / eye width)
    closed_ratio_mediapipe: float = 0.45   # the same on 1 - eyeBlink score
    blink_dip_window_s: float = 0.5        # dips shorter than this count against their surroundings
    blink_dip_ratio: float = 0.65          # a dip to this fraction of its surroundings is a full blink
    brow_rest_percentile: float = 50.0
    brow_peak_percentile: float = 99.0     # a large brow movement of this subject -> 1
    brow_min_amplitude_geometry: float = 0.06   # iod; about half a full brow raise
    brow_min_amplitude_mediapipe: float = 0.15  # score units
    median_window: int = 3                 # frames; removes 1-frame spikes, keeps 4-6 frame blinks
    blink_sigma: float = 0.6               # frames, Gaussian on the eye curves
    brow_sigma: float = 1.2                # frames, Gaussian on the brow curves
    min_face_fraction: float = 0.5         # fewer frames with a face -> the stage refuses


# ---- pose removal --------------------------------------------------------------------------------------
def kabsch_rotations(src: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Rotations R (N, 3, 3) with ``src[i] @ R[i] ~ ref`` in the least-squares sense.

    src: (N, K, 3) centred point sets (row vectors); ref: (K, 3) centred. Proper rotations (det +1).
    """
    h = np.einsum("nki,kj->nij", src, ref)
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(u @ vt))
    u[:, :, 2] *= d[:, None]  # flip the weakest axis where the best fit would be a reflection
    return u @ vt


def _normalise(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, K, 3) -> centred and unit-RMS points, the centres (N, 1, 3) and the scales (N, 1, 1)."""
    c = points.mean(axis=1, keepdims=True)
    x = points - c
    s = np.sqrt((x ** 2).sum(axis=(1, 2), keepdims=True) / points.shape[1])
    return x / np.maximum(s, 1e-12), c, s


def canonical_basis(ref: np.ndarray, idx: Sequence[int]) -> np.ndarray:
    """(3, 3) rotation whose rows are the face's axes in ``ref`` (K, 3) camera-aligned coordinates.

    x: along the eye line (subject's right eye -> left eye, image left -> right), which removes the mean
    roll; z: the camera's viewing axis made orthogonal to x; y = z x x (down the face). The subject's
    mean yaw/pitch are kept: they are what the camera sees, and the face points are too flat vertically
    (eyes to nose base) for a plane fit to find the face's own normal reliably. ``idx`` lists the mesh
    index of each row of ``ref``.
    """
    pos = {m: k for k, m in enumerate(idx)}
    x = ref[pos[EYE_CORNERS_L[1]]] - ref[pos[EYE_CORNERS_R[0]]]
    x /= np.linalg.norm(x)
    z = np.array([0.0, 0.0, 1.0]) - x[2] * x
    z /= np.linalg.norm(z)
    return np.stack([x, np.cross(z, x), z])


def align_faces(landmarks: np.ndarray, iterations: int = 3) -> np.ndarray:
    """Remove head pose and scale: (N, 478, 3) crop-pixel meshes (no NaN rows) -> (N, 478, 3) in the
    subject's face frame, in inter-ocular distances (x along the eye line, y down the face, z depth).

    Generalised Procrustes on the ``STABLE`` points: each frame is scaled to unit size and rotated onto
    the running median shape, which is re-estimated ``iterations`` times.
    """
    lm = np.asarray(landmarks, np.float64)
    stable, c, s = _normalise(lm[:, STABLE, :])
    ref = np.median(stable, axis=0)
    for _ in range(iterations):
        ref = ref - ref.mean(axis=0)
        ref /= np.sqrt((ref ** 2).sum() / len(STABLE))
        rot = kabsch_rotations(stable, ref)
        ref = np.median(stable @ rot, axis=0)
    basis = canonical_basis(ref, STABLE)
    rot = kabsch_rotations(stable, ref) @ basis.T
    out = ((lm - c) / np.maximum(s, 1e-12)) @ rot
    pos = {m: k for k, m in enumerate(STABLE)}
    iod = np.linalg.norm((ref[pos[EYE_CORNERS_L[1]]] - ref[pos[EYE_CORNERS_R[0]]]))
    return out / iod


# ---- geometric measurements ------------------------------------------------------------------------------
def eye_openness(aligned: np.ndarray, lids: Sequence[tuple[int, int]], corners: tuple[int, int]) -> np.ndarray:
    """(N,) eyelid gap / eye width of one eye; ``aligned`` (N, 478, 3) from :func:`align_faces`.

    The gap is the vertical (face-frame y) distance lower lid - upper lid, averaged over the lid pairs;
    the width is the 3D corner-to-corner distance. Open eyes are about 0.25-0.35, closed ones near 0.
    """
    gap = np.mean([aligned[:, lo, 1] - aligned[:, up, 1] for up, lo in lids], axis=0)
    width = np.linalg.norm(aligned[:, corners[1]] - aligned[:, corners[0]], axis=-1)
    return gap / np.maximum(width, 1e-9)


def brow_height(aligned: np.ndarray, brow: Sequence[int], corners: tuple[int, int]) -> np.ndarray:
    """(N,) height of brow points above their eye's corners, in inter-ocular distances (up = positive)."""
    return aligned[:, list(corners), 1].mean(axis=1) - aligned[:, list(brow), 1].mean(axis=1)


def geometry_features(aligned: np.ndarray) -> dict[str, np.ndarray]:
    """The raw per-frame measurements (each (N,)) behind the seven coefficients."""
    return {
        "open_l": eye_openness(aligned, LIDS_L, EYE_CORNERS_L),
        "open_r": eye_openness(aligned, LIDS_R, EYE_CORNERS_R),
        "inner": 0.5 * (brow_height(aligned, BROW_INNER_L, EYE_CORNERS_L)
                        + brow_height(aligned, BROW_INNER_R, EYE_CORNERS_R)),
        "outer_l": brow_height(aligned, BROW_OUTER_L, EYE_CORNERS_L),
        "outer_r": brow_height(aligned, BROW_OUTER_R, EYE_CORNERS_R),
        "midin_l": brow_height(aligned, BROW_MIDIN_L, EYE_CORNERS_L),
        "midin_r": brow_height(aligned, BROW_MIDIN_R, EYE_CORNERS_R),
    }


# ---- per-subject calibration (pure; values unclipped) ----------------------------------------------------
def calibrate_blink(openness: np.ndarray, open_pct: float, closed_pct: float, closed_ratio: float,
                    dip_window: int, dip_ratio: float) -> tuple[np.ndarray, dict[str, float]]:
    """Openness (N,) (high = open, frames in time order) -> blink (N,), 0 open, 1 closed (unclipped).

    Two readings, the larger wins:

    * level: 0 at the subject's open level (``open_pct`` percentile), 1 at the closed level (the
      ``closed_pct`` percentile, but at most ``closed_ratio`` x open, so a clip without blinks does not
      call its narrowest eye a blink). Catches deep and long closures.
    * dip: openness relative to its upper envelope (a grey closing over ``dip_window`` frames, which
      bridges dips shorter than the window: blinks, not a downward gaze or a held squint); a dip to
      ``dip_ratio`` of the surroundings (or the subject's deepest dips, when shallower) is 1. The face
      mesh often closes the lids only part of the way on a real blink, and the level reading alone then
      misses it.
    """
    open_level = float(np.percentile(openness, open_pct))
    closed_level = min(float(np.percentile(openness, closed_pct)), closed_ratio * open_level)
    level = (open_level - openness) / max(open_level - closed_level, 1e-6)
    envelope = grey_closing(openness, size=max(1, dip_window), mode="nearest")
    relative = openness / np.maximum(envelope, 1e-9)
    # the envelope rides on the tops of the tracker's jitter: measure dips from the typical ratio, not 1
    relative = relative / max(float(np.median(relative)), 1e-9)
    dip_closed = min(float(np.percentile(relative, closed_pct)), dip_ratio)
    dip = (1.0 - relative) / max(1.0 - dip_closed, 1e-6)
    return np.maximum(level, dip), {"open": open_level, "closed": closed_level, "dip_closed": dip_closed}


def calibrate_raise(height: np.ndarray, rest_pct: float, peak_pct: float,
                    min_amplitude: float) -> tuple[np.ndarray, dict[str, float]]:
    """Height (N,) -> raise (N,), 0 at rest, 1 at the subject's large raise (>= ``min_amplitude``)."""
    rest = float(np.percentile(height, rest_pct))
    amp = max(float(np.percentile(height, peak_pct)) - rest, min_amplitude)
    return (height - rest) / amp, {"rest": rest, "amplitude": amp}


def calibrate_lower(height: np.ndarray, rest_pct: float, peak_pct: float,
                    min_amplitude: float) -> tuple[np.ndarray, dict[str, float]]:
    """Height (N,) -> lowering (N,) below rest, the mirror image of :func:`calibrate_raise`."""
    values, info = calibrate_raise(-height, 100.0 - rest_pct, peak_pct, min_amplitude)
    return values, {"rest": -info["rest"], "amplitude": info["amplitude"]}


def geometry_coefficients(landmarks: np.ndarray, cfg: Config, fps: float = 25.0) -> tuple[np.ndarray, dict]:
    """(N, 478, 3) meshes without NaN rows, in time order -> ((N, 7) calibrated unclipped core, calibration)."""
    f = geometry_features(align_faces(landmarks))
    raise_args = (cfg.brow_rest_percentile, cfg.brow_peak_percentile, cfg.brow_min_amplitude_geometry)
    blink_args = (cfg.blink_open_percentile, cfg.blink_closed_percentile, cfg.closed_ratio_geometry,
                  dip_window_frames(cfg, fps), cfg.blink_dip_ratio)
    cols = {
        "browDownLeft": calibrate_lower(f["midin_l"], *raise_args),
        "browDownRight": calibrate_lower(f["midin_r"], *raise_args),
        "browInnerUp": calibrate_raise(f["inner"], *raise_args),
        "browOuterUpLeft": calibrate_raise(f["outer_l"], *raise_args),
        "browOuterUpRight": calibrate_raise(f["outer_r"], *raise_args),
        "eyeBlinkLeft": calibrate_blink(f["open_l"], *blink_args),
        "eyeBlinkRight": calibrate_blink(f["open_r"], *blink_args),
    }
    values = np.stack([cols[n][0] for n in CORE_EXPRESSIONS], axis=1)
    return values, {n: _rounded(cols[n][1]) for n in CORE_EXPRESSIONS}


def mediapipe_coefficients(scores: np.ndarray, names: Sequence[str], cfg: Config,
                           fps: float = 25.0) -> tuple[np.ndarray, dict]:
    """(N, K) FaceLandmarker scores named ``names`` (frames with a face, in time order) -> ((N, 7)
    calibrated unclipped core, calibration)."""
    names = list(names)
    col = {n: scores[:, names.index(n)] for n in CORE_EXPRESSIONS}
    raise_args = (cfg.brow_rest_percentile, cfg.brow_peak_percentile, cfg.brow_min_amplitude_mediapipe)
    blink_args = (cfg.blink_open_percentile, cfg.blink_closed_percentile, cfg.closed_ratio_mediapipe,
                  dip_window_frames(cfg, fps), cfg.blink_dip_ratio)
    out = {}
    for n in CORE_EXPRESSIONS:
        if n.startswith("eyeBlink"):
            out[n] = calibrate_blink(1.0 - col[n], *blink_args)
        else:  # browDown scores rise as the brow lowers, so every brow score is a "raise" of its own
            out[n] = calibrate_raise(col[n], *raise_args)
    values = np.stack([out[n][0] for n in CORE_EXPRESSIONS], axis=1)
    return values, {n: _rounded(out[n][1]) for n in CORE_EXPRESSIONS}


def dip_window_frames(cfg: Config, fps: float) -> int:
    """The blink-dip window in frames (odd, at least 3)."""
    return max(3, int(round(cfg.blink_dip_window_s * fps)) // 2 * 2 + 1)


def _rounded(d: dict[str, float]) -> dict[str, float]:
    return {k: round(float(v), 5) for k, v in d.items()}


# ---- time series -------------------------------------------------------------------------------------------
def fill_missing(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(N, K) values whose rows are meaningful where ``valid`` (N,) -> rows filled by linear interpolation
    in time (held constant before the first and after the last valid row)."""
    t = np.arange(len(values))
    out = np.asarray(values, np.float64).copy()
    if valid.all():
        return out
    for k in range(out.shape[1]):
        out[~valid, k] = np.interp(t[~valid], t[valid], out[valid, k])
    return out


def smooth_coefficients(values: np.ndarray, cfg: Config) -> np.ndarray:
    """(N, 7) core values -> (N, 7) filtered in time and clipped to [0, 1] (float32).

    A ``median_window`` median first (a blink of >= 2 frames survives a 3-frame median, a 1-frame glitch
    does not), then a Gaussian: ``blink_sigma`` on the eyes, ``brow_sigma`` on the brows. Clipping comes
    last so that noise around 0 is not rectified into a positive bias.
    """
    x = np.asarray(values, np.float64)
    if cfg.median_window > 1 and len(x) >= cfg.median_window:
        x = median_filter(x, size=(cfg.median_window, 1), mode="nearest")
    out = np.empty_like(x)
    for k in range(x.shape[1]):
        sigma = cfg.blink_sigma if k in BLINK_COLUMNS else cfg.brow_sigma
        out[:, k] = gaussian_filter1d(x[:, k], sigma, mode="nearest") if sigma > 0 else x[:, k]
    return np.clip(out, 0.0, 1.0).astype(np.float32)


# ---- events and their scoring ----------------------------------------------------------------------------------
def blink_events(values: np.ndarray, threshold: float = 0.5, min_frames: int = 1) -> list[tuple[int, int]]:
    """Runs of frames where ``values`` (N,) >= threshold, as (start, end) with ``end`` exclusive.

    Runs shorter than ``min_frames`` are dropped. For two eyes pass e.g. ``values.max(axis=1)``.
    """
    above = np.concatenate([[False], np.asarray(values) >= threshold, [False]])
    edges = np.flatnonzero(np.diff(above.astype(np.int8)))
    starts, ends = edges[0::2], edges[1::2]
    return [(int(s), int(e)) for s, e in zip(starts, ends) if e - s >= min_frames]


def event_precision_recall(pred_events: Sequence[tuple[int, int]], true_events: Sequence[tuple[int, int]],
                           tolerance_frames: int = 2) -> tuple[float, float]:
    """Precision and recall of predicted events against true ones, matched one-to-one.

    A predicted event matches a true one when their intervals, each widened by ``tolerance_frames`` on
    both sides, overlap; matching is greedy by the distance between centres, each event used once.
    With no predicted events precision is 1.0 (nothing wrong was said); with no true events recall is 1.0.
    """
    pairs = []
    for i, (ps, pe) in enumerate(pred_events):
        for j, (ts, te) in enumerate(true_events):
            if ps - tolerance_frames < te and ts - tolerance_frames < pe:
                pairs.append((abs((ps + pe) - (ts + te)) / 2.0, i, j))
    used_p, used_t = set(), set()
    for _, i, j in sorted(pairs):
        if i not in used_p and j not in used_t:
            used_p.add(i)
            used_t.add(j)
    matched = len(used_p)
    precision = matched / len(pred_events) if pred_events else 1.0
    recall = matched / len(true_events) if true_events else 1.0
    return precision, recall


# ---- I/O --------------------------------------------------------------------------------------------------
class BlendshapeScorer:
    """MediaPipe FaceLandmarker in VIDEO mode: BGR crop -> (K,) ARKit scores, or None without a face."""

    def __init__(self, model_path: str, fps: float):
        import mediapipe as mp
        from mediapipe.tasks.python import BaseOptions, vision

        self._mp = mp
        options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(model_path)),
            running_mode=vision.RunningMode.VIDEO, num_faces=1, output_face_blendshapes=True)
        self._landmarker = vision.FaceLandmarker.create_from_options(options)
        self._dt_ms = 1000.0 / max(fps, 1e-3)
        self.names: list[str] | None = None

    def __call__(self, i: int, bgr: np.ndarray) -> np.ndarray | None:
        import cv2

        rgb = np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        image = self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=rgb)
        result = self._landmarker.detect_for_video(image, int(round(i * self._dt_ms)))
        if not result.face_blendshapes:
            return None
        cats = [c for c in result.face_blendshapes[0] if c.category_name != "_neutral"]
        if self.names is None:
            self.names = [c.category_name for c in cats]
        return np.array([c.score for c in cats], np.float32)

    def close(self) -> None:
        self._landmarker.close()


def resolve_method(method: str) -> tuple[str, str | None]:
    """(method actually used, model path or None). ``auto`` picks MediaPipe when its model is installed."""
    from ..core import registry

    if method not in METHODS:
        raise UserError(f"unknown expression method {method!r}", f"use one of {', '.join(METHODS)}")
    if method == METHOD_GEOMETRY:
        return method, None
    path = registry.find("face_landmarker")
    if path is None and method == METHOD_MEDIAPIPE:
        raise UserError("the face_landmarker model is not installed",
                        "run `headsync models install face_landmarker`, or set [expression] method = 'auto'")
    return (METHOD_MEDIAPIPE, str(path)) if path is not None else (METHOD_GEOMETRY, None)


def _score_frames(subject: Subject, n: int, model_path: str, reporter: Reporter) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Run the FaceLandmarker on every crop -> (scores (N, K) NaN where no face, names, valid (N,))."""
    import cv2

    scorer = BlendshapeScorer(model_path, float(subject.source().get("fps") or 25.0))
    rows: list[np.ndarray | None] = []
    try:
        for i in range(n):
            img = cv2.imread(str(subject.frame_path(i)), cv2.IMREAD_COLOR)
            if img is None:
                raise UserError(f"cannot read {subject.frame_path(i)}", "run `headsync prepare` again")
            rows.append(scorer(i, img))
            reporter.advance(1)
    finally:
        scorer.close()
    if scorer.names is None:
        raise UserError("MediaPipe's FaceLandmarker found no face in any frame",
                        "use a video where the face is visible, or set [expression] method = 'landmark_geometry'")
    k = len(scorer.names)
    scores = np.stack([r if r is not None else np.full(k, np.nan, np.float32) for r in rows])
    return scores, scorer.names, np.array([r is not None for r in rows])


def _capture_mediapipe(subject: Subject, n: int, model_path: str, fps: float, cfg: Config,
                       reporter: Reporter) -> tuple[list[str], np.ndarray, np.ndarray, dict, np.ndarray]:
    """-> (names, raw scores (N, 51) filled, core (N, 7) unclipped filled, calibration, valid (N,))."""
    scores, names, valid = _score_frames(subject, n, model_path, reporter)
    _check_coverage(valid, cfg)
    core, calibration = mediapipe_coefficients(scores[valid], names, cfg, fps)
    return names, fill_missing(scores, valid), _spread(core, valid), calibration, valid


def _capture_geometry(subject: Subject, n: int, fps: float, cfg: Config,
                      reporter: Reporter) -> tuple[list[str], np.ndarray, np.ndarray, dict, np.ndarray]:
    """-> (the 7 core names, their calibrated estimates clipped (N, 7), the same unclipped, calibration, valid)."""
    lm = np.load(subject.path("landmarks.npy"))
    if lm.shape[0] != n:
        raise UserError(f"landmarks.npy has {lm.shape[0]} rows for {n} frames", "run `headsync prepare` again")
    valid = ~np.isnan(lm).any(axis=(1, 2))
    _check_coverage(valid, cfg)
    core, calibration = geometry_coefficients(lm[valid], cfg, fps)
    reporter.advance(n)
    core = _spread(core, valid)
    return list(CORE_EXPRESSIONS), np.clip(core, 0.0, 1.0), core, calibration, valid


def _spread(rows: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(V, K) rows of the valid frames -> (N, K) with the missing frames interpolated in time."""
    full = np.full((len(valid), rows.shape[1]), np.nan)
    full[valid] = rows
    return fill_missing(full, valid)


def run(subject: Subject, cfg: Config, reporter: Reporter) -> dict:
    """Write ``blendshapes.npz`` and ``expression.npy``; return the method, calibration and gaps filled."""
    n = subject.frame_count()
    fps = float(subject.source().get("fps") or 25.0)
    method, model_path = resolve_method(cfg.method)
    reporter.start(NAME, n)
    if method == METHOD_MEDIAPIPE:
        names, raw, core, calibration, valid = _capture_mediapipe(subject, n, model_path, fps, cfg, reporter)
    else:
        names, raw, core, calibration, valid = _capture_geometry(subject, n, fps, cfg, reporter)
    expression = smooth_coefficients(core, cfg)
    save_npz_atomic(subject.path("blendshapes.npz"), names=np.array(names), values=raw.astype(np.float32),
                    method=np.array(method), face_found=valid)
    save_npy_atomic(subject.path("expression.npy"), expression)
    missing = int((~valid).sum())
    if missing:
        subject.warn(f"expression: no face in {missing} of {n} frames; their coefficients were interpolated")
    blinks = blink_events(expression[:, list(BLINK_COLUMNS)].max(axis=1))
    return {"method": method, "names": len(names), "frames_interpolated": missing,
            "blinks": len(blinks), "calibration": calibration}


def _check_coverage(valid: np.ndarray, cfg: Config) -> None:
    if valid.mean() < cfg.min_face_fraction:
        raise UserError(f"a face was found in only {valid.mean():.0%} of the frames",
                        "use a clip where the face is visible most of the time (trim the rest)")
