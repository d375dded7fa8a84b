"""What one training iteration draws of its frame (training/samplers.py; pure logic)."""

from types import SimpleNamespace

import numpy as np

from headsync.renderers.base import Sampling
from headsync.training.samplers import around_lips, draw, sample_rays

CFG = SimpleNamespace(rays=400, inside_fraction=0.8, lips_fraction=0.5, patch=16, lips_patch=8)


def head_mask(size=48):
    head = np.zeros((size, size), bool)
    head[8:40, 10:38] = True
    return head


def test_around_lips_grows_by_a_quarter_and_clips_to_the_image():
    assert around_lips(np.array([20, 30, 28, 34]), 48) == (18, 29, 30, 35)
    assert around_lips(np.array([0, 40, 8, 48]), 48) == (0, 38, 10, 48)


def test_every_sampling_carries_the_lips_region_and_rays_fall_in_it():
    rng = np.random.default_rng(0)
    box = np.array([20, 30, 28, 34])
    for sampling in Sampling:
        assert draw(sampling, head_mask(), box, CFG, rng).lips == around_lips(box, 48)
        assert draw(sampling, head_mask(), np.full(4, -1), CFG, rng).lips is None
    rays = sample_rays(head_mask(), 400, 0.8, rng, box, 0.5)
    x0, y0, x1, y1 = around_lips(box, 48)
    lips = rays[:200]
    assert ((lips[:, 0] >= x0) & (lips[:, 0] < x1) & (lips[:, 1] >= y0) & (lips[:, 1] < y1)).all()
    assert len({tuple(p) for p in lips}) > 40  # spread over the region, not piled on its edge
