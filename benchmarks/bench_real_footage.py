"""Issue 11's acceptance measures on a trained subject (a real clip or the sample): do the expression edits
act, are captured blinks rendered, how sharp is the face, does the composite leave the rest of the frame
alone.

    PYTHONPATH=backend .venv/bin/python benchmarks/bench_real_footage.py --subject DIR --run RUN \
        [--frames 12] [--json OUT.json]

On ``--frames`` held-out frames (never trained on), each rendered with its own audio and pose:

* blink edit: ``eyeBlinkLeft = eyeBlinkRight = 1``; progress of the face-mesh eye aperture from the unedited
  render's toward the most closed aperture of the training frames (the source crops of the training frames
  at or under the prepared landmarks' 1st percentile, read by the same refined mesh as the renders);
  acceptance >= 0.5;
* brow edit: ``browInnerUp = 1``; relative change of the brow-to-eye distance (acceptance >= +5%) and of the
  mouth opening on the blink and brow edits (acceptance under 10%), also as a share of the subject's open
  mouth while speaking (``mouth_change_of_speaking``: a closed rendered mouth makes the relative change a
  ratio of two sub-pixel readings);
* captured blinks: held-out frames whose source eyes are closed (aperture under 0.2 x the clip's median),
  rendered with the captured curves; render aperture vs the source crop's, both read by the same mesh
  (acceptance within 30%);
* detail ratio (Laplacian variance, render vs source) and PSNR over the face-skin label, at crop size;
* composite: full-frame portrait vs the source frame outside the face+neck labels grown by the
  Portrait-Sync feather (grow + 3 blur sigmas + support growth): mean absolute difference (acceptance < 1
  grey level) and the worst 8x8 block (acceptance <= 10).

Eyes and brows are read with MediaPipe's refined face mesh (as ``prepare`` tracked the source), the mouth
with the base mesh (as ``headsync eval``); see :class:`headsync.evaluation.evaluate.MeshReader`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from headsync.core.progress import silent
from headsync.curves import Curves, matrix_to_euler_xyz
from headsync.evaluation import measures as ms
from headsync.evaluation.evaluate import MeshReader
from headsync.post.portrait import PortraitConfig, crop_region
from headsync.prepare.checks import CLOSED_APERTURE_RATIO, apertures
from headsync.render.dub import render_frames, run_render_config, SourceFrames
from headsync.subject.data import load_audio_features, load_expression, load_pose, read_labels, read_rgb
from headsync.subject.folder import CORE_EXPRESSIONS, Subject
from headsync.core.devices import pick_device, set_threads
from headsync.training.checkpoints import load_renderer, run_dir

BLINK = [CORE_EXPRESSIONS.index("eyeBlinkLeft"), CORE_EXPRESSIONS.index("eyeBlinkRight")]
BROW = CORE_EXPRESSIONS.index("browInnerUp")
FACE_NECK = (1, 2, 3, 5)


def _render(subject, renderer, rcfg, device, frames, expr, pose, feats, portrait):
    curves = Curves(float(subject.source()["fps"]), 1, expr, matrix_to_euler_xyz(pose.R[frames]), pose.T[frames],
                    "edited")
    return list(render_frames(subject, renderer, feats, curves, portrait, rcfg, device, silent(),
                              src_idx=frames, feat_rows=frames))


def _source_crops(subject, frames, size):
    return [read_rgb(subject.frame_path(int(f)), size) for f in frames]


def _measure(mesh, imgs, fn):
    vals = []
    for img in imgs:
        lm = mesh(img)
        vals.append(fn(lm) if lm is not None else np.nan)
    return np.array(vals)


def frame_outside_mask(labels: np.ndarray, box, width: int, height: int, margin_px: int) -> np.ndarray:
    """(H, W) bool: frame pixels outside the crop's face+neck labels grown by ``margin_px`` crop pixels."""
    grown = ms.grow_mask(np.isin(labels, FACE_NECK), margin_px).astype(np.uint8)
    x0, y0, side, ix0, iy0, ix1, iy1 = crop_region(box, width, height)
    big = cv2.resize(grown, (side, side), interpolation=cv2.INTER_NEAREST)
    inside = np.zeros((height, width), bool)
    inside[iy0:iy1, ix0:ix1] = big[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0] > 0
    return ~inside


