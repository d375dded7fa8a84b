"""Benchmark of the torso path (issue 15) on prepared subjects with a trained head: restorer vs today's
gap fill, the dark chin band of a dub whose jaw differs from the source's, an edited head pose with the
torso field (the neck bent to the head, :mod:`headsync.post.torso.neck`), and the time each part adds.

    PYTHONPATH=backend nice -n 10 .venv/bin/python benchmarks/bench_torso.py SUBJECT [SUBJECT ...] \
        --dub-audio SPEECH.wav [--run default] [--preset preview] [--frames 12] [--train none] [--out result.json]

Trains the subject's torso parts (``field+restorer``, the preset's [torso] sizes; ``--train`` says which),
then measures on the held-out frames (the subject's split, never trained on by the head or the torso
parts). The head is the subject's trained run ``--run``, driven by ``--dub-audio`` (and, for the matching
frames, by the subject's own ``audio.wav``). Prints one JSON object per subject.
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
from headsync.core import media
from headsync.face_sync import lip_features
from headsync.post.torso import neck
from headsync.renderers.common.cameras import Camera, camera_to_head, project
from headsync.renderers.common.conditioning import window_indices
from headsync.subject.data import background_layer, load_pose, read_labels, read_rgb
from headsync.subject.labels import FACE, NECK, TORSO
from headsync.training.checkpoints import load_renderer, run_dir
from headsync.subject.split import split_frames
from headsync.subject.folder import Subject
from headsync.core.atomic import torch_save_atomic, write_json_atomic
from headsync.subject.split import subject_split
from headsync.training.torso import train_subject_field, train_torso

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


class Head:
    """The subject's trained head (run ``run``) driven by a dub track: renders one frame's ``head``
    (S, S, 3, premultiplied) and ``opacity`` (S, S) at any pose, as :func:`render.dub.render_frames` does."""

    def __init__(self, subject: Subject, run: str, dub_audio: Path):
        self.renderer, _ = load_renderer(run_dir(subject, run) / "checkpoint.pt", "cpu")
        fps = float(subject.source()["fps"])
        audio = media.read_audio(dub_audio)
        n = int(round(audio.size / media.AUDIO_RATE * fps))
        kind = self.renderer.meta.audio_feature
        self.feats = torch.as_tensor(lip_features.for_audio(subject, kind, audio, fps, n), dtype=torch.float32)
        self.expr = torch.as_tensor(np.clip(np.load(subject.path("expression.npy")), 0, 1), dtype=torch.float32)
        self.pose = load_pose(subject)
        self.res = self.renderer.meta.resolution

    def render(self, j: int, row: int, R: np.ndarray, T: np.ndarray, S: int) -> tuple[np.ndarray, np.ndarray]:
        """Source frame ``j`` (its expression and appearance code) with dub row ``row`` at pose R, T."""
        Rc, o = camera_to_head(R, T)
        t = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
        win = torch.as_tensor(window_indices(np.array([row % len(self.feats)]), len(self.feats),
                                             self.renderer.audio_window))
        with torch.no_grad():
            cond = self.renderer.conditions(self.feats[win], self.expr[j:j + 1], torch.tensor([j]))
            out = self.renderer.render(Camera(self.pose.K.scaled(self.res), t(Rc), t(o)), cond,
                                       torch.zeros(self.res, self.res, 3))
        head = cv2.resize(out["head"].numpy(), (S, S), interpolation=cv2.INTER_LINEAR)
        return head, np.clip(cv2.resize(out["opacity"].numpy(), (S, S), interpolation=cv2.INTER_LINEAR), 0, 1)


def chin_row(face: np.ndarray, cols: slice) -> float:
    """The lowest row of ``face`` (S, S) bool in the columns ``cols`` (the chin), mean over those columns."""
    sub = face[:, cols]
    rows = [np.nonzero(sub[:, c])[0].max() for c in range(sub.shape[1]) if sub[:, c].any()]
    return float(np.mean(rows)) if rows else float("nan")


def rendered_face(opacity: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The rendered face: covered pixels (opacity >= 0.5) over the source's face or neck, (S, S) bool."""
    return (opacity >= 0.5) & np.isin(labels, portrait.FACE_LABELS + (NECK,))


