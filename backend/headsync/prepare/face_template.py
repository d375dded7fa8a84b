"""The rigid 3D face template the Head-Sync Stabilizer fits to MediaPipe's 478 landmarks.

Coordinates ("head coordinates") follow the OpenCV camera convention so that a frontal face has R = I:
x to the subject's left (image right), y down, z forward (away from the camera, into the head), in cm.
The origin is inside the head, where MediaPipe's canonical face model puts it (about 4 cm behind the
centroid of the face surface), so rotations of the head pivot near its centre.

Where the template comes from (see docs/stabilizer.md):

(a) MediaPipe's canonical face mesh (468 vertices, cm, y up and z toward the viewer) from the optional
    ``face_landmarker`` bundle, converted to head coordinates; the 10 iris points are added from the eye
    contours. When the subject's landmarks are given, the template is then refined to the subject's
    identity: the subject's own aligned mean shape (b) is blended in, more in x/y (measured in the image)
    than in z (MediaPipe's z is a regression, weaker evidence of the subject's depth profile).
(b) Without the bundle: the subject's own shape. Each frame's MediaPipe (x, y, z) landmarks are a
    weak-perspective 3D shape in pixels; frames with a closed mouth and open eyes are aligned by
    similarity Procrustes on MediaPipe's own rigid landmark set, and their per-point median is taken,
    then oriented (eye line = x, chin-forehead = y), scaled to the canonical eye-corner distance and
    centred like the canonical model.

The bundle adjustment in :mod:`headsync.prepare.stabilizer` refines the landmark points further per subject.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

# ---- MediaPipe face-mesh topology (ordered contours, from mediapipe's face_mesh_connections) ------------
#: Subject's right eye (image left), closed contour.
RIGHT_EYE = (7, 33, 246, 161, 160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144, 163)
#: Subject's left eye (image right), closed contour.
LEFT_EYE = (249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466, 263)
#: Brows as closed polygons (lower edge outer->inner, then upper edge inner->outer).
RIGHT_BROW = (46, 53, 52, 65, 55, 107, 66, 105, 63, 70)
LEFT_BROW = (276, 283, 282, 295, 285, 336, 296, 334, 293, 300)
#: Outer lip contour.
LIPS_OUTER = (0, 37, 39, 40, 185, 61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267)
#: Face oval, closed contour (forehead top = 10, chin = 152).
FACE_OVAL = (10, 109, 67, 103, 54, 21, 162, 127, 234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152, 377,
             400, 378, 379, 365, 397, 288, 361, 323, 454, 356, 389, 251, 284, 332, 297, 338)
#: Iris points added by ``refine_landmarks``: centre then four boundary points, per eye.
RIGHT_IRIS = (468, 469, 470, 471, 472)
LEFT_IRIS = (473, 474, 475, 476, 477)
#: MediaPipe's own rigid landmark set (the procrustes basis of its face-geometry pipeline).
PROCRUSTES_INDICES = (4, 6, 10, 33, 54, 67, 117, 119, 121, 127, 129, 132, 133, 136, 143, 147, 198, 205, 263,
                      284, 297, 346, 348, 350, 356, 358, 361, 362, 365, 372, 376, 420, 425)
RIGHT_EYE_OUTER, LEFT_EYE_OUTER = 33, 263
FOREHEAD, CHIN, NOSE_BASE = 10, 152, 2
UPPER_LIP_INNER, LOWER_LIP_INNER = 13, 14
RIGHT_LID_TOP, RIGHT_LID_BOTTOM, LEFT_LID_TOP, LEFT_LID_BOTTOM = 159, 145, 386, 374

N_MESH, N_LANDMARKS = 468, 478

# ---- semantic regions (SyncTalk++ semantic weighting acts on these) -------------------------------------
RIGID, EYE, BROW, MOUTH, JAW, IRIS = range(6)
REGION_NAMES = ("rigid", "eye", "brow", "mouth", "jaw", "iris")

# ---- constants measured on MediaPipe's canonical mesh (so (a) and (b) share scale and origin) ------------
#: Distance between the outer eye corners (33-263), cm.
EYE_CORNER_DISTANCE_CM = 8.8917
#: Centroid of the 468 mesh vertices in head coordinates, cm (the origin lies 4.2 cm behind it).
MESH_CENTROID_CM = np.array([0.0, 0.6764, -4.1590])
#: Iris radius, cm (human iris diameter is about 11.7 mm); the iris points only fill the template.
IRIS_RADIUS_CM = 0.585

_BUNDLE_MEMBER = "geometry_pipeline_metadata_landmarks.binarypb"


@dataclass(frozen=True)
class FaceTemplate:
    """A rigid face template.

    ``points`` (478, 3) float32, cm, head coordinates (module docstring); ``regions`` (478,) int8 semantic
    class per landmark (``RIGID`` ... ``IRIS``); ``source`` says where it came from: ``"canonical"``,
    ``"canonical+subject"`` or ``"subject"``.
    """

    points: np.ndarray
    regions: np.ndarray
    source: str


# ---- I/O -------------------------------------------------------------------------------------------------
def find_canonical_bundle() -> Path | None:
    """Path of the installed ``face_landmarker`` bundle, or None (the registry decides where to look)."""
    from ..core import registry

    return registry.find("face_landmarker")


def load_canonical_vertices(bundle: str | Path) -> np.ndarray:
    """The canonical face mesh from a ``face_landmarker.task`` bundle: (468, 3) float64, cm, MediaPipe's
    axes (x image right, y up, z toward the viewer)."""
    from mediapipe.modules.face_geometry.protos import geometry_pipeline_metadata_pb2

    with zipfile.ZipFile(bundle) as z:
        blob = z.read(_BUNDLE_MEMBER)
    meta = geometry_pipeline_metadata_pb2.GeometryPipelineMetadata()
    meta.ParseFromString(blob)
    vb = np.asarray(meta.canonical_mesh.vertex_buffer, np.float64).reshape(-1, 5)  # x, y, z, u, v
    if vb.shape[0] != N_MESH:
        raise ValueError(f"{bundle}: canonical mesh has {vb.shape[0]} vertices, expected {N_MESH}")
    return vb[:, :3]


# ---- pure geometry ---------------------------------------------------------------------------------------
def canonical_to_head(vertices: np.ndarray) -> np.ndarray:
    """MediaPipe canonical axes (y up, z toward viewer) -> head coordinates (y down, z forward).

    A 180-degree turn about x: a proper rotation, so handedness is kept. (..., 3) -> (..., 3).
    """
    return np.asarray(vertices, np.float64) * np.array([1.0, -1.0, -1.0])


def add_iris_points(mesh: np.ndarray) -> np.ndarray:
    """(468, 3) head-coordinate mesh -> (478, 3) with the 10 iris points of ``refine_landmarks``.

    The iris centre is the mean of the eye contour; the four boundary points sit at the iris radius to the
    right, top, left and bottom. Iris points get weight 0 in every fit (they follow the gaze), so this only
    completes the array.
    """
    out = np.zeros((N_LANDMARKS, 3))
    out[:N_MESH] = mesh
    offsets = IRIS_RADIUS_CM * np.array([[0, 0, 0], [1, 0, 0], [0, -1, 0], [-1, 0, 0], [0, 1, 0]], float)
    for eye, iris in ((RIGHT_EYE, RIGHT_IRIS), (LEFT_EYE, LEFT_IRIS)):
        out[list(iris)] = mesh[list(eye)].mean(0) + offsets
    return out


def similarity_transform(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted least-squares similarity (Umeyama) mapping ``src`` onto ``dst``: dst ~ s R src + t.

    src, dst: (..., L, 3) (broadcast against each other, so a batch of frames aligns to one shape);
    weights: (L,) or (..., L), non-negative. Returns s (...,), R (..., 3, 3) proper rotations, t (..., 3).
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    shape = np.broadcast_shapes(src.shape, dst.shape)
    w = np.ones(shape[-2]) if weights is None else np.asarray(weights, np.float64)
    w = np.broadcast_to(w, shape[:-1])
    wsum = w.sum(-1, keepdims=True)[..., None]  # (..., 1, 1)
    mu_s = (w[..., None] * src).sum(-2, keepdims=True) / wsum
    mu_d = (w[..., None] * dst).sum(-2, keepdims=True) / wsum
    xs, xd = src - mu_s, dst - mu_d
    cov = np.einsum("...l,...li,...lj->...ij", w, xd, xs) / wsum  # (..., 3, 3)
    u, d, vt = np.linalg.svd(cov)
    sign = np.sign(np.linalg.det(u) * np.linalg.det(vt))
    fix = np.ones(d.shape)
    fix[..., 2] = np.where(sign == 0, 1.0, sign)  # reflection -> flip the weakest axis
    rot = u @ (fix[..., :, None] * vt)
    var_s = (w[..., None] * xs**2).sum((-2, -1)) / wsum[..., 0, 0]
    scale = (d * fix).sum(-1) / np.maximum(var_s, 1e-12)
    t = mu_d[..., 0, :] - scale[..., None] * np.einsum("...ij,...j->...i", rot, mu_s[..., 0, :])
    return scale, rot, t


def apply_similarity(points: np.ndarray, s: np.ndarray, rot: np.ndarray, t: np.ndarray) -> np.ndarray:
    """s R X + t for points (..., L, 3) with s (...,), R (..., 3, 3), t (..., 3)."""
    return np.asarray(s)[..., None, None] * np.einsum("...ij,...lj->...li", rot, points) + t[..., None, :]


def head_frame(points: np.ndarray) -> np.ndarray:
    """Rotation (3, 3) taking a face shape (478 or 468, 3) into head axes.

    Rows are the head axes in the shape's own coordinates: x along the eye line (right eye -> left eye),
    y from forehead to chin made orthogonal to x, z = x cross y (forward into the head).
    """
    x = points[LEFT_EYE_OUTER] - points[RIGHT_EYE_OUTER]
    x = x / np.linalg.norm(x)
    y = points[CHIN] - points[FOREHEAD]
    y = y - x * (x @ y)
    y = y / np.linalg.norm(y)
    return np.stack([x, y, np.cross(x, y)])


def normalise_shape(points: np.ndarray) -> np.ndarray:
    """Put a face shape of any scale, pose and origin into head coordinates (478, 3) -> (478, 3), cm.

    Rotated with :func:`head_frame`, scaled so the outer eye corners are ``EYE_CORNER_DISTANCE_CM`` apart,
    and shifted so the mesh centroid is where the canonical model has it (origin inside the head).
    """
    p = (points - points[:N_MESH].mean(0)) @ head_frame(points).T
    p *= EYE_CORNER_DISTANCE_CM / np.linalg.norm(p[LEFT_EYE_OUTER] - p[RIGHT_EYE_OUTER])
    return p + MESH_CENTROID_CM


def neutral_frames(landmarks: np.ndarray, mouth_quantile: float = 0.4, blink_ratio: float = 0.7) -> np.ndarray:
    """Frames with a closed-ish mouth and open eyes: (N, 478, 3) -> (N,) bool (False for NaN rows).

    Mouth opening (inner lip gap) and eye opening (lid gap) are measured relative to the eye-corner
    distance, so head distance does not matter. Keeps frames whose mouth gap is at most the
    ``mouth_quantile`` of the clip and whose eye gap is at least ``blink_ratio`` of the median.
    """
    valid = np.isfinite(landmarks).all(axis=(1, 2))
    out = np.zeros(len(landmarks), bool)
    if not valid.any():
        return out
    lm = landmarks[valid]
    iod = np.linalg.norm(lm[:, LEFT_EYE_OUTER] - lm[:, RIGHT_EYE_OUTER], axis=-1)
    mouth = np.linalg.norm(lm[:, UPPER_LIP_INNER] - lm[:, LOWER_LIP_INNER], axis=-1) / iod
    eyes = (np.linalg.norm(lm[:, RIGHT_LID_TOP] - lm[:, RIGHT_LID_BOTTOM], axis=-1)
            + np.linalg.norm(lm[:, LEFT_LID_TOP] - lm[:, LEFT_LID_BOTTOM], axis=-1)) / iod
    keep = (mouth <= np.quantile(mouth, mouth_quantile)) & (eyes >= blink_ratio * np.median(eyes))
    out[np.flatnonzero(valid)[keep]] = True
    return out


def back_project(landmarks: np.ndarray, focal: float, centre: tuple[float, float]) -> np.ndarray:
    """MediaPipe landmarks (..., 478, 3) -> camera-space points (..., 478, 3), cm, undoing perspective.

    Each frame's depth comes from its size: the outer eye corners (3D distance in MediaPipe's pixel-scaled
    x, y, z) are ``EYE_CORNER_DISTANCE_CM`` apart, so they lie at Z = focal / (pixels per cm). Other points
    sit at that depth plus their MediaPipe depth difference; x and y are the pinhole rays at that depth.
    """
    lm = np.asarray(landmarks, np.float64)
    iod_px = np.linalg.norm(lm[..., LEFT_EYE_OUTER, :] - lm[..., RIGHT_EYE_OUTER, :], axis=-1)
    px_per_cm = iod_px / EYE_CORNER_DISTANCE_CM
    z_eyes = 0.5 * (lm[..., LEFT_EYE_OUTER, 2] + lm[..., RIGHT_EYE_OUTER, 2])
    Z = (focal / px_per_cm)[..., None] + (lm[..., 2] - z_eyes[..., None]) / px_per_cm[..., None]
    return np.stack([(lm[..., 0] - centre[0]) * Z / focal, (lm[..., 1] - centre[1]) * Z / focal, Z], -1)


def subject_shape(landmarks: np.ndarray, focal: float | None = None, centre: tuple[float, float] = (0.0, 0.0),
                  max_frames: int = 200, iterations: int = 2) -> np.ndarray | None:
    """The subject's mean face shape from its own landmarks (recipe (b) in the module docstring).

    landmarks: (N, 478, 3) crop pixels (x, y) and MediaPipe depth z in the same scale, NaN rows allowed.
    With ``focal`` (crop pixels) and the principal point ``centre``, each frame is back-projected with
    perspective (:func:`back_project`); without, weak perspective is assumed, which bakes the mean
    frame's perspective (a nose a few % too large) into the shape. Returns (478, 3) float64 in head
    coordinates (cm), or None when no frame has landmarks.
    """
    chosen = np.flatnonzero(neutral_frames(landmarks))
    if chosen.size == 0:
        chosen = np.flatnonzero(np.isfinite(landmarks).all(axis=(1, 2)))
    if chosen.size == 0:
        return None
    chosen = chosen[np.linspace(0, chosen.size - 1, min(max_frames, chosen.size)).astype(int)]
    shapes = landmarks[chosen].astype(np.float64)
    if focal is not None:
        shapes = back_project(shapes, focal, centre)
    w = np.zeros(N_LANDMARKS)
    w[list(PROCRUSTES_INDICES)] = 1.0
    ref = shapes[0]
    for _ in range(iterations):  # generalised Procrustes: align to the current mean, re-estimate it
        aligned = apply_similarity(shapes, *similarity_transform(shapes, ref, w))
        ref = np.median(aligned, axis=0)
    return normalise_shape(ref)


def blend_identity(canonical: np.ndarray, subject: np.ndarray, rigid_weights: np.ndarray,
                   alpha_xy: float, alpha_z: float) -> np.ndarray:
    """Refine the canonical template to the subject: canonical + alpha * (aligned subject - canonical).

    canonical, subject: (478, 3) head coordinates; the subject is first aligned onto the canonical by a
    similarity on ``rigid_weights`` (478,). alpha_xy / alpha_z in [0, 1] weight the subject's evidence per
    axis. Iris points (absent from the canonical mesh) are taken from the subject whole.
    """
    aligned = apply_similarity(subject, *similarity_transform(subject, canonical, rigid_weights))
    alpha = np.array([alpha_xy, alpha_xy, alpha_z])
    out = canonical + alpha * (aligned - canonical)
    out[N_MESH:] = aligned[N_MESH:]
    return out


def _inside(points2d: np.ndarray, polygon: np.ndarray, margin: float) -> np.ndarray:
    """(P, 2) points inside a closed polygon (V, 2) or within ``margin`` of it -> (P,) bool."""
    poly = polygon.astype(np.float32).reshape(-1, 1, 2)
    return np.array([cv2.pointPolygonTest(poly, (float(x), float(y)), True) >= -margin for x, y in points2d])


def landmark_regions(points: np.ndarray) -> np.ndarray:
    """Semantic class of each of the 478 landmarks from a template in head coordinates -> (478,) int8.

    Classification is geometric on the frontal (x, y) layout, so it covers every mesh point, not only the
    contours: iris > eye (contour + margin: lids) > brow > mouth (outer lips + margin) > jaw (everything
    below the nose base, which moves when the jaw opens) > rigid (forehead, nose, upper cheeks, temples).
    Margins are fractions of the eye-corner distance.
    """
    xy = points[:, :2]
    iod = np.linalg.norm(xy[LEFT_EYE_OUTER] - xy[RIGHT_EYE_OUTER])
    regions = np.full(N_LANDMARKS, RIGID, np.int8)
    regions[xy[:, 1] > xy[NOSE_BASE, 1]] = JAW
    regions[_inside(xy, xy[list(LIPS_OUTER)], 0.06 * iod)] = MOUTH
    for brow in (RIGHT_BROW, LEFT_BROW):
        regions[_inside(xy, xy[list(brow)], 0.05 * iod)] = BROW
    for eye in (RIGHT_EYE, LEFT_EYE):
        regions[_inside(xy, xy[list(eye)], 0.06 * iod)] = EYE
    regions[list(RIGHT_IRIS + LEFT_IRIS)] = IRIS
    return regions


def rigid_weights(regions: np.ndarray) -> np.ndarray:
    """1 for rigid landmarks, 0 elsewhere: (478,) -> (478,) float64 (for shape alignment)."""
    return (regions == RIGID).astype(np.float64)


def canonical_template(vertices: np.ndarray) -> FaceTemplate:
    """Recipe (a): the canonical mesh (468, 3) in MediaPipe axes -> a template in head coordinates."""
    points = add_iris_points(canonical_to_head(vertices))
    return FaceTemplate(points.astype(np.float32), landmark_regions(points), "canonical")


def subject_template(landmarks: np.ndarray, focal: float | None = None, centre: tuple[float, float] = (0.0, 0.0)
                     ) -> FaceTemplate:
    """Recipe (b): the subject's own shape (:func:`subject_shape`). Raises ValueError without landmarks."""
    shape = subject_shape(landmarks, focal, centre)
    if shape is None:
        raise ValueError("a face template needs the canonical mesh or frames with landmarks")
    return FaceTemplate(shape.astype(np.float32), landmark_regions(shape), "subject")


def refine_to_subject(template: FaceTemplate, landmarks: np.ndarray, focal: float | None = None,
                      centre: tuple[float, float] = (0.0, 0.0), alpha_xy: float = 0.5, alpha_z: float = 0.25
                      ) -> FaceTemplate:
    """Per-subject identity: blend the subject's shape (seen with ``focal``) into a canonical template.

    Regions stay those of the canonical layout. Returns ``template`` itself when there is nothing to
    blend (no frame with landmarks, or both alphas 0).
    """
    subject = subject_shape(landmarks, focal, centre)
    if subject is None or (alpha_xy == 0 and alpha_z == 0):
        return template
    base = template.points.astype(np.float64)
    refined = blend_identity(base, subject, rigid_weights(template.regions), alpha_xy, alpha_z)
    return FaceTemplate(refined.astype(np.float32), template.regions, f"{template.source}+subject")


def load_canonical(use: bool = True) -> np.ndarray | None:
    """The canonical mesh vertices (468, 3) from the installed ``face_landmarker`` bundle, or None."""
    bundle = find_canonical_bundle() if use else None
    return load_canonical_vertices(bundle) if bundle is not None else None
