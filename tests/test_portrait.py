"""Portrait-Sync Generator: neck-colour gap fill, the feathered merge mask, paste-back at the crop box."""

import numpy as np
import pytest

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


def test_floaters_over_the_shoulder_never_reach_the_composite():
    """Issue 11's translucent shoulder patch: density the field left over the torso is dropped."""
    from headsync.evaluation.measures import composite_leak, grow_mask

    labels, crop = scene(64)
    labels[:] = 0
    labels[8:40, 16:48] = 1
    labels[40:48, 24:40] = 5
    labels[48:, :] = 6
    crop[labels == 6] = (0.1, 0.2, 0.7)
    frame = np.clip(crop * 255, 0, 255).astype(np.uint8)
    opacity = (labels == 1).astype(np.float32)
    opacity[52:60, 2:14] = 0.6  # a floater patch over the shoulder
    head = np.zeros((64, 64, 3), np.float32)
    head[opacity > 0] = 0.9
    out = compose(frame, (0.0, 0.0, 64.0), head, opacity, crop, labels, crop, PortraitConfig())
    cfg = PortraitConfig()
    margin = int(round((cfg.grow + 3 * cfg.blur + cfg.support_grow) * 64))
    outside = ~grow_mask(np.isin(labels, (1, 2, 3, 5)), margin)
    leak = composite_leak(out, frame, outside)
    assert leak.mean_abs < 1 and leak.max_patch < 10, leak


def test_ears_show_the_source_not_the_plate():
    labels, crop = scene()
    labels[8:16, 4:8] = 4  # an ear beside the face
    crop[labels == 4] = (0.8, 0.6, 0.5)
    plate_bg = crop.copy()
    plate_bg[labels == 4] = (0.2, 0.3, 0.9)  # the background layer shows the bluish plate there
    opacity = np.zeros((32, 32), np.float32)  # the render missed the ear
    out = fill_gaps(np.zeros((32, 32, 3), np.float32), opacity, plate_bg, labels, neck_colour(crop, labels), crop)
    np.testing.assert_allclose(out[12, 5], (0.8, 0.6, 0.5))


def test_a_hand_over_the_chin_is_kept():
    """A synthetic occluder over the chin: the composite keeps the source's pixels there."""
    from headsync.post.occluders import hand_mask

    labels, crop = scene(64)
    labels[:] = 0
    labels[8:44, 16:48] = 1
    frame = np.full((64, 64, 3), 180, np.uint8)
    frame[34:46, 20:44] = (40, 200, 40)  # the "hand"
    pts = np.array([[21, 35], [43, 35], [43, 45], [21, 45]] * 5 + [[32, 40]], np.float32)  # 21 points
    occ = hand_mask([pts], (64, 64), grow=0.0)
    opacity = (labels == 1).astype(np.float32)
    head = np.zeros((64, 64, 3), np.float32)
    head[opacity > 0] = (0.9, 0.7, 0.6)
    with_hand = compose(frame, (0.0, 0.0, 64.0), head, opacity, crop, labels, crop, PortraitConfig(), occ)
    without = compose(frame, (0.0, 0.0, 64.0), head, opacity, crop, labels, crop, PortraitConfig())
    assert (with_hand[37:44, 23:42] == (40, 200, 40)).all()
    assert not (without[37:44, 23:42] == (40, 200, 40)).all()
    assert (with_hand[20, 32] == without[20, 32]).all()  # the rest of the face is the render


@pytest.mark.slow
def test_hand_finder_sees_no_hand_on_a_face():
    from headsync.post.occluders import HandFinder

    import skimage.data

    with HandFinder() as find:
        assert find(skimage.data.astronaut()) == []
        assert not find.mask(np.zeros((64, 64, 3), np.uint8)).any()
