"""Expression generator and VQ-VAE acceptance figures (issue 14) on a prepared subject.

    .venv/bin/python benchmarks/bench_expressions.py --subject SUBJECT [--ood OTHER_SUBJECT]
        [--speech FILE] [--seeds 20] [--folds 5] [--json OUT.json]

SUBJECT: a prepared subject (the bundled sample: ``headsync prepare backend/headsync/sample/video.mp4
--subject DIR --preset preview``). OTHER_SUBJECT: another real clip prepared the same way, whose captured
coefficients are the out-of-distribution input. SPEECH: a longer dialogue for the generator's statistics.
The subject's expression models are trained afresh (its preset's settings), on its training frames only.

Figures:

* VQ-VAE reconstruction error (RMSE, MAE) of the subject's held-out captured coefficients;
* the share of values (and of frames with any coefficient) outside the subject's per-coefficient 1st-99th
  percentile band (training frames), before and after the VQ-VAE, for: the held-out frames (reference),
  the other clip's coefficients, the held-out frames scaled x2 about their mean, shifted +0.3, uniform
  noise, and a 0/1 square wave;
* the generator (what reaches the renderer: codes sampled, decoded by the VQ-VAE, blinks) on the held-out audio, averaged over
  ``--seeds`` draws of the blinks: blink rate and duration, brow activity (mean over the five brow columns of
  their standard deviation over time), each against the captured truth of the same frames, and the
  correlation of the generated brow curves (mean of the five) and blink curve (max of the two eyes) with
  the truth, against the baseline of the captured curves looped (what a render without generation uses);
* the same figures cross-validated (``--folds`` K > 1): the clip cut into K consecutive blocks, the models
  trained afresh on the frames outside each block (the two sides joined) and the generator run on the
  block's audio; rates and durations pooled over all blocks (every captured blink of the clip counts, not
  the one or two of the subject's 10 % held-out tail), activity the mean of the per-block figures;
* the same statistics on ``--speech`` (new dialogue) against the subject's training frames.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def corr(a: np.ndarray, b: np.ndarray) -> float | None:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.std() < 1e-9 or b.std() < 1e-9:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def activity(core: np.ndarray) -> float:
    """Brow activity: mean over the five brow columns of their standard deviation over time."""
    return float(np.asarray(core)[:, :5].std(axis=0).mean())


def stats(core: np.ndarray, fps: float) -> dict:
    from headsync.expressions.blinks import blink_statistics

    b = blink_statistics(core[:, 5:7], fps)
    return {"blink_rate_per_min": b["rate_per_min"], "blink_duration_s": b["duration_s"], "blinks": b["count"],
            "brow_activity": activity(core)}


def mean_stats(rows: list[dict]) -> dict:
    out = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    durs = [r["blink_duration_s"] for r in rows if r["blinks"]]
    out["blink_duration_s"] = float(np.mean(durs)) if durs else 0.0  # over the draws that blinked
    return out


def generated(models, feats: np.ndarray, fps: float, seeds: int) -> list[np.ndarray]:
    """What reaches the renderer for ``feats`` (the default generator), the seven core, one array per seed."""
    from headsync.expressions import express

    return [express.from_features(models, feats, fps, seed)[:, :7] for seed in range(seeds)]


def heldout_figures(models, feats: np.ndarray, truth: np.ndarray, train_core: np.ndarray, fps: float,
                    seeds: int) -> dict:
    """Generated vs captured truth of the same (T, 7) frames, and the captured training curves looped."""
    from headsync.curves import ping_pong

    gens = generated(models, feats, fps, seeds)
    loop = train_core[ping_pong(len(train_core), len(truth))]  # captured curves looped, as a render uses them
    brow_t, blink_t = truth[:, :5].mean(1), truth[:, 5:7].max(1)
    return {"frames": len(truth), "seconds": round(len(truth) / fps, 2),
            "truth": stats(truth, fps), "generated": mean_stats([stats(x, fps) for x in gens]),
            "looped_captured": stats(loop, fps),
            "corr_brow": {"generated_mean_of_draws": corr(np.mean([x[:, :5].mean(1) for x in gens], 0), brow_t),
                          "generated_per_draw": float(np.mean([corr(x[:, :5].mean(1), brow_t) or 0 for x in gens])),
                          "looped_captured": corr(loop[:, :5].mean(1), brow_t)},
            "corr_blink": {"generated_mean_of_draws": corr(np.mean([x[:, 5:7].max(1) for x in gens], 0), blink_t),
                           "looped_captured": corr(loop[:, 5:7].max(1), blink_t)},
            "_curves": {"truth": truth, "gens": gens, "loop": loop}}


def cross_validated(s, c, feats: np.ndarray, feature: str, folds: int, seeds: int) -> dict:
    """K-fold figures: per block, models trained on the other frames, generated on the block's audio."""
    from headsync.expressions import express
    from headsync.expressions.coefficients import Range

    st = express.settings(s)
    n = len(c.values)
    edges = np.linspace(0, n, folds + 1).round().astype(int)
    blocks = []
    for a, b in zip(edges[:-1], edges[1:]):
        train = np.r_[0:a, b:n]
        vq, _, gen = express.fit(c.values[train], feats[train], c.names, c.fps, st, feature)
        m = express.Models(vq, gen, c.names, Range.of(c.values[train]), {})
        blocks.append(heldout_figures(m, feats[a:b], c.core[a:b], c.core[train], c.fps, seeds))
        print(f"fold {len(blocks)}/{folds}: frames {a}-{b}", flush=True)
    fps, minutes = c.fps, n / c.fps / 60.0

    def pooled(key: str) -> dict:
        """Blinks counted over all blocks, durations over all blinks, activity the mean over blocks."""
        from headsync.expressions.blinks import blink_statistics

        if key == "gens":
            draws = [[blk["_curves"]["gens"][i] for blk in blocks] for i in range(seeds)]
        else:
            draws = [[blk["_curves"][key] for blk in blocks]]
        rows = []
        for parts in draws:
            b = [blink_statistics(p[:, 5:7], fps) for p in parts]
            count = sum(x["count"] for x in b)
            rows.append({"blinks": count, "blink_rate_per_min": count / minutes,
                         "blink_duration_s": sum(x["duration_s"] * x["count"] for x in b) / count if count else 0.0,
                         "brow_activity": float(np.mean([activity(p) for p in parts]))})
        return mean_stats(rows)

    def pooled_corr(name: str, key: str) -> float | None:
        col = (lambda x: x[:, :5].mean(1)) if name == "brow" else (lambda x: x[:, 5:7].max(1))
        truth = np.concatenate([col(blk["_curves"]["truth"]) for blk in blocks])
        if key == "gens":
            return float(np.mean([corr(np.concatenate([col(blk["_curves"]["gens"][i]) for blk in blocks]), truth)
                                  or 0.0 for i in range(seeds)]))
        return corr(np.concatenate([col(blk["_curves"][key]) for blk in blocks]), truth)

    return {"folds": folds, "frames": n, "seconds": round(n / fps, 2),
            "truth": pooled("truth"), "generated": pooled("gens"), "looped_captured": pooled("loop"),
            "corr_brow": {"generated_per_draw": pooled_corr("brow", "gens"),
                          "looped_captured": pooled_corr("brow", "loop")},
            "corr_blink": {"generated_per_draw": pooled_corr("blink", "gens"),
                           "looped_captured": pooled_corr("blink", "loop")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subject", required=True)
    ap.add_argument("--ood", help="another prepared subject: its captured coefficients are the OOD input")
    ap.add_argument("--speech", help="a longer dialogue for the generator's statistics")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--folds", type=int, default=0, help="cross-validate the generator over K blocks of the clip")
    ap.add_argument("--json")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)

    from headsync.face_sync import lip_features
    from headsync.core import media
    from headsync.expressions import coefficients, express, vqvae
    from headsync.expressions.coefficients import outside_fraction
    from headsync.core.progress import Reporter, terminal_sink
    from headsync.subject.folder import Subject

    s = Subject(Path(args.subject))
    t0 = time.perf_counter()
    models = express.train_models(s, Reporter(sink=terminal_sink()))
    train_s = time.perf_counter() - t0
    c = coefficients.load(s)
    fps = c.fps
    rng = models.range
    held = c.values[c.holdout]
    res: dict = {"subject": str(s.root), "names": len(c.names), "train_frames": int(c.train.size),
                 "heldout_frames": int(c.holdout.size), "train_seconds": round(train_s, 1),
                 "vqvae_heldout": vqvae.reconstruction_error(models.vq, held),
                 "heldout_std": float(held.std())}

    # ---- out of distribution ------------------------------------------------------------------------
    g = np.random.default_rng(0)
    cases = {"held-out (reference)": held,
             "scaled x2": held.mean(0) + 2.0 * (held - held.mean(0)),
             "shifted +0.3": held + 0.3,
             "uniform noise": g.random(held.shape),
             "0/1 square wave": np.tile(np.repeat(np.array([[0.0], [1.0]]), 5, 0), (len(held) // 10 + 1, held.shape[1]))[:len(held)]}
    if args.ood:
        o = coefficients.load(Subject(Path(args.ood)))
        mapped, missing = coefficients.map_named(o.names, o.values, c.names, rng.rest)
        cases[f"other clip ({Path(args.ood).name}, {len(mapped)} frames)"] = mapped
        res["ood_missing_names"] = missing
    res["outside_p1_p99"] = {}
    for name, v in cases.items():
        v = np.asarray(v, np.float32)
        res["outside_p1_p99"][name] = {"before": outside_fraction(v, rng),
                                      "after": outside_fraction(express.through_vqvae(models, v), rng)}

    # ---- generator on held-out audio ---------------------------------------------------------------------
    feats_all = lip_features.for_subject(s, models.gen.feature)
    res["generator_heldout"] = heldout_figures(models, feats_all[c.holdout], c.core[c.holdout],
                                               c.core[c.train], fps, args.seeds)
    if args.folds > 1:
        res["generator_cross_validated"] = cross_validated(s, c, feats_all, models.gen.feature, args.folds,
                                                           args.seeds)
    if args.speech:
        audio = media.read_audio(args.speech)
        n = int(round(audio.size / media.AUDIO_RATE * fps))
        gens = [express.generate(s, audio, n, seed, models=models)[:, :7] for seed in range(args.seeds)]
        res["generator_speech"] = {"speech": args.speech, "frames": n,
                                   "training_frames_truth": stats(c.core[c.train], fps),
                                   "generated": mean_stats([stats(x, fps) for x in gens])}
    res = strip_curves(res)
    print(json.dumps(res, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


def strip_curves(d):
    """The figures without the curves kept for pooling."""
    if isinstance(d, dict):
        return {k: strip_curves(v) for k, v in d.items() if k != "_curves"}
    return d


if __name__ == "__main__":
    main()
