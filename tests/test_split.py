"""One train / held-out split per subject, read by every learner (subject/split.py)."""

from headsync.core.atomic import write_json_atomic
from headsync.subject.data import load_subject_data
from headsync.subject.folder import Subject
from headsync.subject.split import SplitConfig, holdout_start, split_frames, subject_split
from synthetic_head import make_subject


def test_split_holds_out_the_last_fraction_with_one_frame_each_side():
    train, hold = split_frames(40, 0.1)
    assert train.tolist() == list(range(36)) and hold.tolist() == [36, 37, 38, 39]
    assert holdout_start(10, 0.01) == 9 and holdout_start(2, 0.9) == 1 and holdout_start(10, 0.0) == 10


def test_training_data_use_the_split_the_subject_was_prepared_with(tmp_path):
    root = make_subject(tmp_path / "s", n_frames=12, size=16)
    s = Subject(root)
    assert subject_split(s) == SplitConfig()  # prepared before the split was recorded: the default
    m = s.load()
    m["split"] = {"holdout_fraction": 0.25}
    write_json_atomic(s.manifest_path, m)
    data = load_subject_data(s, 16, "mel")
    assert data.holdout.tolist() == [9, 10, 11] and data.train.tolist() == list(range(9))
