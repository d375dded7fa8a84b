"""Losses and image metrics of the renderer.

* coarse stage: pixel MSE (ER-NeRF Eq. 11);
* fine stage: MSE + ``lambda`` x a perceptual term on patches (ER-NeRF Eq. 12, SyncTalk Eq. 13). The papers
  use LPIPS; it needs pretrained AlexNet weights, which HeadSync never downloads on its own. When the
  ``lpips`` package is installed and its backbone weights are already in torch's hub cache, LPIPS is used;
  otherwise the substitute is ``1 - SSIM`` over the patch (a structural term that, like LPIPS, rewards
  local contrast and edges that MSE blurs away). :func:`perceptual_loss` says which one is in use.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(pred, target)


def psnr_from_mse(m: float) -> float:
    """PSNR in dB of images in [0, 1]."""
    return float("inf") if m <= 0 else -10.0 * math.log10(m)


def _gaussian_window(size: int, sigma: float, device, dtype) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(3, 1, size, size).contiguous()


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 7, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM of image batches (B, 3, H, W) in [0, 1] (Wang et al. 2004, Gaussian window, valid region)."""
    window = min(window, a.shape[-1], a.shape[-2])
    w = _gaussian_window(window, sigma, a.device, a.dtype)
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    mu_a = F.conv2d(a, w, groups=3)
    mu_b = F.conv2d(b, w, groups=3)
    var_a = F.conv2d(a * a, w, groups=3) - mu_a ** 2
    var_b = F.conv2d(b * b, w, groups=3) - mu_b ** 2
    cov = F.conv2d(a * b, w, groups=3) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.mean()


def lpips_weights_available() -> bool:
    """True when the ``lpips`` package imports and AlexNet's weights are already cached (no download)."""
    try:
        import lpips  # noqa: F401
    except ImportError:
        return False
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    return any(hub.glob("alexnet-*.pth"))


def perceptual_loss(prefer_lpips: bool = True) -> tuple[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    """``(name, fn)``: LPIPS when its weights are installed, else ``1 - SSIM``; fn takes (B, 3, H, W) in [0, 1]."""
    if prefer_lpips and lpips_weights_available():
        import lpips

        net = lpips.LPIPS(net="alex", verbose=False).eval()
        for p in net.parameters():
            p.requires_grad_(False)

        def lp(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            net.to(a.device)
            return net(a * 2 - 1, b * 2 - 1).mean()

        return "lpips", lp
    return "ssim", lambda a, b: 1.0 - ssim(a, b)