def bench(subject: Subject, run: str, n_frames: int) -> dict:
    rdir = run_dir(subject, run)
    rcfg = run_render_config(rdir)
    set_threads(rcfg.threads)
    device = pick_device(rcfg.device)
    renderer, _ = load_renderer(rdir / "checkpoint.pt", device)
    n = subject.frame_count()
    hold = np.asarray(renderer.meta.holdout_frames, np.int64)
    train = np.asarray(renderer.meta.train_frames, np.int64)
    frames = hold[np.linspace(0, hold.size - 1, min(n_frames, hold.size)).astype(int)]
    pose = load_pose(subject)
    S = pose.K.size
    expr = load_expression(subject, n)
    feats = load_audio_features(subject, renderer.meta.audio_feature, n)
    src_lm = np.load(subject.path("landmarks.npy"))
    src_ap = apertures(src_lm)
    # The subject's open mouth while speaking (90th percentile over the training frames): the scale of the
    # mouth changes below when the rendered mouth is closed (franck's, under a track that does not drive his
    # lips, opens 0.003 face heights: under a pixel, where a relative change is the face mesh's noise).
    ok = train[np.isfinite(src_lm[train, :, :2]).all((1, 2))]
    speaking = float(np.percentile([ms.mouth_opening(src_lm[f]) for f in ok[:: max(1, ok.size // 400)]], 90))
    p1 = float(np.nanpercentile(src_ap[train], 1))
    mesh, eyes = MeshReader(), MeshReader(refine=True)  # mouth: base mesh; eyes and brows: refined
    # the reference read by the renders' instrument: the most closed training frames' source crops
    most_closed_frames = train[src_ap[train] <= p1]
    most_closed = float(np.nanmean(_measure(eyes, _source_crops(subject, most_closed_frames, S), ms.eye_aperture)))
    args = (subject, renderer, rcfg, device)

    base = _render(*args, frames, expr[frames], pose, feats, False)
    e_blink = expr[frames].copy()
    e_blink[:, BLINK] = 1.0
    blink = _render(*args, frames, e_blink, pose, feats, False)
    e_brow = expr[frames].copy()
    e_brow[:, BROW] = 1.0
    brow = _render(*args, frames, e_brow, pose, feats, False)
    ap0, ap1 = _measure(eyes, base, ms.eye_aperture), _measure(eyes, blink, ms.eye_aperture)
    b0, b1 = _measure(eyes, base, ms.brow_to_eye), _measure(eyes, brow, ms.brow_to_eye)
    m0 = _measure(mesh, base, ms.mouth_opening)
    m_blink, m_brow = _measure(mesh, blink, ms.mouth_opening), _measure(mesh, brow, ms.mouth_opening)
    out: dict = {"subject": str(subject.root), "run": run, "frames": frames.tolist(), "resolution": renderer.meta.resolution,
                 "crop": S, "face_found": float(np.isfinite(ap0).mean())}
    out["blink_edit"] = {"aperture_unedited": float(np.nanmean(ap0)), "aperture_edited": float(np.nanmean(ap1)),
                         "most_closed_training": most_closed, "most_closed_training_landmarks": p1,
                         "source_aperture": float(np.nanmean(_measure(eyes, _source_crops(subject, frames, S),
                                                                      ms.eye_aperture))),
                         "progress": ms.closure_progress(float(np.nanmean(ap0)), float(np.nanmean(ap1)), most_closed),
                         "mouth_change": ms.relative_change(float(np.nanmean(m0)), float(np.nanmean(m_blink))),
                         "mouth_change_of_speaking": float(np.nanmean(m_blink) - np.nanmean(m0)) / speaking}
    out["brow_edit"] = {"brow_to_eye_unedited": float(np.nanmean(b0)), "brow_to_eye_edited": float(np.nanmean(b1)),
                        "change": ms.relative_change(float(np.nanmean(b0)), float(np.nanmean(b1))),
                        "mouth_change": ms.relative_change(float(np.nanmean(m0)), float(np.nanmean(m_brow))),
                        "mouth_change_of_speaking": float(np.nanmean(m_brow) - np.nanmean(m0)) / speaking}
    out["mouth"] = {"unedited": float(np.nanmean(m0)), "speaking_p90": speaking}

    # captured blinks on held-out frames whose source eyes are closed
    closed = hold[src_ap[hold] < CLOSED_APERTURE_RATIO * np.nanmedian(src_ap)]
    if closed.size:
        imgs = _render(*args, closed, expr[closed], pose, feats, False)
        r_ap = _measure(eyes, imgs, ms.eye_aperture)
        s_ap = _measure(eyes, _source_crops(subject, closed, S), ms.eye_aperture)
        out["captured_blinks"] = {"frames": closed.tolist(), "source_aperture": np.round(s_ap, 4).tolist(),
                                  "source_aperture_landmarks": src_ap[closed].round(4).tolist(),
                                  "render_aperture": np.round(r_ap, 4).tolist(),
                                  "median_relative_error": float(np.nanmedian(np.abs(r_ap - s_ap) / s_ap))
                                  if np.isfinite(r_ap - s_ap).any() else None,
                                  "open_aperture_median": float(np.nanmedian(src_ap))}
    else:
        out["captured_blinks"] = None

    detail, psnr = [], []
    for f, img in zip(frames, base):
        src = read_rgb(subject.frame_path(int(f)), S)
        skin = read_labels(subject.mask_path(int(f)), S) == 1
        detail.append(ms.detail_ratio(img, src, skin))
        psnr.append(ms.masked_psnr(img, src, skin))
    out["detail_ratio"] = float(np.mean(detail))
    out["face_skin_psnr"] = float(np.mean([p for p in psnr if p is not None]))

    comp_frames = frames[:: max(1, frames.size // 4)]
    portraits = _render(*args, comp_frames, expr[comp_frames], pose, feats, True)
    m = subject.load()
    src_info, box = m["source"], tuple(m["crop"]["box"])
    source = SourceFrames(src_info["path"], float(src_info["fps"]), int(comp_frames.max()) + 1,
                          (int(src_info["width"]), int(src_info["height"])))
    pc = PortraitConfig(blur=rcfg.blur, grow=rcfg.grow)
    # the same margin for runs made before the support guard existed (benchmarks compare code versions)
    margin = int(round((pc.grow + 3 * pc.blur + getattr(pc, "support_grow", 0.03)) * S))
    leaks = []
    for f, img in zip(comp_frames, portraits):
        labels = read_labels(subject.mask_path(int(f)), S)
        outside = frame_outside_mask(labels, box, img.shape[1], img.shape[0], margin)
        leaks.append(ms.composite_leak(img, source[int(f)], outside))
    out["composite"] = {"mean_abs_outside": float(np.mean([lk.mean_abs for lk in leaks])),
                        "max_8x8_outside": float(np.max([lk.max_patch for lk in leaks])), "margin_crop_px": margin}
    mesh.close()
    eyes.close()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--subject", required=True)
    p.add_argument("--run", default="default")
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--json")
    a = p.parse_args(argv)
    res = bench(Subject(Path(a.subject).resolve()), a.run, a.frames)
    text = json.dumps(res, indent=1)
    print(text)
    if a.json:
        Path(a.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
