#!/usr/bin/env python3
"""Validate the Blender extension in ``blender_addon/`` and build ``dist/headsync-<version>.zip``.

    python build_addon.py [--out-dir dist] [--check] [--no-blender]

It uses Blender's own extension builder when one is at hand, in this order:

1. ``$HEADSYNC_BLENDER_EXT``: the path of Blender's ``blender_ext.py``;
2. the ``bpy`` wheel installed in this Python (``bpy/X.Y/scripts/addons_core/bl_pkg/cli/blender_ext.py``,
   a standard-library script: the same code as ``blender --command extension build``);
3. a ``blender`` executable on the PATH (``blender --command extension build/validate``).

Without any of them (``--no-blender`` forces this), it reproduces the builder's checks on the manifest
(schema 1.0.0, id, semantic version, tagline and permission reasons of at most 64 characters without final
punctuation, SPDX licences, Blender version, known permission keys) and zips the sources itself with the
manifest's ``[build] paths_exclude_pattern``. Either way the sources are staged first with the backend's
standard-library modules the extension shares (``VENDORED``: ``curves_format.py``, the curves.json rules)
copied beside them, every module is byte-compiled (a syntax error fails the build) and the archive is
validated after. Exit status 0 on success, 1 on failure.
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib.util
import os
import py_compile
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent
SOURCE = REPO / "blender_addon"
MANIFEST = "blender_manifest.toml"
#: Backend modules the extension ships a copy of (standard library only), as {name in the zip: source}.
VENDORED = {"curves_format.py": REPO / "backend" / "headsync" / "curves_format.py"}

PERMISSION_KEYS = {"files", "network", "clipboard", "camera", "microphone"}
TERSE_MAX = 64
VERSION_RE = re.compile(r"^\d+\.\d+\.\d+([-+][0-9A-Za-z.+-]*)?$")
BLENDER_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")
ID_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def _terse(value, what: str) -> list[str]:
    if not isinstance(value, str) or not value.strip():
        return [f"{what} must be a non-empty string"]
    errs = []
    if value != value.strip():
        errs.append(f"{what} must not start or end with spaces")
    if len(value) > TERSE_MAX:
        errs.append(f"{what} is {len(value)} characters long, at most {TERSE_MAX} are allowed")
    if any(ord(c) < 32 for c in value):
        errs.append(f"{what} contains control characters")
    if not (value[-1].isalnum() or value[-1] in ")]}"):
        errs.append(f"{what} must not end with punctuation")
    return errs


def check_manifest(data: dict) -> list[str]:
    """The checks of Blender's extension builder that matter here; returns the errors (empty: valid)."""
    errs: list[str] = []
    req = ["schema_version", "id", "version", "name", "tagline", "maintainer", "type", "blender_version_min",
           "license"]
    for k in req:
        if k not in data:
            errs.append(f"missing required field {k!r}")
    if errs:
        return errs
    if data["schema_version"] != "1.0.0":
        errs.append(f"schema_version must be '1.0.0', got {data['schema_version']!r}")
    if not isinstance(data["id"], str) or not ID_RE.match(data["id"]):
        errs.append(f"id {data['id']!r} must be a Python identifier (letters, digits, '_')")
    if not isinstance(data["version"], str) or not VERSION_RE.match(data["version"]):
        errs.append(f"version {data['version']!r} must be a semantic version (X.Y.Z)")
    for k in ("name", "maintainer"):
        if not isinstance(data[k], str) or not data[k].strip():
            errs.append(f"{k} must be a non-empty string")
    errs += _terse(data["tagline"], "tagline")
    if data["type"] not in ("add-on", "theme"):
        errs.append(f"type must be 'add-on' or 'theme', got {data['type']!r}")
    for k in ("blender_version_min", "blender_version_max"):
        if k in data and (not isinstance(data[k], str) or not BLENDER_VERSION_RE.match(data[k])):
            errs.append(f"{k} {data[k]!r} must look like '4.2.0'")
    lic = data["license"]
    if not isinstance(lic, list) or not lic or not all(isinstance(x, str) and x.startswith("SPDX:") for x in lic):
        errs.append("license must be a non-empty list of 'SPDX:...' identifiers")
    perms = data.get("permissions", {})
    if not isinstance(perms, dict):
        errs.append("permissions must be a table of reasons")
    else:
        for k, v in perms.items():
            if k not in PERMISSION_KEYS:
                errs.append(f"unknown permission {k!r} (known: {', '.join(sorted(PERMISSION_KEYS))})")
            errs += _terse(v, f"the reason of permission {k!r}")
    tags = data.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
        errs.append("tags must be a list of strings")
    return errs


def read_manifest(source: Path = SOURCE) -> dict:
    path = source / MANIFEST
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise SystemExit(f"error: {path} is missing")
    except tomllib.TOMLDecodeError as e:
        raise SystemExit(f"error: {path} is not valid TOML: {e}")


def compile_sources(source: Path) -> list[str]:
    errs = []
    with tempfile.TemporaryDirectory() as tmp:
        for py in sorted(source.rglob("*.py")):
            try:
                py_compile.compile(str(py), cfile=os.path.join(tmp, "x.pyc"), doraise=True)
            except py_compile.PyCompileError as e:
                errs.append(f"{py.relative_to(source)}: {e.msg.strip()}")
    return errs


