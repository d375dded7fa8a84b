"""The ``express`` job and the expression sources of a render: captured, generated, or imported.

    generated:  new audio -> features -> default generator: codes sampled -> VQ-VAE decoder, + blinks -> curves
                                       or EmoTalk -> map onto the subject's names -> VQ-VAE -> curves
    imported:   Live Link Face CSV -> resample to the subject's fps -> map onto its names -> VQ-VAE -> curves
    file:       curves.json (someone else's expressions) -> VQ-VAE -> curves

Everything that is not the subject's own capture comes out of the subject's VQ-VAE (the default generator's
codes are decoded by it; every other source passes through it), the blinks are drawn from the subject's
captured ones, and a final clamp to the subject's min..max guarantees that no frame outside the subject's
range reaches the renderer.

The models live in ``SUBJECT/expressions/`` (``vqvae.pt``, ``generator.pt``, ``models.json``) and are
trained on first use (or by ``headsync express --subject S`` with no audio). ``models.json`` records a
digest of what they were trained from (the captured coefficients, the split, the settings); when it no
longer matches, they are trained again.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..face_sync import lip_features
from ..core import media
from ..core.config import Preset, load_preset, preset_names, section
from ..curves import Curves, read_curves, write_curves
from ..core.errors import UserError
from ..prepare.capture import BLINK_COLUMNS
from ..core.progress import Reporter, silent
from ..subject.folder import CORE_EXPRESSIONS, Subject
from ..core.atomic import write_json_atomic
from . import coefficients, generator, livelink, vqvae
from .blinks import BlinkConfig, BlinkModel
from .coefficients import N_CORE, Coefficients, Range

VERSION = 2  # 2: the default generator samples the VQ-VAE's codes (generator.py)
FOLDER = "expressions"
SOURCE_CAPTURED, SOURCE_GENERATED = "captured", "generated"
GENERATORS = ("default", "emotalk")


@dataclass(frozen=True)
class ExpressConfig:
    """Preset table ``[expressions]`` (sub-tables ``vqvae``, ``generator``, ``blinks``)."""

    audio_model: str = "default"  # default (trained per subject) | emotalk (needs its weights, see emotalk.py)
    threads: int = 0             # CPU threads while training (0: torch's default)


@dataclass(frozen=True)
class Settings:
    express: ExpressConfig
    vqvae: vqvae.VQConfig
    generator: generator.GeneratorConfig
    blinks: BlinkConfig

    def digest(self) -> dict[str, Any]:
        return {k: asdict(getattr(self, k)) for k in ("vqvae", "generator", "blinks")}


def settings(subject: Subject) -> Settings:
    """The expression settings of the subject's preset (defaults where it has none)."""
    name = subject.load().get("preset") or "standard"
    # a preset removed since the subject was prepared leaves the defaults; a broken one is an error
    preset = load_preset(name) if name in preset_names() or Path(name).is_file() else None
    table = dict(preset.tables.get("expressions", {})) if preset else {}
    sub = Preset("expressions", {k: table.pop(k) for k in ("vqvae", "generator", "blinks") if k in table})
    top = Preset("top", {"expressions": table})
    out = Settings(section(top, "expressions", ExpressConfig), section(sub, "vqvae", vqvae.VQConfig),
                   section(sub, "generator", generator.GeneratorConfig), section(sub, "blinks", BlinkConfig))
    if out.express.audio_model not in GENERATORS:
        raise UserError(f"unknown [expressions] audio_model {out.express.audio_model!r}",
                        f"use one of {', '.join(GENERATORS)}")
    return out


def folder(subject: Subject) -> Path:
    return subject.path(FOLDER)


# ---- the subject's models ------------------------------------------------------------------------------
def _inputs_digest(subject: Subject, coeffs: Coefficients, s: Settings, feature: str) -> str:
    h = hashlib.sha256()
    for f in ("expression.npy", "blendshapes.npz", f"audio_features/{feature}.npy"):
        h.update(subject.path(f).read_bytes())
    h.update(json.dumps({"v": VERSION, "train": [int(coeffs.train[0]), int(coeffs.train[-1])],
                         "settings": s.digest(), "feature": feature}, sort_keys=True).encode())
    return h.hexdigest()[:16]


def generator_feature(subject: Subject, cfg: generator.GeneratorConfig) -> str:
    """The audio feature the default generator listens to (``auto``: ave when prepared, else mel)."""
    if cfg.feature != "auto":
        if cfg.feature not in lip_features.KINDS:
            raise UserError(f"unknown [expressions.generator] feature {cfg.feature!r}",
                            f"use auto or one of {', '.join(lip_features.KINDS)}")
        return cfg.feature
    return "ave" if subject.path("audio_features/ave.npy").exists() else "mel"


@dataclass
class Models:
    """The subject's trained expression models and the coefficient space they work in."""

    vq: vqvae.VQVAE
    gen: generator.Generator
    names: list[str]
    range: Range          # of the training frames (all K columns); its rest fills columns an input lacks
    info: dict[str, Any]


