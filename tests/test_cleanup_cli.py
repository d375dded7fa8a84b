"""Leftovers of killed writers are swept at the next start; a cancelled command says what is left; an
unknown run lists the runs there are."""

import os
import subprocess
import sys

import pytest

from headsync import cli
from headsync.core.atomic import staging_dir, sweep_dead
from headsync.core.errors import UserError
from headsync.training.checkpoints import load_checkpoint


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_sweep_removes_only_dead_writers_leftovers(tmp_path):
    gone = dead_pid()
    (tmp_path / f".r1.tmp-{gone}" / "frames").mkdir(parents=True)
    (tmp_path / f".r2.tmp-{os.getppid()}").mkdir()  # a live writer (our parent): left alone
    (tmp_path / f".r3.old-{gone}").mkdir()  # parked while being replaced, the new one never came
    (tmp_path / "r4").mkdir()
    swept = sweep_dead(tmp_path)
    assert sorted(p.name for p in swept) == sorted([f".r1.tmp-{gone}", f".r3.old-{gone}"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f".r2.tmp-{os.getppid()}", "r3", "r4"])


def test_staging_dir_sweeps_before_writing(tmp_path):
    left = tmp_path / f".old-render.tmp-{dead_pid()}"
    left.mkdir()
    with staging_dir(tmp_path / "new-render") as tmp:
        (tmp / "x").write_text("1")
    assert not left.exists() and (tmp_path / "new-render" / "x").exists()


def test_unknown_run_lists_the_runs(tmp_path):
    for run in ("preview", "standard"):
        (tmp_path / "models" / run).mkdir(parents=True)
        (tmp_path / "models" / run / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(UserError) as e:
        load_checkpoint(tmp_path / "models" / "nope" / "checkpoint.pt")
    assert "preview, standard" in e.value.hint


def test_cancel_messages_tell_the_truth():
    assert "not resumable" in cli.AFTER_CANCEL["render"]
    assert "--resume" in cli.AFTER_CANCEL["train"]
    assert "resumes" in cli.AFTER_CANCEL["prepare"]
