"""Benchmark of the torso path (issue 15) on prepared subjects: restorer vs today's gap fill, the dark chin
band of a mouth-opens dub, an edited head pose with the torso field, and the time each part adds.

    PYTHONPATH=backend nice -n 10 .venv/bin/python benchmarks/bench_torso.py SUBJECT [SUBJECT ...] \
        [--preset preview] [--frames 12] [--out result.json]

Trains the subject's torso parts (``field+restorer``, the preset's [torso] sizes; ``--train`` says which),
then measures on the held-out frames (the subject's split, never trained on). No trained
head is needed: the "rendered" face is a source face (see each measure), so the numbers isolate the torso
path. Prints one JSON object per subject.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from headsync.core.config import load_preset, section
from headsync.core.progress import silent
from headsync.evaluation import torso_metrics as tm
from headsync.post import portrait
from headsync.post.torso import bands
from headsync.post.torso.config import TorsoConfig
from headsync.post.torso import field as torso_field
from headsync.post.torso.path import FIELD_FILE, RECORD_FILE, TorsoLayer, TorsoPath, render_hole
from headsync.post.torso.restorer import inpaint
from headsync.renderers.common.cameras import project
from headsync.subject.data import background_layer, load_pose, read_labels, read_rgb
from headsync.subject.labels import FACE, HEAD_LABELS
from headsync.subject.split import split_frames
from headsync.subject.folder import Subject
from headsync.core.atomic import torch_save_atomic, write_json_atomic
from headsync.subject.split import subject_split
from headsync.training.torso import train_subject_field, train_torso

#: MediaPipe face-mesh inner-lip midpoints (upper, lower) and forehead/chin, for the mouth opening.
UPPER_LIP, LOWER_LIP, FOREHEAD, CHIN = 13, 14, 10, 152
#: A "render" face comes from a frame within this rotation (deg) and translation (head units, cm) of the
#: source frame, whose mouth opening differs by at least MIN_OPENING (inner-lip gap / face height).
MATCH_DEG, MATCH_T, MIN_OPENING = 5.0, 1.0, 0.02


def mouth_opening(landmarks: np.ndarray) -> np.ndarray:
    """(N, 478, 3) face mesh -> (N,) inner-lip gap over face height (NaN where no face)."""
    gap = np.linalg.norm(landmarks[:, LOWER_LIP, :2] - landmarks[:, UPPER_LIP, :2], axis=-1)
    return gap / np.linalg.norm(landmarks[:, CHIN, :2] - landmarks[:, FOREHEAD, :2], axis=-1)


def frame(subject: Subject, j: int, S: int) -> tuple[np.ndarray, np.ndarray]:
    return read_rgb(subject.frame_path(j), S), read_labels(subject.mask_path(j), S)


def crop_output(crop: np.ndarray, composite: np.ndarray, labels: np.ndarray, opacity: np.ndarray,
                region: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The Portrait-Sync blend at crop level (box = the whole crop): output (S, S, 3) float, merge mask."""
    m = portrait.merge_mask(labels, opacity, portrait.PortraitConfig(), region=region)
    out = portrait.paste(crop, composite, m, (0.0, 0.0, float(crop.shape[0])))
    return out.astype(np.float32) / 255.0, m


def mean(xs: list[float]) -> float:
    xs = [x for x in xs if np.isfinite(x)]
    return round(float(np.mean(xs)), 4) if xs else float("nan")


