"""Warnings where the footage cannot give what the user expects (prepare/checks.py)."""

import shutil

import numpy as np
import pytest

from headsync.prepare import checks
from headsync.subject.folder import Subject

from conftest import shared_file


def test_sync_warning_near_chance_only():
    assert checks.sync_warning(0.9) is None
    assert checks.sync_warning(None) is None
    w = checks.sync_warning(0.55)
    assert "does not seem to match the lips" in w and "0.55" in w


def test_size_and_pixel_warnings():
    assert checks.size_warnings(288, 256) == []
    (w,) = checks.size_warnings(144, 256)
    assert "upscaled 1.8x" in w
    (w,) = checks.size_warnings(300, 256, sample_aspect=12 / 11)
    assert "non-square pixels" in w


def test_short_clip_warning():
    assert checks.duration_warning(26.0) is None
    assert "only 4.0 s" in checks.duration_warning(4.0)


def test_count_blinks_needs_a_held_closure():
    ap = np.full(200, 0.3)
    assert checks.count_blinks(ap, 25) == 0
    ap[50] = 0.02  # one-frame dip: a tracking glitch
    assert checks.count_blinks(ap, 25) == 0
    ap[100:104] = 0.03  # 160 ms closed
    ap[150:153] = 0.04
    ap[20] = np.nan
    assert checks.count_blinks(ap, 25) == 2
    assert checks.count_blinks(np.full(10, np.nan), 25) == 0
    assert "blink edits" in checks.blink_warning(0) and checks.blink_warning(3) is None


def test_footage_warnings_from_a_manifest(tmp_path):
    s = Subject(tmp_path / "s")
    s.root.mkdir()
    s.update(source={"fps": 25.0, "duration_s": 4.0, "width": 176, "height": 144, "sample_aspect": 1.0909},
             crop={"box": [0, 0, 144.0]}, stages={"ave": {"done": True, "info": {"sync_auc_heldout": 0.5}}})
    lm = np.zeros((100, 478, 3), np.float32)
    from headsync.evaluation import measures as m

    for pairs, (c0, c1) in zip(m.EYELID_PAIRS, m.EYE_CORNERS):  # open eyes, never closed
        lm[:, c0, 0], lm[:, c1, 0] = 0, 20
        for a, b in pairs:
            lm[:, a, 1], lm[:, b, 1] = 0, 6
    np.save(s.path("landmarks.npy"), lm)
    text = " | ".join(checks.footage_warnings(s, 256))
    for expected in ("only 4.0 s", "upscaled", "non-square", "no full blink", "does not seem to match"):
        assert expected in text, text


@pytest.mark.slow
def test_franck_has_blinks_cap13_has_none():
    """Real clips (face mesh of every frame at 25 fps): franck blinks fully three times, cap13 never."""
    import mediapipe as mp

    from headsync.core import media
    from headsync.evaluation.measures import eye_aperture

    def blinks(path, seconds):
        fm = mp.solutions.face_mesh.FaceMesh(static_image_mode=False, max_num_faces=1, refine_landmarks=True)
        ap = []
        for i, fr in enumerate(media.iter_frames(path, 25.0)):
            if i >= seconds * 25:
                break
            r = fm.process(np.ascontiguousarray(fr))
            h, w = fr.shape[:2]
            ap.append(eye_aperture(np.array([(p.x * w, p.y * h) for p in r.multi_face_landmarks[0].landmark]))
                      if r.multi_face_landmarks else np.nan)
        fm.close()
        return checks.count_blinks(np.array(ap), 25.0)

    assert blinks(shared_file("data/video/cap13_edit2.mp4"), 12) == 0
    # franck: the full blink at about 40.4 s of the cut lies in seconds 38-43
    franck = shared_file("data/video/franck_60-200s.mp4")
    assert blinks(franck, 43) >= 1


@pytest.mark.slow
def test_mismatched_sound_warns_and_the_samples_own_does_not(prepared_sample, tmp_path):
    """The sample with its own sound: no sync warning. The same frames with a LibriVox reading as the
    sound: the discriminator is near chance and prepare says so."""
    from headsync.core import media
    from headsync.core.config import load_preset
    from headsync.core.progress import silent
    from headsync.prepare import stages
    from headsync.prepare.pipeline import stage_configs
    from headsync.face_sync import av_encoder

    from conftest import sample_video

    assert not any("match the lips" in w for w in checks.footage_warnings(prepared_sample, 256))
    copy = Subject(tmp_path / "mismatched")
    shutil.copytree(prepared_sample.root, copy.root)
    own = media.read_audio(copy.path("audio.wav"))
    reading = np.concatenate([media.read_audio(p) for p in
                              sorted(shared_file("data/speech").glob("sense_and_sensibility_*.wav"))])
    media.write_wav(copy.path("audio.wav"), np.resize(reading, own.size))
    cfg = stage_configs(load_preset("preview"), sample_video(), None, None, None)[av_encoder.NAME]
    stages.run_stage(av_encoder, copy, cfg, silent(), force=True)
    assert any("does not seem to match the lips" in w for w in checks.footage_warnings(copy, 256))
