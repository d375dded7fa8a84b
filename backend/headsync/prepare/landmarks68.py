"""Optional stage ``landmarks68``: the 68 iBUG points from face-alignment's FAN, beside MediaPipe's mesh.

HeadSync tracks faces with MediaPipe's 478-point mesh (``tracking``). When the ``face-alignment`` package
(1.5.0) and its weights are installed, this stage also runs Adrian Bulat's FAN on every crop and writes
``landmarks68.npy`` (N, 68, 3) float32 in crop pixels, NaN rows where no face: a second, independent
tracker in the 68-point iBUG (300-W) scheme, so the stabilizer or a user can cross-check the mesh
(:func:`compare_trackers`) or use tools that expect 68 points.

Weights. face-alignment downloads its weights from the internet on first use into torch hub's cache.
HeadSync never downloads while preparing, so they are user-installed files, registered in ``registry``
under their torch hub file names: ``fan_3d`` + ``fan_depth`` (``landmarks_type = "3D"``, the default) or
``fan_2d`` (``"2D"``); ``s3fd`` (the package's face detector) is optional. They are handed to the package
through a private torch hub folder that holds only links to the installed files, so it finds them
"cached" and downloads nothing.

Face box. FAN needs a face box. It is the bounding box of the 68 MediaPipe points that correspond to
the iBUG points (:data:`IBUG68_TO_MEDIAPIPE`), passed as ``detected_faces=[box]``, so S3FD is not
needed. Where MediaPipe lost the face, S3FD looks for it when ``s3fd`` is installed (``detect_lost``);
otherwise that frame's row is NaN.

Settings (preset table ``[landmarks68]``): ``enabled`` = ``"auto"`` (run when the package and the weights
for ``landmarks_type`` are installed, else skip), ``true`` (run, or stop with the install commands) or
``false`` (skip). A skipped stage records ``info: {"skipped": reason}`` and writes nothing (a stale
``landmarks68.npy`` from an earlier run is removed). What is installed is part of the recorded
settings (``installed``), so installing the weights later runs the stage on the next ``prepare``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..core import registry
from ..core.devices import pick_device
from ..core.errors import UserError
from ..core.progress import Reporter
from ..core.atomic import save_npy_atomic
from ..subject.folder import Subject

NAME = "landmarks68"
VERSION = 1
REQUIRES = ("landmarks",)
OUTPUT = "landmarks68.npy"
PACKAGE_VERSION = "1.5.0"
PIP_HINT = (f"pip install face-alignment=={PACKAGE_VERSION} (into HeadSync's environment: `pip install --no-deps "
            f"face-alignment=={PACKAGE_VERSION} numba tqdm`, because its opencv-python requirement would replace "
            "opencv-contrib-python)")

# ---- the 68-point iBUG scheme and MediaPipe's mesh --------------------------------------------------------
#: For each of the 68 iBUG (300-W) points, in iBUG order, the MediaPipe face-mesh landmark at the same place
#: on the face. "Left/right" below are as seen in the image (iBUG numbering starts on the image's left,
#: which is the subject's right side).
#:
#: ======  =====================================  ===================================================
#: iBUG    where                                   MediaPipe
#: ======  =====================================  ===================================================
#: 0-16    jaw line, image left -> chin -> right  162 234 93 58 172 136 149 148 152 377 378 365 397 288 323 454 389
#: 17-21   left brow, outer -> inner              71 63 105 66 107
#: 22-26   right brow, inner -> outer             336 296 334 293 301
#: 27-30   nose bridge, top -> tip                168 197 5 4
#: 31-35   nostrils' lower edge, left -> right    75 97 2 326 305
#: 36-41   left eye: outer, upper x2, inner,      33 160 158 133 153 144
#:         lower x2
#: 42-47   right eye: inner, upper x2, outer,     362 385 387 263 373 380
#:         lower x2
#: 48-59   lips' outer contour from the left      61 39 37 0 267 269 291 405 314 17 84 181
#:         corner, along the upper lip and back
#: 60-67   lips' inner contour, same way          78 82 13 312 308 317 14 87
#: ======  =====================================  ===================================================
#:
#: The correspondence is approximate by nature: iBUG's jaw points follow the visible contour and its 2D
#: annotations are placed by hand; the mesh's silhouette vertices are the nearest on the mesh.
IBUG68_TO_MEDIAPIPE: tuple[int, ...] = (
    162, 234, 93, 58, 172, 136, 149, 148, 152, 377, 378, 365, 397, 288, 323, 454, 389,  # jaw
    71, 63, 105, 66, 107,  # left brow
    336, 296, 334, 293, 301,  # right brow
    168, 197, 5, 4,  # nose bridge
    75, 97, 2, 326, 305,  # nostrils
    33, 160, 158, 133, 153, 144,  # left eye
    362, 385, 387, 263, 373, 380,  # right eye
    61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181,  # outer lips
    78, 82, 13, 312, 308, 317, 14, 87,  # inner lips
)

#: MediaPipe landmark -> iBUG point, for the 68 mesh landmarks in the table above.
MEDIAPIPE_TO_IBUG68: dict[int, int] = {m: i for i, m in enumerate(IBUG68_TO_MEDIAPIPE)}

#: iBUG point groups (slices of the 68).
IBUG68_GROUPS: dict[str, slice] = {
    "jaw": slice(0, 17), "left_brow": slice(17, 22), "right_brow": slice(22, 27), "nose_bridge": slice(27, 31),
    "nostrils": slice(31, 36), "left_eye": slice(36, 42), "right_eye": slice(42, 48),
    "outer_lips": slice(48, 60), "inner_lips": slice(60, 68),
}


def _ibug68_mirror() -> tuple[int, ...]:
    """The iBUG point each point becomes when the face is mirrored left-right (midline points: themselves)."""
    m = list(range(68))
    pairs = [(i, 16 - i) for i in range(8)]  # jaw
    pairs += [(17 + i, 26 - i) for i in range(5)]  # brows
    pairs += [(31, 35), (32, 34)]  # nostrils
    pairs += [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes
    pairs += [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58)]  # outer lips
    pairs += [(60, 64), (61, 63), (65, 67)]  # inner lips
    for a, b in pairs:
        m[a], m[b] = b, a
    return tuple(m)


#: ``IBUG68_MIRROR[i]``: the iBUG point that ``i`` becomes in the mirrored face.
IBUG68_MIRROR: tuple[int, ...] = _ibug68_mirror()


def mediapipe_to_ibug68(mesh: np.ndarray) -> np.ndarray:
    """The 68 iBUG-ordered points of MediaPipe landmarks: (..., 478, D) -> (..., 68, D)."""
    mesh = np.asarray(mesh)
    if mesh.ndim < 2 or mesh.shape[-2] < 468:
        raise ValueError(f"expected MediaPipe's 478 (or 468) landmarks on axis -2, got shape {mesh.shape}")
    return mesh[..., IBUG68_TO_MEDIAPIPE, :]


def face_box(mesh: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """FAN's face box (x1, y1, x2, y2) for one frame's MediaPipe landmarks (478, D), in the same pixels.

    The bounding box of the 68 corresponding points (brows to chin, jaw side to jaw side), scaled by
    ``scale`` about its centre: FAN's crops were made from the bounding box of the 68 annotated points.
    """
    xy = mediapipe_to_ibug68(mesh)[:, :2].astype(np.float64)
    lo, hi = xy.min(0), xy.max(0)
    c, half = (lo + hi) / 2, (hi - lo) / 2 * scale
    return np.concatenate([c - half, c + half])


def tracker_distance(lm68: np.ndarray, mesh: np.ndarray) -> np.ndarray:
    """Per-frame mean image-plane distance (px) between 68-point landmarks and MediaPipe's mesh.

    ``lm68`` (..., 68, >=2) and ``mesh`` (..., 478, >=2) in the same pixels; the mesh is read at the 68
    corresponding landmarks. NaN where either tracker has no face.
    """
    d = np.linalg.norm(np.asarray(lm68, np.float64)[..., :2] - mediapipe_to_ibug68(mesh)[..., :2], axis=-1)
    return d.mean(-1)


def compare_trackers(lm68: np.ndarray, mesh: np.ndarray) -> dict[str, Any]:
    """How far the two trackers are apart on the 68 correspondences, over the frames where both found a face.

    ``lm68`` (N, 68, >=2), ``mesh`` (N, 478, >=2), same pixels. Returns ``frames`` (compared),
    ``mean_px``, ``median_px``, ``p95_px`` (of the per-frame means), ``mean_iod`` (the mean distance over
    the distance between the outer eye corners, scale-free), ``per_group_px`` and ``per_point_px`` (68).
    Part of the distance is the schemes' own difference (see :data:`IBUG68_TO_MEDIAPIPE`), so it is a
    cross-check, not an error of either tracker.
    """
    lm68, mesh = np.asarray(lm68, np.float64), np.asarray(mesh, np.float64)
    if lm68.ndim == 2:
        lm68, mesh = lm68[None], mesh[None]
    mp68 = mediapipe_to_ibug68(mesh)[..., :2]
    ok = np.isfinite(lm68[..., :2]).all((1, 2)) & np.isfinite(mp68).all((1, 2))
    if not ok.any():
        return {"frames": 0, "mean_px": None, "median_px": None, "p95_px": None, "mean_iod": None,
                "per_group_px": {}, "per_point_px": []}
    d = np.linalg.norm(lm68[ok][..., :2] - mp68[ok], axis=-1)  # (K, 68)
    per_frame = d.mean(1)
    iod = np.linalg.norm(mp68[ok][:, 36] - mp68[ok][:, 45], axis=-1)
    per_point = d.mean(0)
    return {
        "frames": int(ok.sum()),
        "mean_px": round(float(per_frame.mean()), 3),
        "median_px": round(float(np.median(per_frame)), 3),
        "p95_px": round(float(np.percentile(per_frame, 95)), 3),
        "mean_iod": round(float(np.mean(per_frame / np.maximum(iod, 1e-6))), 4),
        "per_group_px": {k: round(float(per_point[s].mean()), 3) for k, s in IBUG68_GROUPS.items()},
        "per_point_px": [round(float(v), 3) for v in per_point],
    }


# ---- settings ---------------------------------------------------------------------------------------------
LANDMARKS_TYPES = {"3D": ("fan_3d", "fan_depth"), "2D": ("fan_2d",)}


def package_available() -> bool:
    """Whether the ``face_alignment`` package can be imported (without importing it)."""
    return importlib.util.find_spec("face_alignment") is not None


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("face-alignment")
    except Exception:  # noqa: BLE001 - found by find_spec but not installed as a distribution
        return "unknown"


@dataclass(frozen=True)
class Landmarks68Config:
    """The ``[landmarks68]`` table. ``installed`` is not a setting: it records what was found installed."""

    enabled: bool | str = "auto"  # true, false or "auto"
    landmarks_type: str = "3D"  # "3D" (3D-FAN + depth network) or "2D" (2D-FAN; z = 0)
    device: str = "auto"  # "auto" (CUDA when available), "cuda" or "cpu"
    flip_input: bool = True  # FAN also runs on the mirrored crop and averages (face-alignment's default)
    box_scale: float = 1.0  # the face box handed to FAN, relative to the 68 MediaPipe points' bounding box
    detect_lost: bool = True  # where MediaPipe lost the face, find it with S3FD when `s3fd` is installed
    installed: str = field(default="", init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "installed", _installed_stamp(self))


def _installed_stamp(cfg: Landmarks68Config) -> str:
    """What of the package and weights this configuration would use is installed (recorded with the stage)."""
    if cfg.enabled is False or cfg.landmarks_type not in LANDMARKS_TYPES:
        return ""
    names = list(LANDMARKS_TYPES[cfg.landmarks_type]) + (["s3fd"] if cfg.detect_lost else [])
    found = [registry.entry(n).filename for n in names if registry.find(n) is not None]
    pkg = f"face-alignment {_package_version()}" if package_available() else "no face-alignment"
    return "; ".join([pkg, *found])


Config = Landmarks68Config


def resolve(cfg: Landmarks68Config) -> tuple[bool, str, dict[str, Path]]:
    """(run?, why not, installed weight files by registry name). Raises :class:`UserError` when the stage
    is enabled explicitly but cannot run."""
    if cfg.enabled not in (True, False, "auto"):
        raise UserError(f"[{NAME}] enabled = {cfg.enabled!r} is not valid", 'use true, false or "auto"')
    if cfg.landmarks_type not in LANDMARKS_TYPES:
        raise UserError(f"[{NAME}] landmarks_type = {cfg.landmarks_type!r} is not valid", 'use "3D" or "2D"')
    if cfg.device not in ("auto", "cuda", "cpu"):
        raise UserError(f"[{NAME}] device = {cfg.device!r} is not valid", 'use "auto", "cuda" or "cpu"')
    if not 0.5 <= cfg.box_scale <= 2.0:
        raise UserError(f"[{NAME}] box_scale = {cfg.box_scale} is out of range", "use 0.5..2.0 (1.0 by default)")
    if cfg.enabled is False:
        return False, f"disabled in the preset ([{NAME}] enabled = false)", {}
    needed = LANDMARKS_TYPES[cfg.landmarks_type]
    paths = {n: registry.find(n) for n in needed}
    missing = [n for n, p in paths.items() if p is None]
    if cfg.enabled == "auto":
        if missing:
            return False, (f"the face-alignment {cfg.landmarks_type} weights are not installed ({', '.join(missing)}); "
                           "see `headsync models list`"), {}
        if not package_available():
            return False, f"the face-alignment package is not installed ({PIP_HINT})", {}
    if missing:
        cmds = "; ".join(f"download {registry.entry(n).url} and run `headsync models install {n} --from FILE`"
                         for n in missing)
        raise UserError(f"[{NAME}] is enabled but the face-alignment weights {', '.join(missing)} are not installed",
                        f"{cmds} (or set [{NAME}] enabled = \"auto\")")
    if not package_available():
        raise UserError(f"[{NAME}] is enabled but the face-alignment package is not installed",
                        f"{PIP_HINT}; or set [{NAME}] enabled = \"auto\"")
    out: dict[str, Path] = {n: p for n, p in paths.items() if p is not None}
    if cfg.detect_lost and registry.find("s3fd") is not None:
        out["s3fd"] = registry.find("s3fd")
    return True, "", out


# ---- the network ------------------------------------------------------------------------------------------
def build_aligner(cfg: Landmarks68Config, weights: dict[str, Path], device: str):
    """face-alignment's ``FaceAlignment`` over the installed weight files, downloading nothing.

    face-alignment 1.5.0 loads FAN's weights with ``load_file_from_url``, which uses a file already in
    ``torch.hub.get_dir()/checkpoints`` under the URL's file name; so the weights are linked (or copied)
    under their registry file names into a private torch hub folder, set for the construction only. The
    face detector is S3FD from its file (``path_to_detector``) when installed, else the package's
    ``folder`` detector, which loads nothing (boxes always come from MediaPipe then).
    """
    import face_alignment as fa
    import torch

    landmarks_type = fa.LandmarksType.THREE_D if cfg.landmarks_type == "3D" else fa.LandmarksType.TWO_D
    detector, kwargs = "folder", {}
    if "s3fd" in weights:
        detector, kwargs = "sfd", {"path_to_detector": str(weights["s3fd"])}
    previous = torch.hub.get_dir()
    with tempfile.TemporaryDirectory(prefix="headsync-fan-") as hub:
        ckpt = Path(hub) / "checkpoints"
        ckpt.mkdir()
        for name, path in weights.items():
            if name != "s3fd":
                _link(path, ckpt / registry.entry(name).filename)
        torch.hub.set_dir(hub)
        try:
            return fa.FaceAlignment(landmarks_type, device=device, flip_input=cfg.flip_input, face_detector=detector,
                                    face_detector_kwargs=kwargs, compile=False)
        except Exception as e:  # noqa: BLE001 - torch.load of a damaged file raises many kinds
            raise UserError(f"face-alignment could not load its weights ({type(e).__name__}: {e})",
                            "the files may be damaged or of another version; reinstall them with "
                            "`headsync models install NAME --from FILE`")
        finally:
            torch.hub.set_dir(previous)


def _link(src: Path, dest: Path) -> None:
    try:
        os.symlink(Path(src).resolve(), dest)
    except OSError:  # no symlinks (Windows without developer mode)
        shutil.copyfile(src, dest)


def _as_68x3(pts: Any) -> np.ndarray | None:
    a = np.asarray(pts, np.float32)
    if a.shape[0] != 68 or a.ndim != 2 or a.shape[1] not in (2, 3):
        return None
    return a if a.shape[1] == 3 else np.concatenate([a, np.zeros((68, 1), np.float32)], 1)


def track_frames(aligner, images: Iterable[np.ndarray], mesh: np.ndarray, box_scale: float = 1.0,
                 detect_lost: bool = False, reporter: Reporter | None = None) -> tuple[np.ndarray, int]:
    """Run ``aligner`` (a face-alignment ``FaceAlignment`` or anything with its ``get_landmarks_from_image``)
    on each RGB crop with the face box from that frame's MediaPipe landmarks ``mesh`` (N, 478, 3).

    Returns ((N, 68, 3) float32, NaN rows where no face; number of frames found by the aligner's own
    detector, which runs only with ``detect_lost`` where the mesh has no face).
    """
    n = len(mesh)
    out = np.full((n, 68, 3), np.nan, np.float32)
    detected, prev = 0, None
    for i, img in enumerate(images):
        if i >= n:
            break
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "No faces were detected."
            if np.isfinite(mesh[i]).all():
                res = aligner.get_landmarks_from_image(img, detected_faces=[face_box(mesh[i], box_scale)])
                cands = [a for a in (_as_68x3(r) for r in (res or [])) if a is not None][:1]
            elif detect_lost:
                res = aligner.get_landmarks_from_image(img)
                cands = [a for a in (_as_68x3(r) for r in (res or [])) if a is not None]
                detected += bool(cands)
            else:
                cands = []
        if cands:
            if prev is not None and len(cands) > 1:
                cands.sort(key=lambda a: float(np.linalg.norm(a[:, :2].mean(0) - prev)))
            out[i] = cands[0]
            prev = cands[0][:, :2].mean(0)
        if reporter is not None:
            reporter.advance(1)
    return out, detected


def _read_frames(subject: Subject, n: int) -> Iterable[np.ndarray]:
    import cv2

    for i in range(n):
        p = subject.frame_path(i)
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None:
            raise UserError(f"the crop {p} is missing or unreadable",
                            "run `headsync prepare` again for this subject; if it persists, prepare it into a new folder")
        yield cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


# ---- the stage --------------------------------------------------------------------------------------------
def run(subject: Subject, cfg: Landmarks68Config, reporter: Reporter) -> dict:
    """Stage ``landmarks68``: write ``landmarks68.npy`` (N, 68, 3), or record why it was skipped."""
    enabled, reason, weights = resolve(cfg)
    out_path = subject.path(OUTPUT)
    if not enabled:
        out_path.unlink(missing_ok=True)
        reporter.message(f"{NAME}: skipped ({reason})")
        return {"skipped": reason}
    n = subject.frame_count()
    mesh = np.load(subject.path("landmarks.npy"))
    if len(mesh) != n:
        raise UserError(f"landmarks.npy has {len(mesh)} rows for {n} frames", "prepare the subject again into a new folder (`headsync prepare VIDEO --subject NEW_DIR`)")
    device = str(pick_device(cfg.device, f"[{NAME}] device"))
    aligner = build_aligner(cfg, weights, device)
    reporter.start(NAME, n)
    lms, detected = track_frames(aligner, _read_frames(subject, n), mesh, cfg.box_scale,
                                 cfg.detect_lost and "s3fd" in weights, reporter)
    save_npy_atomic(out_path, lms)
    found = int(np.isfinite(lms).all((1, 2)).sum())
    cmp = compare_trackers(lms, mesh)
    cmp.pop("per_point_px")
    return {"frames": n, "face_fraction": round(found / max(n, 1), 4), "landmarks_type": cfg.landmarks_type,
            "device": device, "found_by_s3fd": detected, "weights": sorted(registry.entry(k).filename for k in weights),
            "vs_mediapipe": cmp}