def subject_dark_level(subject: Subject, train_idx: np.ndarray, S: int, px: int, n: int = 40) -> float:
    """:func:`torso_metrics.dark_level` over the chin/neck bands of ``n`` training frames."""
    ims, bs = [], []
    for j in train_idx[:: max(1, len(train_idx) // n)][:n]:
        crop, labels = frame(subject, int(j), S)
        ims.append(crop.astype(np.float32) / 255.0)
        bs.append(bands.chin_neck_band(labels, px))
    return tm.dark_level(ims, bs)


#: A dub frame counts as "mouth opens" ("closes") when the rendered chin is this many pixels (at 512)
#: below (above) the source frame's chin.
JAW_PX = 4.0


def head_at(head: Head, subject: Subject, j: int, row: int, S: int, pcfg: portrait.PortraitConfig) -> tuple | None:
    """Held-out frame ``j`` with the head rendered at its pose from audio row ``row``, limited to the
    source's head support as at render: ``(j, crop uint8, labels, crop float, face mask M, head, opacity)``;
    None when the frame shows no face."""
    crop, labels = frame(subject, j, S)
    m = bands.face_mask(labels)
    if not m.any():
        return None
    h, op = portrait.limit_render(*head.render(j, row, head.pose.R[j], head.pose.T[j], S),
                                  portrait.head_support(labels, pcfg))
    return j, crop, labels, crop.astype(np.float32) / 255.0, m, h, op


def trained_dub(path: TorsoPath, head: Head, subject: Subject, hold: np.ndarray, S: int, plate: np.ndarray,
                level: float, n: int) -> dict:
    """A dub with the trained head: dub row ``t`` rendered at held-out source frame ``hold[t]``'s pose.
    The jaw mismatch is the rendered chin's row minus the source's (px at S, + = lower: the mouth opens
    more than the source's). Per frame, the dark-pixel fraction of the chin/neck band around the
    rendered jaw for today's neck-colour fill, the restorer (with the rendered head merged as at render;
    ``restorer_before``: before the soft-edge fix, ``restorer_soft_chin``: before the chin-edge fix)
    and the source frame on the same pixels (``source``: what was there before the head was laid in;
    ``source_own``: the source frame's band around its own jaw); the seam along the rendered face edge
    there."""
    pcfg = portrait.PortraitConfig()
    px = bands.scaled_px(path.cfg.expand_render, S)
    today_path = TorsoPath("source", path.cfg)
    rest_path = TorsoPath("restorer", path.cfg, path.restorer, None, path.device)
    rows = []
    for t, j in enumerate(hold[:n]):
        got = head_at(head, subject, int(j), t, S, pcfg)
        if got is None:
            continue
        j, crop, labels, ci, m, h, op = got
        cols = np.nonzero(m.any(0))[0]
        third = slice(int(cols[0] + (cols[-1] - cols[0]) / 3), int(cols[-1] - (cols[-1] - cols[0]) / 3) + 1)
        face_r = rendered_face(op, labels)
        jaw = chin_row(face_r, third) - chin_row(m, third)
        band = bands.chin_neck_band(labels, px, face=face_r)
        row = {"jaw_px": jaw, "source": tm.dark_fraction(ci, band, level),
               "source_own": tm.dark_fraction(ci, bands.chin_neck_band(labels, px), level)}
        bg = background_layer(crop, labels, plate).astype(np.float32) / 255.0
        removed = render_hole(labels, path.cfg.expand_render)
        before = inpaint(path.restorer, h, op, np.where(removed[..., None], 0.0, ci), removed & (op < 0.5),
                         path.device)  # the head's soft edge over the zeroed background (until 2026-12-02)
        for name, comp in (("today", today_path.composite(h, op, TorsoLayer(bg, None), labels, ci)),
                           ("restorer_before", before),
                           ("restorer_soft_chin", soft_chin(path, h, op, removed, ci)),
                           ("restorer", rest_path.composite(h, op, TorsoLayer(bg, None), labels, ci))):
            o, _ = crop_output(crop, comp, labels, op, None)
            row[name] = tm.dark_fraction(o, band, level)
            row[f"seam_{name}"] = tm.seam_energy(o, face_r.astype(np.float32), where=band)
        row["seam_source"] = tm.seam_energy(ci, m.astype(np.float32), where=bands.chin_neck_band(labels, px))
        rows.append(row)
    lim = JAW_PX * S / bands.REFERENCE_SIDE
    groups = {"opens": [r for r in rows if r["jaw_px"] >= lim], "closes": [r for r in rows if r["jaw_px"] <= -lim],
              "all": rows}
    return {g: {k: mean([r[k] for r in rs]) for k in rows[0]} | {"frames": len(rs)} for g, rs in groups.items()} | {
        "dark_level": round(level, 4), "jaw_px_at_S": round(lim, 2)}


def soft_chin(path: TorsoPath, head: np.ndarray, opacity: np.ndarray, removed: np.ndarray, crop: np.ndarray
              ) -> np.ndarray:
    """The restorer path as it was until the chin-edge fix (2026-12-02): the head's soft chin edge laid over
    the restored band at its own opacity, the network told only pixels under 0.5."""
    return inpaint(path.restorer, head, opacity, np.where(removed[..., None], 0.0, crop), removed & (opacity < 0.5),
                   path.device, removed)


def matching(path: TorsoPath, head: Head, subject: Subject, hold: np.ndarray, S: int) -> dict:
    """Held-out frames with the head driven by the subject's own track (its row for the frame): the
    composite after the Portrait-Sync merge against the source frame, PSNR (dB) over the expanded band
    (``M`` + 15 px minus ``M``) and the chin/neck band around the source's jaw, for the restorer path and
    the path before the chin-edge fix (``soft_chin``)."""
    pcfg = portrait.PortraitConfig()
    px = bands.scaled_px(path.cfg.expand_render, S)
    rest_path = TorsoPath("restorer", path.cfg, path.restorer, None, path.device)
    res: dict[str, list[float]] = {}
    for j in hold:
        got = head_at(head, subject, int(j), int(j), S, pcfg)
        if got is None:
            continue
        j, crop, labels, ci, m, h, op = got
        removed = render_hole(labels, path.cfg.expand_render)
        for name, comp in (("soft_chin", soft_chin(path, h, op, removed, ci)),
                           ("restorer", rest_path.composite(h, op, TorsoLayer(ci, None), labels, ci))):
            o, _ = crop_output(crop, comp, labels, op, None)
            res.setdefault(f"band_psnr_db_{name}", []).append(tm.band_psnr(o, ci, removed & ~m))
            res.setdefault(f"chin_psnr_db_{name}", []).append(tm.band_psnr(o, ci, bands.chin_neck_band(labels, px)))
    return {k: mean(v) for k, v in res.items()} | {"frames": len(res.get("band_psnr_db_restorer", []))}


def yaw(deg: float) -> np.ndarray:
    a = np.radians(deg)
    return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])


