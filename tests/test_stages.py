"""Stage bookkeeping: reuse when unchanged, redo when settings, code version or inputs change."""

from dataclasses import dataclass

import pytest

from headsync.core.errors import UserError
from headsync.core.progress import Reporter
from headsync.prepare.stages import Stage, run_stage
from headsync.core.atomic import staging_dir
from headsync.subject.folder import Subject


@dataclass(frozen=True)
class Cfg:
    k: int = 1


def make_stage(name, requires=(), version=1, log=None, fail=False):
    def run(subject, cfg, reporter):
        if fail:
            raise RuntimeError("boom")
        log.append(name)
        return {"k": cfg.k}

    return Stage(name, version, requires, Cfg, run)


def test_reuse_and_invalidate(tmp_path):
    s, log = Subject(tmp_path), []
    a, b = make_stage("a", log=log), make_stage("b", ("a",), log=log)
    r = Reporter()
    assert run_stage(a, s, Cfg(), r) and run_stage(b, s, Cfg(), r)
    assert not run_stage(a, s, Cfg(), r) and not run_stage(b, s, Cfg(), r)  # reused
    assert run_stage(a, s, Cfg(k=2), r)  # a new setting redoes a...
    assert run_stage(b, s, Cfg(), r)  # ...and b, whose input changed
    assert run_stage(make_stage("a", version=2, log=log), s, Cfg(k=2), r)  # a code version bump redoes it
    assert log == ["a", "b", "a", "b", "a"]
    assert s.load()["stages"]["a"]["params"]["k"] == 2


def test_failed_stage_is_not_marked_done(tmp_path):
    s = Subject(tmp_path)
    with pytest.raises(RuntimeError):
        run_stage(make_stage("a", fail=True), s, Cfg(), Reporter())
    assert "a" not in s.load().get("stages", {})
    with pytest.raises(UserError, match="no finished 'a'"):
        run_stage(make_stage("b", ("a",), log=[]), s, Cfg(), Reporter())


def test_staging_dir_is_all_or_nothing(tmp_path):
    final = tmp_path / "frames"
    with staging_dir(final) as tmp:
        (tmp / "1.jpg").write_text("one")
    assert (final / "1.jpg").read_text() == "one"
    with pytest.raises(KeyboardInterrupt):
        with staging_dir(final) as tmp:
            (tmp / "2.jpg").write_text("two")
            raise KeyboardInterrupt
    assert sorted(p.name for p in final.iterdir()) == ["1.jpg"]  # the old complete folder survives
    assert [p.name for p in tmp_path.iterdir()] == ["frames"]  # and no temporary folder is left behind


def test_corrupt_manifest_is_a_user_error(tmp_path):
    (tmp_path / "subject.json").write_text("{not json")
    with pytest.raises(UserError, match="corrupt") as e:
        Subject(tmp_path).load()
    assert "prepare" in e.value.hint
