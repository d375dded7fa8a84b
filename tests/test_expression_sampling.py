"""Expression-focused sampling and the per-coefficient response check (pure logic)."""

import numpy as np
import pytest

from headsync.evaluation.expression_response import box_mask, coefficient_response, weak_coefficients
from headsync.training import expression_sampling as es


def clip_with_blinks(n=1000, blinks=(100, 500, 900), length=5):
    e = np.full((n, 7), 0.1, np.float32)
    e[:, 2] += 0.02 * np.sin(np.arange(n))  # browInnerUp barely moves: no tail
    for b in blinks:
        e[b:b + length, 5:7] = 0.95
    return e


def test_tails_pick_the_blinks_only():
    e = clip_with_blinks()
    t = es.tails(e, np.arange(1000))
    assert [x.size for x in t] == [0, 0, 0, 0, 0, 15, 15]
    assert set(t[5]) == {b + i for b in (100, 500, 900) for i in range(5)}


def test_frame_weights_draw_rare_frames_often():
    e = clip_with_blinks()
    frames = np.arange(1000)
    p = es.frame_weights(e, frames, tail_share=0.3)
    assert p.sum() == pytest.approx(1.0)
    blink = np.zeros(1000, bool)
    blink[list(es.tails(e, frames)[5])] = True
    # uniform: 1.5% of draws; with the tail share 0.3 + 0.7 * 1.5%
    assert p[blink].sum() == pytest.approx(0.3 + 0.7 * 0.015)
    assert np.allclose(es.frame_weights(e, frames, 0.0), 1e-3)
    assert np.allclose(es.frame_weights(np.zeros((10, 7)), np.arange(10), 0.3), 0.1)


def test_frame_weights_on_a_subset_of_frames():
    e = clip_with_blinks()
    frames = np.arange(0, 800)  # the held-out tail is not drawn
    p = es.frame_weights(e, frames, 0.5)
    assert p.shape == (800,) and p.sum() == pytest.approx(1.0)
    assert p[100] > 20 * p[0]


def test_eye_boxes_scale_and_missing_faces():
    lm = np.full((2, 478, 3), np.nan, np.float32)
    lm[0, :, :2] = 100.0
    lm[0, es.EYE_BROW_POINTS[0], :2] = (60, 80)
    lm[0, es.EYE_BROW_POINTS[1], :2] = (140, 120)
    boxes = es.eye_boxes(lm, crop_size=256, size=128)
    assert boxes[0].tolist() == [30, 40, 71, 61]
    assert boxes[1].tolist() == [-1, -1, -1, -1]


def test_pixels_and_patch_stay_in_the_grown_box():
    rng = np.random.default_rng(0)
    box = np.array([40, 30, 60, 40])
    pix = es.pixels_around(box, 500, 96, rng)
    assert pix.shape == (500, 2)
    assert pix[:, 0].min() >= 35 and pix[:, 0].max() < 65 and pix[:, 1].min() >= 28 and pix[:, 1].max() < 43
    assert es.pixels_around(np.full(4, -1), 10, 96, rng).shape == (0, 2)
    patch = es.box_patch(box, 16, 96, rng)
    assert patch.shape == (256, 2)
    centre = patch.mean(0)
    assert 40 <= centre[0] <= 60 and 30 <= centre[1] <= 40
    assert es.box_patch(np.full(4, -1), 16, 96, rng) is None


def test_coefficient_response_tells_acting_from_ignored():
    size = 16
    region = box_mask(np.array([4, 4, 12, 8]), size)
    head = np.ones((size, size), bool)

    def render(frame, expr):  # coefficient 5 darkens the eye box by 0.2, coefficient 0 does nothing
        img = np.full((size, size, 3), 0.5)
        img[region] -= 0.2 * expr[5]
        return img

    e = np.zeros((3, 7))
    r = coefficient_response(render, [0, 2], e, lambda f: region, lambda f: head, [f"c{k}" for k in range(7)])
    assert r["c5"]["region"] == pytest.approx(0.2 * 255, rel=1e-6)
    assert r["c5"]["elsewhere"] == 0.0
    assert r["c0"]["region"] == 0.0
    assert weak_coefficients(r) == [f"c{k}" for k in range(7) if k != 5]


def test_add_eye_samples_keeps_the_ray_count_and_adds_a_patch():
    from types import SimpleNamespace

    from headsync.renderers.base import Sampling
    from headsync.training.samplers import Batch

    rng = np.random.default_rng(0)
    cfg = SimpleNamespace(eyes_fraction=0.25, eyes_patch=8)
    box = np.array([40, 30, 60, 40])
    rays = Batch(np.zeros((100, 2), np.int64), [])
    out = es.add_eye_samples(rays, Sampling.RAYS, box, 96, cfg, rng)
    assert out.pixels.shape == (100, 2) and (out.pixels[:75] == 0).all() and (out.pixels[75:, 0] >= 35).all()
    patches = Batch(np.zeros((16 * 16, 2), np.int64), [16], lips=(1, 2, 3, 4))
    out = es.add_eye_samples(patches, Sampling.PATCHES, box, 96, cfg, rng)
    assert out.patches == [16, 8] and out.pixels.shape == (16 * 16 + 64, 2)
    assert out.lips == (1, 2, 3, 4)  # the lips region the renderer's loss reads is kept
    assert es.add_eye_samples(rays, Sampling.RAYS, np.full(4, -1), 96, cfg, rng) is rays
    image = Batch(None, [96])
    assert es.add_eye_samples(image, Sampling.IMAGE, box, 96, cfg, rng) is image


def test_uniform_draw_is_the_draw_of_the_code_before_weighted_draws():
    """tail_share 0: the same slots as ``rng.integers`` (runs repeat the figures measured before); weighted:
    drawn in proportion to the weights."""
    import numpy as np

    from headsync.training.expression_sampling import draw_slot

    uniform = np.full(50, 1 / 50)
    a, b = np.random.default_rng(3), np.random.default_rng(3)
    assert [draw_slot(uniform, a) for _ in range(100)] == [int(b.integers(50)) for _ in range(100)]
    w = np.zeros(50)
    w[[4, 9]] = [0.25, 0.75]
    got = np.bincount([draw_slot(w, a) for _ in range(4000)], minlength=50)
    assert set(np.nonzero(got)[0]) == {4, 9} and 0.7 < got[9] / 4000 < 0.8
