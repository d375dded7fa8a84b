"""Where torch runs: one device picker and one CPU-thread policy for every stage.

Settings name a device as ``auto`` (CUDA when torch sees one, else the CPU), ``cuda`` or ``cpu``.
"""

from __future__ import annotations

import importlib
import os

import torch

from .errors import UserError

DEVICE_CHOICES = ("auto", "cuda", "cpu")


def pick_device(name: str, setting: str = "device") -> torch.device:
    """The torch device for a ``device`` setting; asking for CUDA without one is a :class:`UserError`
    (``setting`` names where the value came from, for the message)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in DEVICE_CHOICES:
        raise UserError(f"{setting} = {name!r} is not a device", f"use one of {', '.join(DEVICE_CHOICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError(f"CUDA was requested ({setting} = 'cuda') but no CUDA device is available",
                        "set it to \"auto\" or \"cpu\" in the preset, or install the CUDA build of torch")
    return torch.device(name)


def cuda_extension_available(module: str, device: torch.device | str) -> bool:
    """True when the optional CUDA extension ``module`` (``tinycudann``, ``gsplat``) imports and ``device``
    is CUDA: their kernels are CUDA-only, so on any other device the pure-PyTorch path is used."""
    if torch.device(device).type != "cuda":
        return False
    try:
        importlib.import_module(module)
    except Exception:  # ImportError, or a wheel built for another CUDA version failing at load
        return False
    return True


def auto_threads() -> int:
    """CPU threads worth using now: the cores not already busy (1-minute load average), at least one.

    Small tensor ops synchronise their threads at every op; when another process holds a core, a second
    thread mostly waits for it (measured here: 0.58 s/iteration with one thread, 3.5 s with two, on a
    loaded two-core machine).
    """
    cores = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except OSError:  # not available on this platform
        busy = 0.0
    return max(1, min(cores, int(cores - busy + 0.5)))


def set_threads(n: int) -> int:
    """Use ``n`` CPU threads (0: :func:`auto_threads`); returns the number set."""
    n = n or auto_threads()
    torch.set_num_threads(n)
    return n
