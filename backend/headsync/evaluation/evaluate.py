"""``headsync eval``: how well a trained run reproduces the held-out frames, and how well its mouth follows
audio.

On the held-out frames (the last 10% of the clip, never trained on), each frame is rendered with its own
audio, expression and pose and compared with the real crop:

* PSNR (dB) and SSIM at the training resolution;
* LMD: MediaPipe's face mesh is run on the rendered and the real crop (at the subject's crop resolution)
  and the mean distance of the lip landmarks is reported in crop pixels;
* mouth-opening correlation: the inner-lip gap (five mesh point pairs, over the forehead-chin distance)
  measured on the render against the same measure on the real frames, and, on the bundled sample (its
  source folder holds ``ground_truth.npz``), against the generator's true opening. When the sample's
  held-back dubbing audio (``dub.wav``) is there too, it is rendered and its measured opening correlated with
  the true opening for that audio, recorded in ``ground_truth.npz`` (``dub_mouth_open``, computed by the
  sample generator's ``mouth_opening``; ``dub_sha256`` ties it to that file). Ground truth is data: eval
  never runs code found beside a video.

Results go to ``models/RUN/metrics.json`` under ``"eval"``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..core import media
from ..curves import Curves, matrix_to_euler_xyz
from ..subject.data import check_prepared, load_expression, load_pose, load_audio_features
from ..core.devices import pick_device, set_threads
from ..core.errors import UserError
from ..renderers.common.losses import psnr_from_mse
from ..core.progress import Reporter
from .measures import mouth_opening
from ..render.dub import RenderConfig, features_for_audio, render_frames, run_render_config
from ..core.atomic import write_json_atomic
from ..subject.folder import Subject
from ..subject.info import METRICS_FILE
from ..training.checkpoints import load_renderer, run_dir


def lip_indices() -> np.ndarray:
    """The mesh's lip landmarks (outer and inner contours), from MediaPipe's connection list."""
    import mediapipe as mp

    return np.array(sorted({i for pair in mp.solutions.face_mesh.FACEMESH_LIPS for i in pair}))


class MeshReader:
    """MediaPipe face mesh on single images (static mode): (468, 2) pixel landmarks, (478, 2) with
    ``refine``, or None.

    Mouths are read without the lip/iris refinement model: on the renderer's soft, upscaled output the
    refined lips read a wide-open mouth as closed (measured on the sample: the opening came out
    anti-correlated with the truth), while the base mesh orders open and closed mouths correctly.
    Eyes need ``refine``, as ``prepare`` tracks them (``landmarks.npy``): the base mesh reads a real closed
    eye at an aperture of 0.18 where the refined one reads 0.04 (franck's source crops; open 0.32 vs 0.29),
    so a base-mesh reading can never reach the prepared landmarks' closed apertures (docs/benchmarks.md).
    """

    def __init__(self, refine: bool = False):
        import mediapipe as mp

        self._mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1,
                                                     refine_landmarks=refine, min_detection_confidence=0.3)

    def __call__(self, rgb: np.ndarray) -> np.ndarray | None:
        res = self._mesh.process(np.ascontiguousarray(rgb))
        if not res.multi_face_landmarks:
            return None
        h, w = rgb.shape[:2]
        return np.array([(p.x * w, p.y * h) for p in res.multi_face_landmarks[0].landmark], np.float32)

    def close(self) -> None:
        self._mesh.close()


def pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson correlation over the pairs where both are finite; None with fewer than 5 or no variance."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 5 or a[ok].std() < 1e-9 or b[ok].std() < 1e-9:
        return None
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def ssim_rgb(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a, b, channel_axis=-1, data_range=255))


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA) if img.shape[0] != size else img


def sample_truth(subject: Subject) -> tuple[dict[str, np.ndarray], Path] | None:
    """The bundled sample's ground truth (``ground_truth.npz`` beside the subject's source video) and its
    folder, or None. Data only: nothing found in a user's folder is ever run."""
    src = Path(subject.source().get("path", ""))
    gt_path = src.parent / "ground_truth.npz"
    if not gt_path.is_file():
        return None
    try:
        with np.load(gt_path, allow_pickle=False) as f:
            gt = {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
        raise UserError(f"{gt_path} is not a readable ground-truth file ({e})",
                        "restore it from git, or remove it to evaluate without ground truth")
    return gt, src.parent


def dub_truth(gt: dict[str, np.ndarray], dub_path: Path, fps: float, n: int) -> np.ndarray | None:
    """The true mouth opening of ``dub_path`` at ``n`` frames of ``fps`` from the sample's ground truth
    (recorded at the sample's frame rate; resampled at frame centres), or None when the ground truth has
    none for this very file (its sha256 differs)."""
    if "dub_mouth_open" not in gt or "dub_sha256" not in gt:
        return None
    if hashlib.sha256(dub_path.read_bytes()).hexdigest() != str(gt["dub_sha256"]):
        return None
    truth, gt_fps = gt["dub_mouth_open"], float(gt["fps"])
    if abs(fps - gt_fps) < 1e-9:
        return truth[:n]
    t = (np.arange(n) + 0.5) / fps
    return np.interp(t, (np.arange(truth.size) + 0.5) / gt_fps, truth).astype(np.float32)


def evaluate(subject: Subject, run: str = "default", reporter: Reporter | None = None,
             max_frames: int | None = None, dub: bool = True) -> dict[str, Any]:
    """Metrics of run ``run`` (see the module docstring); ``max_frames`` caps the held-out frames used."""
    from ..core.progress import silent

    reporter = reporter or silent()
    rdir = run_dir(subject, run)
    rcfg: RenderConfig = run_render_config(rdir)
    set_threads(rcfg.threads)
    device = pick_device(rcfg.device, "[render] device")
    renderer, _ = load_renderer(rdir / "checkpoint.pt", device)
    kind = renderer.meta.audio_feature
    check_prepared(subject, kind)
    n = subject.frame_count()
    hold = np.asarray(renderer.meta.holdout_frames, np.int64)
    if hold.size == 0:
        raise UserError(f"run {run!r} was trained on every frame, so there is nothing held out to evaluate",
                        "prepare the subject with [split] holdout_fraction > 0")
    if max_frames and hold.size > max_frames:
        hold = hold[np.linspace(0, hold.size - 1, max_frames).astype(int)]
    pose = load_pose(subject)
    S = pose.K.size
    expr = load_expression(subject, n)
    feats = load_audio_features(subject, kind, n)
    curves = Curves(float(subject.source()["fps"]), 1, expr[hold], matrix_to_euler_xyz(pose.R[hold]),
                    pose.T[hold], "captured")
    r = renderer.meta.resolution
    mesh = MeshReader()
    lips = lip_indices()
    psnrs, ssims, lmds, open_r, open_gt = [], [], [], [], []
    frames = render_frames(subject, renderer, feats, curves, False, rcfg, device, reporter, src_idx=hold,
                           feat_rows=hold)
    for k, crop in enumerate(frames):
        real = cv2.cvtColor(cv2.imread(str(subject.frame_path(int(hold[k])))), cv2.COLOR_BGR2RGB)
        real = _resize(real, S)
        a, b = _resize(crop, r), _resize(real, r)
        psnrs.append(psnr_from_mse(float(((a / 255.0 - b / 255.0) ** 2).mean())))
        ssims.append(ssim_rgb(a, b))
        lr, lg = mesh(crop), mesh(real)
        open_r.append(mouth_opening(lr) if lr is not None else np.nan)
        open_gt.append(mouth_opening(lg) if lg is not None else np.nan)
        if lr is not None and lg is not None:
            lmds.append(float(np.linalg.norm(lr[lips] - lg[lips], axis=1).mean()))
    metrics: dict[str, Any] = {
        "heldout_frames": int(hold.size),
        "psnr": round(float(np.mean(psnrs)), 3),
        "ssim": round(float(np.mean(ssims)), 4),
        "lmd_px": round(float(np.mean(lmds)), 3) if lmds else None,
        "lmd_crop_size": S,
        "face_found_fraction": round(float(np.isfinite(open_r).mean()), 3),
        "mouth_corr_vs_real_frames": _round(pearson(np.array(open_r), np.array(open_gt))),
        "resolution": r,
    }
    sample = sample_truth(subject)
    if sample is not None:
        gt, folder = sample
        if "mouth_open" in gt and gt["mouth_open"].shape[0] == n:
            metrics["mouth_corr_vs_ground_truth"] = _round(pearson(np.array(open_r), gt["mouth_open"][hold]))
        dub_path = folder / "dub.wav"
        if dub and dub_path.is_file() and "dub_mouth_open" in gt:
            metrics.update(_dub_correlation(subject, renderer, rcfg, device, dub_path, gt, mesh, reporter,
                                            max_frames))
    mesh.close()
    return metrics


def _dub_correlation(subject, renderer, rcfg, device, dub_path: Path, gt: dict[str, np.ndarray],
                     mesh: MeshReader, reporter: Reporter, max_frames: int | None) -> dict[str, Any]:
    """Render the held-back dubbing audio and correlate the measured mouth opening with the true one."""
    from ..curves import captured_curves

    fps = float(subject.source()["fps"])
    audio = media.read_audio(dub_path)
    n_out = int(round(audio.size / media.AUDIO_RATE * fps))
    if max_frames:
        n_out = min(n_out, max(max_frames, 10))
    truth = dub_truth(gt, dub_path, fps, n_out)
    if truth is None:
        return {}
    feats = features_for_audio(subject, renderer.meta.audio_feature, audio, fps,
                               int(round(audio.size / media.AUDIO_RATE * fps)))
    curves = captured_curves(subject, n_out)
    measured = []
    for crop in render_frames(subject, renderer, feats, curves, False, rcfg, device, reporter):
        lm = mesh(crop)
        measured.append(mouth_opening(lm) if lm is not None else np.nan)
    return {"dub_frames": n_out, "dub_mouth_corr_vs_ground_truth": _round(pearson(np.array(measured), truth))}


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 4)