def strip_motion(a: np.ndarray, b: np.ndarray, rows: slice) -> float:
    """How far the content of the row strip ``rows`` moved from ``a`` to ``b`` (S, S) (the torso's alpha
    matte: its edges are the neck's and shoulders' outline): the length (px) of the phase-correlation
    shift there."""
    x, y = a[rows].astype(np.float64), b[rows].astype(np.float64)
    if x.shape[0] < 4:
        return float("nan")
    win = cv2.createHanningWindow((x.shape[1], x.shape[0]), cv2.CV_64F)
    (dx, dy), _ = cv2.phaseCorrelate(x, y, win)
    return float(np.hypot(dx, dy))


def edited_pose(path: TorsoPath, head: Head, subject: Subject, hold: np.ndarray, S: int, plate: np.ndarray,
                n: int) -> dict:
    """Head pose edited by +/-10 deg yaw (about the head's vertical axis), the trained head rendered at
    the edited pose. Key point and head (template) motion in px at S; the torso's image motion
    (:func:`strip_motion` of its alpha matte, unedited to edited) at the top of the neck (the first quarter of its
    rows) and at the shoulders (as many rows from the shoulder row down); the fraction of the
    rendered head the merge mask cuts off; seam energy along the merge boundary (the source frame's on
    the same pixels alongside). Paths: ``source`` (today: a still torso), ``field_still`` (the field at the
    edited pose, no neck bending: the previous state), ``field`` (the field at the source pose, the neck
    bent by the key points: :mod:`post.torso.neck`)."""
    pose = head.pose
    K, tpl = pose.K, pose.template
    keys = path.field.keys.detach().cpu().numpy()
    field_only = TorsoPath("field", path.cfg, None, path.field, path.device)
    pcfg = portrait.PortraitConfig()
    res: dict[str, list[float]] = {}
    add = lambda k, v: res.setdefault(k, []).append(v)  # noqa: E731
    for j in hold[:: max(1, len(hold) // n)][:n]:
        j = int(j)
        crop, labels = frame(subject, j, S)
        ci = crop.astype(np.float32) / 255.0
        R, T = pose.R[j], pose.T[j]
        span = neck.neck_span(labels)
        if span is None:
            continue
        top, shoulder = span
        q = max(4, (shoulder - top) // 4)
        neck_top, shoulders = slice(top, top + q), slice(shoulder, min(S, shoulder + q))
        still = field_only.torso_rgba(labels, R, T, K, (R, T))[1]
        for d in (-10.0, 10.0):
            R2 = R @ yaw(d)
            add("keypoint_px", tm.keypoint_motion(project(K.scaled(S), R, T, keys), project(K.scaled(S), R2, T, keys)))
            add("head_px", tm.keypoint_motion(project(K.scaled(S), R, T, tpl), project(K.scaled(S), R2, T, tpl)))
            h, op = head.render(j, j, R2, T, S)
            for name, p, src in (("source", TorsoPath("source", path.cfg), None), ("field_still", field_only, None),
                                 ("field", field_only, (R, T))):
                layer = p.layer(crop, labels, plate, R2, T, K, src)
                hh, oo = (portrait.limit_render(h, op, portrait.head_support(labels, pcfg)) if layer.region is None
                          else (h, op))
                comp = p.composite(hh, oo, layer, labels, ci)
                o, m = crop_output(crop, comp, labels, oo, layer.region)
                add(f"clip_{name}", tm.head_clipping(op, m))
                add(f"seam_{name}", tm.seam_energy(o, m))
                add(f"seam_{name}_in_source", tm.seam_energy(ci, m))
                if name != "source":
                    alpha = p.torso_rgba(labels, R2, T, K, src)[1]
                    add(f"neck_top_px_{name}", strip_motion(still, alpha, neck_top))
                    add(f"shoulder_px_{name}", strip_motion(still, alpha, shoulders))
    return {k: mean(v) for k, v in res.items()} | {"frames": len(res.get("clip_source", [])) // 2}


def render_times(path: TorsoPath, head: Head, subject: Subject, hold: np.ndarray, S: int, plate: np.ndarray,
                 reps: int = 5) -> dict:
    """Milliseconds per frame, side by side in one run: the trained head's own render, and what each
    torso path adds (layer + gap fill; the field also with a 10 deg yaw edit, its neck bent)."""
    pose = head.pose
    j = int(hold[0])
    crop, labels = frame(subject, j, S)
    ci = crop.astype(np.float32) / 255.0
    R, T = pose.R[j], pose.T[j]
    t0 = time.perf_counter()
    for _ in range(reps):
        h, op = head.render(j, 0, R, T, S)
    out = {"head": round((time.perf_counter() - t0) / reps * 1000, 1)}
    for name, p, R2 in (("source", TorsoPath("source", path.cfg), R),
                        ("restorer", TorsoPath("restorer", path.cfg, path.restorer, None, path.device), R),
                        ("field", TorsoPath("field", path.cfg, None, path.field, path.device), R),
                        ("field_edited", TorsoPath("field", path.cfg, None, path.field, path.device), R @ yaw(10.0)),
                        ("field+restorer", path, R)):
        t0 = time.perf_counter()
        for _ in range(reps):
            layer = p.layer(crop, labels, plate, R2, T, pose.K, (R, T))
            p.composite(h, op, layer, labels, ci)
        out[name] = round((time.perf_counter() - t0) / reps * 1000, 1)
    return out


def bench(subject_dir: Path, preset: str, n: int, train: str, run: str, dub_audio: Path) -> dict:
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
    train_idx, hold = split_frames(subject.frame_count(), subject_split(subject).holdout_fraction)
    head = Head(subject, run, dub_audio)
    level = subject_dark_level(subject, train_idx, S, bands.scaled_px(path.cfg.expand_render, S))
    return {"subject": subject_dir.name, "frames": subject.frame_count(), "crop": S, "held_out": int(hold.size),
            "head_run": run, "dub_audio": str(dub_audio),
            "train_seconds": {"restorer": record["restorer"]["seconds"], "field": record["field"]["seconds"]},
            "perceptual": record["restorer"]["perceptual"],
            "expanded_band": expanded_band(path, subject, hold[:: max(1, len(hold) // n)][:n], S, plate),
            "matching": matching(path, Head(subject, run, subject.path("audio.wav")), subject,
                                 hold[:: max(1, len(hold) // n)][:n], S),
            "dub": trained_dub(path, head, subject, hold, S, plate, level, 5 * n),
            "edited_pose": edited_pose(path, head, subject, hold, S, plate, max(2, n // 3)),
            "render_ms_per_frame": render_times(path, head, subject, hold, S, plate)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("subjects", nargs="+", type=Path)
    ap.add_argument("--preset", default="preview")
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--train", choices=("all", "field", "none"), default="all",
                    help="train both parts (default), the torso field alone, or neither (measure only)")
    ap.add_argument("--run", default="default", help="the trained head's run")
    ap.add_argument("--dub-audio", type=Path, required=True, help="the speech track that drives the head")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    results = []
    for s in a.subjects:
        r = bench(s, a.preset, a.frames, a.train, a.run, a.dub_audio)
        print(json.dumps(r), flush=True)
        results.append(r)
        if a.out:
            a.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