def find_blender_ext() -> Path | None:
    env = os.environ.get("HEADSYNC_BLENDER_EXT")
    if env and Path(env).is_file():
        return Path(env)
    spec = importlib.util.find_spec("bpy")
    if spec is not None and spec.submodule_search_locations:
        for root in spec.submodule_search_locations:
            hits = sorted(Path(root).glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
            if hits:
                return hits[-1]
    return None


def _run(cmd: list[str]) -> tuple[int, str]:
    p = subprocess.run(cmd, capture_output=True, text=True)
    return p.returncode, (p.stdout + p.stderr).strip()


def _excluded(rel: str, patterns: list[str]) -> bool:
    parts = rel.split("/")
    for pat in patterns:
        if pat.endswith("/"):
            if any(fnmatch.fnmatch(d, pat[:-1]) for d in parts[:-1]):
                return True
        elif any(fnmatch.fnmatch(p, pat) for p in parts) or fnmatch.fnmatch(rel, pat):
            return True
    return False


def zip_sources(source: Path, out: Path, manifest: dict) -> None:
    patterns = list(manifest.get("build", {}).get("paths_exclude_pattern", ["__pycache__/", ".*"]))
    tmp = out.with_name("." + out.name)
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for p in sorted(source.rglob("*")):
            rel = p.relative_to(source).as_posix()
            if p.is_file() and not _excluded(rel, patterns):
                z.write(p, rel)
    os.replace(tmp, out)


def check_archive(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            if MANIFEST not in names:
                return [f"{path.name} has no {MANIFEST} at its root"]
            if "__init__.py" not in names:
                return [f"{path.name} has no __init__.py at its root"]
            if any("__pycache__" in n or n.endswith(".pyc") for n in names):
                return [f"{path.name} contains compiled Python files"]
            return check_manifest(tomllib.loads(z.read(MANIFEST).decode("utf-8")))
    except zipfile.BadZipFile:
        return [f"{path} is not a zip archive"]


def stage(source: Path, dest: Path, vendored: dict[str, Path] = VENDORED) -> Path:
    """A copy of the extension's sources in ``dest`` with the vendored backend modules beside them."""
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name, src in vendored.items():
        if not src.is_file():
            raise SystemExit(f"error: {src} is missing (the extension ships a copy of it as {name})")
        if (source / name).exists():
            raise SystemExit(f"error: {source / name} would shadow the vendored {src}; remove it")
        shutil.copy2(src, dest / name)
    return dest


def build(out_dir: Path, use_blender: bool = True, check_only: bool = False, source: Path = SOURCE) -> Path | None:
    with tempfile.TemporaryDirectory(prefix="headsync-addon-") as tmp:
        return _build(out_dir, use_blender, check_only, stage(source, Path(tmp) / "headsync"))


def _build(out_dir: Path, use_blender: bool, check_only: bool, source: Path) -> Path | None:
    manifest = read_manifest(source)
    errs = check_manifest(manifest) + compile_sources(source)
    if errs:
        for e in errs:
            print(f"error: {e}", file=sys.stderr)
        return None
    out = out_dir / f"{manifest['id']}-{manifest['version']}.zip"
    if check_only:
        print(f"{SOURCE / MANIFEST}: valid ({manifest['id']} {manifest['version']})")
        return out
    out_dir.mkdir(parents=True, exist_ok=True)
    ext = find_blender_ext() if use_blender else None
    blender = shutil.which("blender") if use_blender and ext is None else None
    if ext is not None:
        how = f"Blender's builder {ext}"
        base = [sys.executable, str(ext)]
    elif blender is not None:
        how = f"{blender} --command extension"
        base = [blender, "--factory-startup", "--command", "extension"]
    else:
        how = "the built-in builder" + (" (no Blender found)" if use_blender else "")
        base = None
    if base is not None:
        if out.exists():
            out.unlink()
        rc, text = _run(base + ["build", "--source-dir", str(source), "--output-filepath", str(out)])
        if rc != 0 or not out.exists():
            print(text, file=sys.stderr)
            print(f"error: the extension build failed ({how})", file=sys.stderr)
            return None
        rc, text = _run(base + ["validate", str(out)])
        if rc != 0:
            print(text, file=sys.stderr)
            print(f"error: the built archive does not validate ({how})", file=sys.stderr)
            return None
    else:
        zip_sources(source, out, manifest)
    errs = check_archive(out)
    if errs:
        for e in errs:
            print(f"error: {e}", file=sys.stderr)
        return None
    print(f"built {out} with {how}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out-dir", default=str(REPO / "dist"))
    ap.add_argument("--check", action="store_true", help="validate the manifest and sources only")
    ap.add_argument("--no-blender", action="store_true", help="do not use Blender's builder")
    args = ap.parse_args(argv)
    out = build(Path(args.out_dir), use_blender=not args.no_blender, check_only=args.check)
    return 0 if out is not None else 1


if __name__ == "__main__":
    sys.exit(main())