def eval_task(params: dict[str, Any], reporter: Reporter) -> dict[str, Any]:
    """Entry of the ``eval`` job: ``subject``, ``run``. Writes the metrics into the run's metrics.json.

    With ``sync`` (a video path or ``latest``) it judges that video's lip sync instead (``sync_judge``)."""
    if params.get("sync"):
        from ..face_sync.sync_judge import sync_task

        return sync_task({"subject": params["subject"], "video": params["sync"], "audio": params.get("audio")},
                         reporter)
    subject = Subject(Path(params["subject"]).expanduser().resolve())
    if not subject.exists():
        raise UserError(f"subject {subject.root} is not prepared (no subject.json)",
                        "run `headsync prepare` and `headsync train` first")
    run = params.get("run") or "default"
    metrics = evaluate(subject, run, reporter)
    path = run_dir(subject, run) / METRICS_FILE
    try:
        saved = json.loads(path.read_text()) if path.exists() else {}
    except json.JSONDecodeError:
        saved = {}
    saved["eval"] = metrics
    write_json_atomic(path, saved)
    # what the data could not give, and how strongly each coefficient acts (checked after training)
    return {"metrics": metrics, "metrics_file": str(path), "warnings": subject.load().get("warnings", []),
            "expression_response": saved.get("expression_response"),
            "weak_expressions": saved.get("weak_expressions")}
