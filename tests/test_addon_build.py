"""build_addon.py: the manifest checks it reproduces from Blender's builder, and the fallback zip (no bpy)."""

from __future__ import annotations

import shutil
import sys
import tomllib
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import build_addon  # noqa: E402


def manifest() -> dict:
    return tomllib.loads((REPO / "blender_addon" / "blender_manifest.toml").read_text())


def test_the_manifest_is_valid():
    m = manifest()
    assert build_addon.check_manifest(m) == []
    assert m["schema_version"] == "1.0.0" and m["id"] == "headsync" and m["blender_version_min"] == "4.2.0"
    assert m["license"] == ["SPDX:MIT"] and set(m["permissions"]) == {"network", "files"}


def test_bad_manifests_are_named():
    def errs(**change):
        m = manifest()
        m.update(change)
        return " | ".join(build_addon.check_manifest(m))

    assert "schema_version" in errs(schema_version="0.9")
    assert "identifier" in errs(id="head-sync")
    assert "semantic version" in errs(version="1.0")
    assert "punctuation" in errs(tagline="Talking heads.")
    assert "at most 64" in errs(tagline="x" * 65)
    assert "SPDX" in errs(license=["MIT"])
    assert "unknown permission" in errs(permissions={"internet": "Talks to the service"})
    assert "punctuation" in errs(permissions={"network": "Talks to the service."})
    assert "4.2.0" in errs(blender_version_min="4.2")
    m = manifest()
    del m["maintainer"]
    assert build_addon.check_manifest(m) == ["missing required field 'maintainer'"]


def test_fallback_build_and_syntax_errors(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(REPO / "blender_addon", src, ignore=shutil.ignore_patterns("__pycache__"))
    (src / "__pycache__").mkdir()
    (src / "__pycache__" / "x.pyc").write_bytes(b"")
    out = build_addon.build(tmp_path / "dist", use_blender=False, source=src)
    assert out is not None and out.name == "headsync-0.1.0.zip"
    with zipfile.ZipFile(out) as z:
        names = set(z.namelist())
        vendored = z.read("curves_format.py")
    assert "blender_manifest.toml" in names and "operators.py" in names
    assert not any("__pycache__" in n for n in names)
    # the add-on ships the backend's curves.json rules byte for byte (one definition of the format)
    assert vendored == (REPO / "backend" / "headsync" / "curves_format.py").read_bytes()
    assert not (REPO / "blender_addon" / "curves_format.py").exists()
    assert build_addon.check_archive(out) == []
    (src / "broken.py").write_text("def f(:\n")
    assert build_addon.build(tmp_path / "dist2", use_blender=False, source=src) is None
