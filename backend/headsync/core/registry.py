"""Registry of optional pretrained models: where they come from, how to verify them, who uses them.

Nothing here downloads during tests or prepare. ``headsync models install NAME`` downloads on a user's
machine (or copies ``--from FILE``), checking the sha256 (where no full hash is known, the sha256 prefix
that a torch hub file name carries: ``ModelEntry.sha256_prefix``). Lookup order: ``$HEADSYNC_MODELS``, then
the user's cache folder (``$XDG_CACHE_HOME/headsync/models`` or ``~/.cache/headsync/models``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError


@dataclass(frozen=True)
class ModelEntry:
    name: str
    filename: str
    url: str
    sha256: str
    licence: str
    used_by: str
    default: str  # what stands in when the model is absent
    # The leading hex digits of the sha256 that torch hub file names carry (``NAME-<prefix>.EXT``): what
    # ``torch.hub.download_url_to_file(..., hash_prefix=...)`` checks when a caller asks it to. Used by
    # :func:`install` only where no full sha256 is known (``sha256`` empty); weaker than a full hash.
    sha256_prefix: str = ""


MODELS: dict[str, ModelEntry] = {
    m.name: m
    for m in [
        ModelEntry(
            name="face_landmarker",
            filename="face_landmarker.task",
            url="https://storage.googleapis.com/mediapipe-models/face_landmarker/face_landmarker/float16/1/face_landmarker.task",
            sha256="64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff",
            licence="Apache-2.0",
            used_by="prepare/expression: the 52 ARKit blendshape scores (Facial Animation Capturer); "
            "its canonical face geometry seeds the Head-Sync Stabilizer's template",
            default="landmark-geometry estimator of the seven core coefficients, calibrated per subject; "
            "template from the subject's own landmarks",
        ),
        # The face-alignment package's (1.5.0) own weights, under the file names it caches them as in
        # torch hub's checkpoints folder (api.models_urls, detection/sfd/sfd_detector.models_urls). Their
        # author publishes no checksums; the file names carry the sha256's first ten hex digits (torch
        # hub's convention; face-alignment itself loads them with check_hash off). The two full hashes
        # are the ones pinned, identically, by several independent public projects that downloaded these
        # files; the other two are checked by their prefix only. See landmarks68.py.
        ModelEntry(
            name="fan_2d",
            filename="2DFAN4-11f355bf06.pth.tar",
            url="https://www.adrianbulat.com/downloads/python-fan/2DFAN4-11f355bf06.pth.tar",
            sha256="11f355bf0693120222f5955ce3f9dc8fb5763ebb30a47d7906e509490d32e4aa",
            sha256_prefix="11f355bf06",
            licence="face-alignment (Adrian Bulat) BSD-3-Clause; weights trained on 300W-LP, no separate licence stated",
            used_by="prepare/landmarks68 with landmarks_type = '2D': the 68 iBUG points (face-alignment 2D-FAN)",
            default="no landmarks68.npy (the stage is skipped); MediaPipe's 478-point mesh is used throughout",
        ),
        ModelEntry(
            name="fan_3d",
            filename="3DFAN4-7835d9f11d.pth.tar",
            url="https://www.adrianbulat.com/downloads/python-fan/3DFAN4-7835d9f11d.pth.tar",
            sha256="",
            sha256_prefix="7835d9f11d",
            licence="face-alignment (Adrian Bulat) BSD-3-Clause; weights trained on 300W-LP, no separate licence stated",
            used_by="prepare/landmarks68 with landmarks_type = '3D' (the default): the 68 iBUG points (3D-FAN), "
            "with fan_depth",
            default="no landmarks68.npy (the stage is skipped); MediaPipe's 478-point mesh is used throughout",
        ),
        ModelEntry(
            name="fan_depth",
            filename="depth-2a464da4ea.pth.tar",
            url="https://www.adrianbulat.com/downloads/python-fan/depth-2a464da4ea.pth.tar",
            sha256="",
            sha256_prefix="2a464da4ea",
            licence="face-alignment (Adrian Bulat) BSD-3-Clause; weights trained on 300W-LP, no separate licence stated",
            used_by="prepare/landmarks68 with landmarks_type = '3D': the depth of the 68 points (ResNetDepth)",
            default="no landmarks68.npy with landmarks_type = '3D'",
        ),
        ModelEntry(
            name="s3fd",
            filename="s3fd-619a316812.pth",
            url="https://www.adrianbulat.com/downloads/python-fan/s3fd-619a316812.pth",
            sha256="619a31681264d3f7f7fc7a16a42cbbe8b23f31a256f75a366e5a1bcd59b33543",
            sha256_prefix="619a316812",
            licence="face-alignment (Adrian Bulat) BSD-3-Clause port of S3FD; no separate licence stated for the weights",
            used_by="prepare/landmarks68: finds the face in frames where MediaPipe lost it (optional)",
            default="the face box comes from MediaPipe's landmarks; frames where MediaPipe lost the face get NaN rows",
        ),
        # EmoTalk (ICCV 2023), the OOD Audio Expression Generator's source network in SyncTalk++. Its authors
        # publish no checksum, so no hash is registered: `install` refuses it and the user copies the file
        # into the models folder (find() looks it up by name). Its two wav2vec 2.0 backbones are Hugging Face
        # model folders (expressions/emotalk.py: CONTENT_DIR, EMOTION_DIR), found the way HuBERT's is.
        ModelEntry(
            name="emotalk",
            filename="EmoTalk.pth",
            url="https://drive.google.com/file/d/1KQZ-WGI9VDFLqgNXvJQosKVCbjTaCPqK/view",
            sha256="",
            licence="CC BY-NC 4.0 (EmoTalk, psyai-net/EmoTalk_release): non-commercial use only; backbones "
            "jonatasgrosman/wav2vec2-large-xlsr-53-english and r-f/wav2vec-english-speech-emotion-recognition "
            "(Apache-2.0)",
            used_by="express / render --expressions generated with [expressions] audio_model = 'emotalk': "
            "audio -> 52 ARKit coefficients, then the subject's VQ-VAE",
            default="the per-subject code prior of expressions/generator.py (it samples the VQ-VAE's codes) "
            "with the subject's blink model",
        ),
    ]
}


def search_dirs() -> list[Path]:
    """Folders searched for model files, in order."""
    dirs = []
    if os.environ.get("HEADSYNC_MODELS"):
        dirs.extend(Path(p) for p in os.environ["HEADSYNC_MODELS"].split(os.pathsep) if p)
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "headsync" / "models"
    dirs.append(cache)
    return dirs


def entry(name: str) -> ModelEntry:
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}", f"known models: {', '.join(MODELS)}")
    return MODELS[name]


def find(name: str) -> Path | None:
    """Path of an installed model file, or None. Files are found by name; hashes are checked on install."""
    e = entry(name)
    for d in search_dirs():
        p = d / e.filename
        if p.is_file():
            return p
    return None


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def install(name: str, from_file: str | Path | None = None, dest_dir: Path | None = None) -> Path:
    """Install model ``name`` into ``dest_dir`` (default: the first search folder), verifying its hash."""
    e = entry(name)
    dest_dir = Path(dest_dir or search_dirs()[0])
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / e.filename
    tmp = dest.with_name(dest.name + ".part")
    if from_file is not None:
        src = Path(from_file)
        if not src.is_file():
            raise UserError(f"file not found: {src}", f"pass the downloaded {e.filename}")
        shutil.copyfile(src, tmp)
    else:
        try:
            with urllib.request.urlopen(e.url, timeout=60) as r, open(tmp, "wb") as f:
                shutil.copyfileobj(r, f)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise UserError(f"could not download {e.url}: {exc}",
                            f"download it by hand and run `headsync models install {name} --from FILE`")
    digest = sha256_of(tmp)
    expected = e.sha256 or e.sha256_prefix
    if not expected or not digest.startswith(expected) or (e.sha256 and digest != e.sha256):
        tmp.unlink(missing_ok=True)
        what = "expected" if e.sha256 else "expected it to start with"
        raise UserError(f"{e.filename} has sha256 {digest}, {what} {expected or '(no hash registered)'}",
                        "the file is damaged or a different version; fetch it again from " + e.url)
    os.replace(tmp, dest)
    return dest
