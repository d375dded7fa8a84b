"""core/keep.py: what the service's warm worker keeps between jobs (off everywhere else)."""

from __future__ import annotations

import os

import pytest

from headsync.core import keep


@pytest.fixture
def kept_on():
    keep.enable()
    yield
    keep.enable(False)


def test_off_by_default_builds_every_time():
    built = []
    assert keep.kept("slot", 1, lambda: built.append(1) or len(built)) == 1
    assert keep.kept("slot", 1, lambda: built.append(1) or len(built)) == 2


def test_one_value_per_slot_rebuilt_when_the_key_changes(kept_on):
    built = []

    def build(tag):
        built.append(tag)
        return object()

    a = keep.kept("model", "k1", lambda: build("k1"))
    assert keep.kept("model", "k1", lambda: build("again")) is a and built == ["k1"]
    b = keep.kept("model", "k2", lambda: build("k2"))
    assert b is not a and keep.kept("model", "k1", lambda: build("k1 back")) is not a  # only the latest is kept
    assert keep.kept("other", "k1", lambda: build("other")) is not b
    assert built == ["k1", "k2", "k1 back", "other"]


def test_a_failed_build_keeps_nothing(kept_on):
    with pytest.raises(ValueError):
        keep.kept("model", "k", lambda: (_ for _ in ()).throw(ValueError("broken checkpoint")))
    assert keep.kept("model", "k", lambda: 5) == 5


def test_file_key_follows_content_changes(tmp_path):
    f = tmp_path / "checkpoint.pt"
    assert keep.file_key(f) is None and keep.file_key(None) is None
    f.write_bytes(b"one")
    k1 = keep.file_key(f)
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # more training wrote it again
    assert keep.file_key(f) != k1
    assert keep.file_key(tmp_path / "." / "checkpoint.pt") == keep.file_key(f)  # by the resolved path
