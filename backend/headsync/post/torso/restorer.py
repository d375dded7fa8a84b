"""Torso-Inpainting Restorer (SyncTalk++ Sec. III-F, Eq. 28): a lightweight U-Net that fills the gap
between a (rendered or source) face and the source torso.

Eq. 28, ``I(M F, (1 - M - delta) F, theta) = F^``: the network sees the face region and the background
region with the expanded face removed, and returns the whole frame; only the pixels that neither input
covers (the hole) are taken from its output, the rest stays as given (:func:`inpaint`).

Input channels (8): face RGB premultiplied by its mask, background RGB (zeroed in the hole and the face),
face mask, hole mask. Images are (B, 3, H, W) in [0, 1]; H and W divisible by ``2 ** depth``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import weights

IN_CHANNELS = 8


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(4, cout), nn.SiLU(),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(4, cout), nn.SiLU())


class TorsoRestorer(nn.Module):
    """U-Net with ``depth`` down/up levels; channels ``width * 2^l``. Output in [0, 1] via a sigmoid."""

    def __init__(self, width: int = 16, depth: int = 3):
        super().__init__()
        self.width, self.depth = width, depth
        chans = [width * 2 ** i for i in range(depth + 1)]
        self.down = nn.ModuleList([_block(IN_CHANNELS, chans[0])] +
                                  [_block(chans[i], chans[i + 1]) for i in range(depth)])
        self.up = nn.ModuleList([_block(chans[i + 1] + chans[i], chans[i]) for i in reversed(range(depth))])
        self.out = nn.Conv2d(chans[0], 3, 1)

    def forward(self, face: torch.Tensor, face_mask: torch.Tensor, background: torch.Tensor,
                hole: torch.Tensor) -> torch.Tensor:
        """``face`` premultiplied and ``background`` (B, 3, H, W), ``face_mask``/``hole`` (B, 1, H, W) in
        [0, 1] -> the whole frame (B, 3, H, W)."""
        x = torch.cat([face, background * (1 - hole) * (1 - face_mask), face_mask, hole], 1)
        skips = []
        for i, blk in enumerate(self.down):
            x = blk(x if i == 0 else F.avg_pool2d(x, 2))
            skips.append(x)
        for blk, skip in zip(self.up, reversed(skips[:-1])):
            x = blk(torch.cat([F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False), skip], 1))
        return torch.sigmoid(self.out(x))


def compose_known(pred: torch.Tensor, face: torch.Tensor, face_mask: torch.Tensor, background: torch.Tensor,
                  hole: torch.Tensor) -> torch.Tensor:
    """The restored frame: the premultiplied face over the background, the network's output only in the
    uncovered hole (same shapes as :meth:`TorsoRestorer.forward`)."""
    known = face + background * (1 - face_mask)
    return hole * (1 - face_mask) * pred + (1 - hole * (1 - face_mask)) * known


def inpaint(net: TorsoRestorer, face: np.ndarray, face_alpha: np.ndarray, background: np.ndarray,
            hole: np.ndarray, device: torch.device | str = "cpu", removed: np.ndarray | None = None) -> np.ndarray:
    """Fill ``hole`` of one frame.

    ``face`` (S, S, 3) RGB in [0, 1] premultiplied by its coverage ``face_alpha`` (S, S) (a render's
    ``head`` and ``opacity``);
    ``background`` (S, S, 3) in [0, 1], valid outside ``removed`` (S, S) bool (default ``hole``). The
    network is told ``hole`` (S, S) bool, the removed pixels the face leaves uncovered (as in training,
    outside the face); its output replaces the background on all of ``removed``, so a face edge of partial
    coverage over removed pixels is blended with the restored torso, never with the zeroed background
    (that blend is a dark rim at the jaw). The network runs at its training side (the frame is resized to
    it) and only the restored pixels are resized back. Returns the frame (S, S, 3) float32: face over
    background, restored where removed.
    """
    s = background.shape[0]
    r = net_side(net)
    t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32, device=device)  # noqa: E731
    img = lambda a: F.interpolate(t(a).permute(2, 0, 1)[None], size=(r, r), mode="area")  # noqa: E731
    msk = lambda a: F.interpolate(t(a)[None, None], size=(r, r), mode="area")  # noqa: E731
    with torch.no_grad():
        pred = net(img(face), msk(face_alpha), img(background), (msk(hole.astype(np.float32)) > 0.01).float())
    pred = F.interpolate(pred, size=(s, s), mode="bilinear", align_corners=False)[0].permute(1, 2, 0).cpu().numpy()
    fill = hole if removed is None else (removed | hole)
    a, h = face_alpha[..., None].astype(np.float32), fill[..., None].astype(np.float32)
    under = h * pred + (1 - h) * background
    return (face + (1 - a) * under).astype(np.float32)


def net_side(net: TorsoRestorer) -> int:
    """The side the restorer was trained at (stored with its weights)."""
    return int(getattr(net, "side", 256))


def record(net: TorsoRestorer, side: int, info: dict) -> dict:
    """What is saved: shape, training side, weights and the training record (see :func:`load`)."""
    return {"width": net.width, "depth": net.depth, "side": side, "state": net.state_dict(), "info": info}


def load(path: Path, device: torch.device | str = "cpu") -> TorsoRestorer:
    """Load a restorer saved from :func:`record`; a clear error when it is missing or damaged."""
    return weights.load(path, "restorer", lambda d: TorsoRestorer(int(d["width"]), int(d["depth"])), device)
