"""Portrait-Sync Generator: neck-colour gap fill, the feathered merge mask, paste-back at the crop box."""

import numpy as np

from headsync.post.portrait import PortraitConfig, compose, fill_gaps, merge_mask, neck_colour, paste


def scene(s=32):
    labels = np.zeros((s, s), np.uint8)
    labels[4:20, 8:24] = 1  # face
    labels[14:18, 12:20] = 2  # lips
    labels[20:24, 12:20] = 5  # neck
    labels[24:, :] = 6  # torso
    crop = np.zeros((s, s, 3), np.float32)
    crop[labels == 5] = (0.8, 0.5, 0.4)
    crop[labels == 6] = (0.1, 0.2, 0.7)
    return labels, crop


def test_uncovered_face_pixels_take_the_neck_colour():
    labels, crop = scene()
    neck = neck_colour(crop, labels)
    np.testing.assert_allclose(neck, (0.8, 0.5, 0.4), atol=1e-6)
    opacity = np.zeros((32, 32), np.float32)
    opacity[4:14] = 1.0  # the head covers only the upper face: the lower face would show a gap
    head = np.zeros((32, 32, 3), np.float32)
    head[opacity > 0] = (0.9, 0.7, 0.6)
    bg = np.full((32, 32, 3), 0.05, np.float32)  # the dark plate behind the removed head
    out = fill_gaps(head, opacity, bg, labels, neck)
    np.testing.assert_allclose(out[16, 10], neck)  # gap filled
    np.testing.assert_allclose(out[10, 10], (0.9, 0.7, 0.6))  # head kept
    np.testing.assert_allclose(out[2, 2], 0.05)  # true background left alone


def test_merge_mask_is_feathered_and_covers_the_face():
    labels, _ = scene()
    m = merge_mask(labels, np.zeros((32, 32), np.float32), PortraitConfig(blur=0.05, grow=0.03))
    assert m[12, 16] > 0.95 and m[1, 1] < 0.05
    assert 0.05 < m[12, 25] < 0.95 or 0.05 < m[12, 26] < 0.95  # a soft edge, not a cut


def test_paste_handles_a_box_outside_the_frame():
    frame = np.full((40, 60, 3), 100, np.uint8)
    crop = np.ones((16, 16, 3), np.float32)
    mask = np.ones((16, 16), np.float32)
    out = paste(frame, crop, mask, (50.0, -10.0, 32.0))  # sticks out right and top
    assert out[0, 59].tolist() == [255, 255, 255] and out[21, 59].tolist() == [255, 255, 255]
    assert out[22, 59].tolist() == [100, 100, 100] and out[0, 49].tolist() == [100, 100, 100]
    assert out.shape == frame.shape and frame[0, 59, 0] == 100  # input untouched
    np.testing.assert_array_equal(paste(frame, crop, mask, (100.0, 100.0, 8.0)), frame)  # fully outside


def test_compose_keeps_the_plate_outside_the_face():
    labels, crop = scene()
    frame = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    opacity = (labels == 1).astype(np.float32)
    head = np.zeros((32, 32, 3), np.float32)
    head[opacity > 0] = 1.0
    out = compose(frame, (0.0, 0.0, 64.0), head, opacity, crop, labels, crop, PortraitConfig())
    assert out.shape == frame.shape
    assert (out[20, 32] == 255).all()  # face centre (crop 10,16 -> frame 20,32) is the render
    np.testing.assert_array_equal(out[:4, :4], frame[:4, :4])  # far from the face: the source frame