def fit(values: np.ndarray, feats: np.ndarray, names: list[str], fps: float, s: Settings, feature: str,
        reporter: Reporter | None = None) -> tuple[vqvae.VQVAE, dict[str, Any], generator.Generator]:
    """Train the VQ-VAE, the blink model and the default generator on (N, K) ``values`` of consecutive
    training frames and their (N, D) audio ``feats`` -> (VQ-VAE, its training figures, generator)."""
    vq, vq_info = vqvae.train(values, s.vqvae, reporter)
    blinks = BlinkModel.fit(np.asarray(values)[:, list(BLINK_COLUMNS)], fps, s.blinks)
    gen = generator.train(feats, values, names, feature, vq, s.generator, blinks, reporter)
    return vq, vq_info, gen


def train_models(subject: Subject, reporter: Reporter | None = None) -> Models:
    """Train the VQ-VAE and the default generator on the subject's training frames and save them."""
    import torch

    reporter = reporter or silent()
    s = settings(subject)
    if s.express.threads:
        torch.set_num_threads(s.express.threads)
    coeffs = coefficients.load(subject)
    feature = generator_feature(subject, s.generator)
    feats = lip_features.for_subject(subject, feature)
    train_values = coeffs.values[coeffs.train]
    t0 = time.monotonic()
    vq, vq_info, gen = fit(train_values, feats[coeffs.train], coeffs.names, coeffs.fps, s, feature, reporter)
    if coeffs.holdout.size:
        vq_info["heldout"] = vqvae.reconstruction_error(vq, coeffs.values[coeffs.holdout])
    blinks = gen.blinks
    rng = Range.of(train_values)
    info = {"version": VERSION, "inputs": _inputs_digest(subject, coeffs, s, feature), "names": coeffs.names,
            "train_frames": [int(coeffs.train[0]), int(coeffs.train[-1]) + 1],
            "heldout_frames": [int(coeffs.holdout[0]), int(coeffs.holdout[-1]) + 1] if coeffs.holdout.size else None,
            "range": rng.to_json(),
            "vqvae": vq_info, "generator": gen.info, "blinks": {"captured": len(blinks.snippets),
                                                              "intervals_s": blinks.intervals_s},
            "seconds": round(time.monotonic() - t0, 2)}
    d = folder(subject)
    vqvae.save(vq, d / "vqvae.pt", coeffs.names, vq_info)
    generator.save(gen, d / "generator.pt")
    write_json_atomic(d / "models.json", info)
    return Models(vq, gen, coeffs.names, rng, info)


def load_models(subject: Subject, reporter: Reporter | None = None, retrain: bool = False) -> Models:
    """The subject's expression models: loaded when they match its capture and settings, else trained."""
    d = folder(subject)
    if not retrain and all((d / f).is_file() for f in ("vqvae.pt", "generator.pt", "models.json")):
        info = json.loads((d / "models.json").read_text())
        s = settings(subject)
        coeffs = coefficients.load(subject)
        feature = generator_feature(subject, s.generator)
        if info.get("inputs") == _inputs_digest(subject, coeffs, s, feature):
            vq, names, _ = vqvae.load(d / "vqvae.pt")
            return Models(vq, generator.load(d / "generator.pt"), names, Range.from_json(info["range"]), info)
        (reporter or silent()).message("the subject's capture or expression settings changed: "
                                       "training its expression models again")
    return train_models(subject, reporter)


# ---- sources -----------------------------------------------------------------------------------------
def through_vqvae(models: Models, values: np.ndarray) -> np.ndarray:
    """(T, K) coefficients in the subject's space -> (T, K) through its VQ-VAE, clamped to min..max."""
    return models.range.clamp(models.vq.project(values))


def from_features(models: Models, feats: np.ndarray, fps: float, seed: int = 1) -> np.ndarray:
    """The default generator on (T, D) audio features at ``fps`` -> (T, K) coefficients within the subject's
    min..max: codes drawn by ``seed`` and decoded by its VQ-VAE (Eq. 26: already the VQ-VAE's output, so not
    passed through it again), with blinks drawn from its captured ones (see :mod:`.generator`)."""
    return models.range.clamp(models.gen.generate(feats, fps, models.vq, seed))


def generate(subject: Subject, audio: np.ndarray, n_frames: int, seed: int = 1,
             reporter: Reporter | None = None, models: Models | None = None) -> np.ndarray:
    """Coefficients for new 16 kHz mono ``audio``: (n_frames, K) in the subject's space and range."""
    models = models or load_models(subject, reporter)
    fps = float(subject.source()["fps"])
    if settings(subject).express.audio_model == "emotalk":
        from . import emotalk

        names, raw = emotalk.generate(audio, fps, n_frames)
        values, _ = coefficients.map_named(names, raw, models.names, models.range.rest)
        return through_vqvae(models, values)
    feats = lip_features.for_audio(subject, models.gen.feature, audio, fps, n_frames)
    return from_features(models, feats, fps, seed)


