"""Registry of optional pretrained models: where they come from, how to verify them, who uses them.

Nothing here downloads during tests or prepare. ``headsync models install NAME`` downloads on a user's
machine (or copies ``--from FILE``), checking the sha256. Lookup order: ``$HEADSYNC_MODELS``, then the
user's cache folder (``$XDG_CACHE_HOME/headsync/models`` or ``~/.cache/headsync/models``).
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
    if digest != e.sha256:
        tmp.unlink(missing_ok=True)
        raise UserError(f"{e.filename} has sha256 {digest}, expected {e.sha256}",
                        "the file is damaged or a different version; fetch it again from " + e.url)
    os.replace(tmp, dest)
    return dest
