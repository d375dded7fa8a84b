import numpy as np

from headsync.prepare.tracking import crop_affine, cut_crop, pick_subject, stable_crop_box


def test_pick_subject_largest_then_nearest():
    small = np.array([10, 10, 20, 20.0])
    big = np.array([100, 100, 60, 60.0])
    assert np.array_equal(pick_subject([small, big], None), big)
    # once tracking `small`, a bigger face elsewhere does not steal the track
    assert np.array_equal(pick_subject([big, small + 3], small), small + 3)
    assert pick_subject([], small) is None


def test_stable_crop_box_contains_motion_and_stays_inside_image():
    rng = np.random.default_rng(0)
    centres = np.stack([200 + 20 * np.sin(np.arange(100) / 10), 150 + rng.normal(0, 2, 100)], 1)
    boxes = np.concatenate([centres - 40, np.full((100, 2), 80.0)], 1)
    x0, y0, side = stable_crop_box(boxes, scale=2.0, down_shift=0.1)
    assert side >= 160 + 39  # face scale plus the range of motion
    assert x0 <= centres[:, 0].min() - 40 and x0 + side >= centres[:, 0].max() + 40
    x0, y0, side = stable_crop_box(boxes, scale=4.0, down_shift=0.1, image_size=(400, 300))
    assert side <= 300 and x0 >= 0 and y0 >= 0 and x0 + side <= 400 and y0 + side <= 300


def test_cut_crop_maps_box_to_square():
    img = np.zeros((100, 200, 3), np.uint8)
    img[40:60, 140:160] = 255  # a white square at x 140..160, y 40..60
    crop = cut_crop(img, (120.0, 30.0, 40.0), 80)  # 2x magnification
    ys, xs = np.nonzero(crop[..., 0] > 128)
    assert abs(xs.min() - 40) <= 1 and abs(xs.max() - 79) <= 1
    assert abs(ys.min() - 20) <= 1 and abs(ys.max() - 59) <= 1
    A = crop_affine((120.0, 30.0, 40.0), 80)
    assert np.allclose(A @ [140, 40, 1], [40, 20])