def import_livelink(subject: Subject, path: str | Path, n_frames: int | None = None, capture_fps: float | None = None,
                    reporter: Reporter | None = None, models: Models | None = None) -> np.ndarray:
    """A Live Link Face take mapped onto the subject: (n_frames, K) through its VQ-VAE.

    ``n_frames`` defaults to the take's length at the subject's fps; a take shorter than the shot holds its
    last frame. ``capture_fps`` is the take's rate when the timecodes do not tell it."""
    models = models or load_models(subject, reporter)
    take = livelink.read(path, capture_fps)
    values = coefficients.resample(take.times_s, take.values, float(subject.source()["fps"]), n_frames)
    mapped, _ = coefficients.map_named(take.names, values, models.names, models.range.rest)
    return through_vqvae(models, mapped)


def from_curves_file(subject: Subject, path: str | Path, n_frames: int, reporter: Reporter | None = None,
                     models: Models | None = None) -> np.ndarray:
    """The expression of a curves.json (someone else's, or edited) mapped onto the subject: (n_frames, K)."""
    models = models or load_models(subject, reporter)
    c = read_curves(path, n_frames)
    mapped, _ = coefficients.map_named(list(CORE_EXPRESSIONS), c.expression, models.names, models.range.rest)
    return through_vqvae(models, mapped)


def to_curves(subject: Subject, values: np.ndarray) -> Curves:
    """(T, K) coefficients -> curves of the seven core (``source`` generated, no head pose)."""
    core = np.clip(np.asarray(values, np.float32)[:, :N_CORE], 0.0, 1.0)
    return Curves(float(subject.source()["fps"]), 1, core, None, None, SOURCE_GENERATED)


def render_expressions(subject: Subject, expressions: str, audio: np.ndarray, n_frames: int,
                       reporter: Reporter | None = None) -> Curves | None:
    """The curves ``render --expressions`` asks for: None for ``captured`` (the caller's captured curves),
    generated from the render's ``audio`` for ``generated``, else the file (Live Link CSV or curves.json)."""
    if expressions == SOURCE_CAPTURED:
        return None
    if expressions == SOURCE_GENERATED:
        values = generate(subject, audio, n_frames, reporter=reporter)
    else:
        path = Path(expressions).expanduser()
        if not path.is_file():
            raise UserError(f"expressions file not found: {path}",
                            "pass captured, generated, a curves.json or a Live Link Face CSV")
        if livelink.is_livelink(path):
            values = import_livelink(subject, path, n_frames, reporter=reporter)
        else:
            values = from_curves_file(subject, path, n_frames, reporter)
    return to_curves(subject, values)


# ---- the job -------------------------------------------------------------------------------------------
def express_task(params: dict[str, Any], reporter: Reporter) -> dict[str, Any]:
    """Entry of the ``express`` job: ``subject``; ``audio`` (generate) or ``livelink`` (import), ``out``,
    ``seed``, ``livelink_fps``, ``retrain``. Without audio and Live Link it only trains the models."""
    subject = Subject(Path(params["subject"]).expanduser().resolve())
    if not subject.exists():
        raise UserError(f"subject {subject.root} is not prepared (no subject.json)",
                        "run `headsync prepare VIDEO --subject DIR` first")
    models = load_models(subject, reporter, retrain=bool(params.get("retrain")))
    artifacts: dict[str, Any] = {"models": str(folder(subject)), "names": len(models.names),
                                 "vqvae_heldout": models.info["vqvae"].get("heldout")}
    audio_path, csv_path = params.get("audio"), params.get("livelink")
    if not audio_path and not csv_path:
        return artifacts
    fps = float(subject.source()["fps"])
    n_frames = None
    if audio_path:
        audio = media.read_audio(Path(audio_path).expanduser())
        n_frames = int(round(audio.size / media.AUDIO_RATE * fps))
        if n_frames < 1:
            raise UserError(f"the audio {audio_path} is shorter than one frame", "pass a longer dialogue clip")
    if csv_path:
        values = import_livelink(subject, csv_path, n_frames, params.get("livelink_fps"), reporter, models)
        artifacts["input"] = "livelink"
    else:
        values = generate(subject, audio, n_frames, int(params.get("seed") or 1), reporter, models)
        artifacts["input"] = "audio"
    curves = to_curves(subject, values)
    out = Path(params["out"]).expanduser().resolve() if params.get("out") else \
        folder(subject) / "curves" / f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_curves(out, curves)
    outside = coefficients.outside_fraction(values, models.range)
    artifacts.update(curves=str(out), frame_count=curves.frame_count, fps=fps, source=curves.source,
                     outside_p1_p99=round(outside["values"], 4))
    return artifacts