def expanded_band(path: TorsoPath, subject: Subject, hold: np.ndarray, S: int, plate: np.ndarray) -> dict:
    """Held-out frames, face mask expanded by the render expansion: the band restored vs the truth.

    The face (labels 1-3) stays as "rendered"; the band around it is relabelled face (as if the source
    face were larger there), so today's path fills it with the neck colour; the restorer inpaints it;
    OpenCV's Telea inpainting is a classical reference."""
    res = {"restorer": ([], []), "neck_colour": ([], []), "telea": ([], [])}
    for j in hold:
        crop, labels = frame(subject, int(j), S)
        truth = crop.astype(np.float32) / 255.0
        m = bands.face_mask(labels)
        removed = render_hole(labels, path.cfg.expand_render)
        band = removed & ~m
        if not band.any():
            continue
        head, op = truth * m[..., None], m.astype(np.float32)
        fake = labels.copy()
        fake[band] = FACE
        bg = background_layer(crop, fake, plate).astype(np.float32) / 255.0
        today = portrait.fill_gaps(head, op, bg, fake, portrait.neck_colour(truth, labels))
        restored = inpaint(path.restorer, head, op, np.where(removed[..., None], 0.0, truth), band, path.device)
        hole = (band * 255).astype(np.uint8)
        telea = cv2.inpaint(crop, hole, 3, cv2.INPAINT_TELEA).astype(np.float32) / 255.0
        for k, img in (("restorer", restored), ("neck_colour", today), ("telea", telea)):
            res[k][0].append(tm.band_psnr(img, truth, band))
            res[k][1].append(tm.band_ssim(img, truth, band))
    return {k: {"band_psnr_db": mean(v[0]), "band_ssim": mean(v[1])} for k, v in res.items()} | {
        "frames": len(res["restorer"][0]), "band_px": bands.scaled_px(path.cfg.expand_render, S)}


def rotation_deg(Ra: np.ndarray, Rb: np.ndarray) -> float:
    c = (np.trace(Ra.T @ Rb) - 1) / 2
    return float(np.degrees(np.arccos(np.clip(c, -1, 1))))


def jaw_mismatch(path: TorsoPath, subject: Subject, hold: np.ndarray, S: int, plate: np.ndarray, n: int,
                 opens: bool = True) -> dict:
    """A dub whose mouth opens where the source's is closed (``opens``; else the reverse, SyncTalk++'s
    case), without a trained head: the face (labels 1-3) of a frame of nearly the same pose with the
    mouth open (closed) is laid, as the "render", over a held-out source frame with the mouth closed
    (open). Dark-pixel fraction of the chin/neck band (and the seam along the face edge there) for
    today's neck-colour fill and the restorer, against the source frames' own value."""
    pose = load_pose(subject)
    jaw = np.nan_to_num(mouth_opening(np.load(subject.path("landmarks.npy"))), nan=0.0)
    sign = 1.0 if opens else -1.0
    sources = hold[np.argsort(sign * jaw[hold])][:n]
    out = {"today": [], "restorer": [], "source_closed": [], "source_open": [], "seam_today": [],
           "seam_restorer": [], "seam_source": [], "jaw_closed": [], "jaw_open": []}
    px = bands.scaled_px(path.cfg.expand_render, S)
    for i in sources:
        near = [j for j in range(len(jaw)) if rotation_deg(pose.R[i], pose.R[j]) < MATCH_DEG
                and np.linalg.norm(pose.T[i] - pose.T[j]) < MATCH_T]
        j = max(near, key=lambda k: sign * jaw[k])
        if sign * (jaw[j] - jaw[i]) < MIN_OPENING:
            continue
        crop_i, lab_i = frame(subject, int(i), S)
        crop_j, lab_j = frame(subject, int(j), S)
        ci, cj = crop_i.astype(np.float32) / 255.0, crop_j.astype(np.float32) / 255.0
        mj = bands.face_mask(lab_j)
        op = cv2.GaussianBlur(mj.astype(np.float32), (0, 0), 0.7)
        head = cj * op[..., None]
        bg = background_layer(crop_i, lab_i, plate).astype(np.float32) / 255.0
        layer_src = TorsoPath("source", path.cfg)
        today = layer_src.composite(head, op, TorsoLayer(bg, None), lab_i, ci)
        restored = path.composite(head, op, TorsoLayer(bg, None), lab_i, ci)
        union = lab_i.copy()
        union[mj] = np.where(lab_j[mj] > 0, lab_j[mj], union[mj])
        band = bands.chin_neck_band(union, px)
        ref = float(tm.luma(portrait.neck_colour(ci, lab_i)[None, None])[0, 0])
        o_today, _ = crop_output(crop_i, today, lab_i, op, None)
        o_rest, _ = crop_output(crop_i, restored, lab_i, op, None)
        out["today"].append(tm.dark_fraction(o_today, band, ref))
        out["restorer"].append(tm.dark_fraction(o_rest, band, ref))
        own_i = tm.dark_fraction(ci, bands.chin_neck_band(lab_i, px), ref)
        own_j = tm.dark_fraction(cj, bands.chin_neck_band(lab_j, px), ref)
        out["source_closed"].append(own_i if opens else own_j)
        out["source_open"].append(own_j if opens else own_i)
        out["seam_today"].append(tm.seam_energy(o_today, op, where=band))
        out["seam_restorer"].append(tm.seam_energy(o_rest, op, where=band))
        out["seam_source"].append(tm.seam_energy(ci, bands.face_mask(lab_i).astype(np.float32),
                                                 where=bands.chin_neck_band(lab_i, px)))
        out["jaw_closed"].append(float(min(jaw[i], jaw[j])))
        out["jaw_open"].append(float(max(jaw[i], jaw[j])))
    return {k: mean(v) for k, v in out.items()} | {"pairs": len(out["today"])}


