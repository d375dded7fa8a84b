"""Shared fixtures: where the real media is, and a prepared sample subject reused across tests.

Real media lives in ``../shared`` beside the checkout (never committed); tests that need it skip with a
reason when it is absent, as on a user's fresh clone.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
# The bundled sample is package data; read from the checkout, since the Blender tests run in bpy venvs
# that have no headsync installed (tests/test_package_install.py checks the installed package finds it).
SAMPLE = REPO / "backend" / "headsync" / "sample"


def shared_file(rel: str) -> Path:
    """A file under ../shared, or skip the test."""
    p = SHARED / rel
    if not p.exists():
        pytest.skip(f"{p} is absent (real test media lives in ../shared beside the checkout)")
    return p


def sample_video() -> Path:
    vids = sorted(SAMPLE.glob("*.mp4"))
    if not vids:
        pytest.skip("the bundled sample video is missing (run sample_projects/make_sample.py)")
    return vids[0]


# Tests never see models from the user's cache or environment: only what a test points to itself
# (``monkeypatch.setenv("HEADSYNC_MODELS", ...)``).
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="headsync-test-cache-")
os.environ.pop("HEADSYNC_MODELS", None)


def models_dir() -> Path:
    """../shared/models (holds face_landmarker.task), or skip the test."""
    return shared_file("models/face_landmarker.task").parent


@pytest.fixture(scope="session")
def prepared_sample(tmp_path_factory):
    """The bundled sample prepared with the ``preview`` preset and no downloaded model (session-wide).

    Tests must treat it as read-only.
    """
    from headsync.prepare.pipeline import prepare_subject

    return prepare_subject(sample_video(), tmp_path_factory.mktemp("sample") / "subject", preset="preview")


@pytest.fixture
def one_torch_thread():
    """Train on one thread (the suite shares a small machine), then give the setting back."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
