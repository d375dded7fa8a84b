"""Files shipped inside the ``headsync`` package: the presets and the bundled sample subject.

Both are package data (``pyproject.toml``'s ``package-data``), found through :mod:`importlib.resources`, so
a copy installed from a wheel finds them as well as a source checkout does.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from .errors import UserError


def _folder(name: str) -> Path:
    where = resources.files("headsync") / name
    if not isinstance(where, Path):  # a zipped install: the files are not on disk for ffmpeg and cv2
        raise UserError(f"the package's {name}/ folder is inside an archive ({where})",
                        "install headsync unzipped (`pip install` does so)")
    return where


def presets_dir() -> Path:
    """The folder of the named presets (``preview.toml``, ``standard.toml``, ``paper.toml``)."""
    return _folder("presets")


def sample_dir() -> Path:
    """The bundled sample subject: ``video.mp4``, ``dub.wav``, ``ground_truth.npz`` (``make_sample.py``)."""
    return _folder("sample")