def yaw(deg: float) -> np.ndarray:
    a = np.radians(deg)
    return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])


def edited_pose(path: TorsoPath, subject: Subject, hold: np.ndarray, S: int, plate: np.ndarray, n: int) -> dict:
    """Head pose edited by +/-10 deg yaw (about the head's vertical axis). The "rendered" head is the
    source head (labels 1-4) moved by the affine map that carries the template's projection from the
    source pose to the edited one. Key point motion (px at S), the field torso's centroid motion, head
    clipping and seam energy along each path's merge boundary (and the source frame's on the same
    pixels), source path vs field."""
    pose = load_pose(subject)
    K = pose.K
    tpl = pose.template
    res = {k: [] for k in ("keypoint_px", "torso_centroid_px", "head_px", "clip_source", "clip_field",
                           "seam_source", "seam_field", "seam_source_in_source", "seam_field_in_source")}
    keys = path.field.keys.detach().cpu().numpy()
    for j in hold[:: max(1, len(hold) // n)][:n]:
        crop, labels = frame(subject, int(j), S)
        ci = crop.astype(np.float32) / 255.0
        head_m = np.isin(labels, HEAD_LABELS).astype(np.float32)
        R, T = pose.R[j], pose.T[j]
        _, a0 = path.field_torso(R, T, K, S)
        for d in (-10.0, 10.0):
            R2 = R @ yaw(d)
            A, _ = cv2.estimateAffine2D(project(K, R, T, tpl).astype(np.float32), project(K, R2, T, tpl).astype(np.float32))
            op = np.clip(cv2.warpAffine(head_m, A, (S, S), flags=cv2.INTER_LINEAR), 0, 1)
            head = cv2.warpAffine(ci * head_m[..., None], A, (S, S), flags=cv2.INTER_LINEAR)
            res["keypoint_px"].append(tm.keypoint_motion(project(K, R, T, keys), project(K, R2, T, keys)))
            res["head_px"].append(tm.keypoint_motion(project(K, R, T, tpl), project(K, R2, T, tpl)))
            _, a1 = path.field_torso(R2, T, K, S)
            c0, c1 = [np.array(np.nonzero(a >= 0.5)[::-1]).mean(1) if (a >= 0.5).any() else np.zeros(2) for a in (a0, a1)]
            res["torso_centroid_px"].append(float(np.linalg.norm(c1 - c0)))
            src = TorsoPath("source", path.cfg)
            for name, p in (("source", src), ("field", TorsoPath("field", path.cfg, None, path.field, path.device))):
                layer = p.layer(crop, labels, plate, R2, T, K)
                comp = p.composite(head, op, layer, labels, ci)
                o, m = crop_output(crop, comp, labels, op, layer.region)
                res[f"clip_{name}"].append(tm.head_clipping(op, m))
                res[f"seam_{name}"].append(tm.seam_energy(o, m))
                res[f"seam_{name}_in_source"].append(tm.seam_energy(ci, m))
    return {k: mean(v) for k, v in res.items()} | {"frames": len(res["clip_source"]) // 2}


def render_times(path: TorsoPath, subject: Subject, hold: np.ndarray, S: int, plate: np.ndarray, reps: int = 5
                 ) -> dict:
    """Milliseconds per frame added at render: today's fill, the restorer, the field (layer + fill)."""
    pose = load_pose(subject)
    j = int(hold[0])
    crop, labels = frame(subject, j, S)
    ci = crop.astype(np.float32) / 255.0
    m = bands.face_mask(labels)
    op = cv2.erode(m.astype(np.uint8), bands.disk(3)).astype(np.float32)
    head = ci * op[..., None]
    out = {}
    for name, p in (("source", TorsoPath("source", path.cfg)),
                    ("restorer", TorsoPath("restorer", path.cfg, path.restorer, None, path.device)),
                    ("field", TorsoPath("field", path.cfg, None, path.field, path.device)),
                    ("field+restorer", path)):
        t0 = time.perf_counter()
        for _ in range(reps):
            layer = p.layer(crop, labels, plate, pose.R[j], pose.T[j], pose.K)
            p.composite(head, op, layer, labels, ci)
        out[name] = round((time.perf_counter() - t0) / reps * 1000, 1)
    return out


def bench(subject_dir: Path, preset: str, n: int, train: str) -> dict:
    subject = Subject(subject_dir)
    cfg = section(load_preset(preset), "torso", TorsoConfig, mode="field+restorer")
    if train == "all":
        record = train_torso(subject, cfg, preset, silent())
    else:
        record = json.loads(subject.path(RECORD_FILE).read_text())
    if train == "field":  # retrain the field alone, keep the restorer
        _, idx = split_frames(subject.frame_count(), subject_split(subject).holdout_fraction)
        train_idx = np.setdiff1d(np.arange(subject.frame_count()), idx)
        net, info = train_subject_field(subject, train_idx, cfg, torch.device("cpu"), silent())
        torch_save_atomic(subject.path(FIELD_FILE), torso_field.record(net, cfg.field_resolution, info))
        record["field"] = info
        write_json_atomic(subject.path(RECORD_FILE), record)
    path = TorsoPath.for_subject(subject, "cpu", "field+restorer")
    S = int(subject.load()["crop"]["size"])
    plate = read_rgb(subject.path("background.jpg"), S)
    _, hold = split_frames(subject.frame_count(), subject_split(subject).holdout_fraction)
    return {"subject": subject_dir.name, "frames": subject.frame_count(), "crop": S, "held_out": int(hold.size),
            "train_seconds": {"restorer": record["restorer"]["seconds"], "field": record["field"]["seconds"]},
            "perceptual": record["restorer"]["perceptual"],
            "expanded_band": expanded_band(path, subject, hold[:: max(1, len(hold) // n)][:n], S, plate),
            "mouth_opens": jaw_mismatch(path, subject, hold, S, plate, n, opens=True),
            "mouth_closes": jaw_mismatch(path, subject, hold, S, plate, n, opens=False),
            "edited_pose": edited_pose(path, subject, hold, S, plate, max(2, n // 3)),
            "render_ms_per_frame": render_times(path, subject, hold, S, plate)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("subjects", nargs="+", type=Path)
    ap.add_argument("--preset", default="preview")
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--train", choices=("all", "field", "none"), default="all",
                    help="train both parts (default), the torso field alone, or neither (measure only)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    results = []
    for s in a.subjects:
        r = bench(s, a.preset, a.frames, a.train)
        print(json.dumps(r), flush=True)
        results.append(r)
        if a.out:
            a.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
