"""``torch.compile`` where it pays, and eager PyTorch where it is unavailable.

:func:`compile_forward` replaces a module's ``forward`` with its compiled version (same parameters, same
state-dict keys, so checkpoints move between compiled and eager runs). Compilation happens at the first
call and needs a working compiler toolchain (a C++ compiler for the CPU, Triton for CUDA); where that fails
the module warns once and stays eager, so a machine without one trains as before, only slower.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn


def compile_forward(module: nn.Module, enabled: bool = True, method: str = "forward") -> str:
    """Compile ``module.forward``, or its method named ``method`` (dynamic shapes: the number of samples
    changes every iteration).

    Returns ``"compiled"``, ``"off"`` (not ``enabled``) or ``"unavailable"`` (this torch cannot compile).
    A compiled forward that fails (at its first call, typically) falls back to eager for good, with a
    warning naming the error."""
    if not enabled:
        return "off"
    eager = getattr(module, method)
    try:
        compiled = torch.compile(eager, dynamic=True)
    except Exception as e:  # torch.compile itself refuses (unsupported Python or platform)
        warnings.warn(f"torch.compile is unavailable here ({type(e).__name__}: {e}); running eager", stacklevel=2)
        return "unavailable"
    current = [compiled]

    def forward(*args, **kwargs):
        if current[0] is eager:
            return eager(*args, **kwargs)
        try:
            return current[0](*args, **kwargs)
        except Exception as e:  # no compiler toolchain, or a graph the compiler cannot handle
            warnings.warn(f"torch.compile failed ({type(e).__name__}: {str(e)[:300]}); running eager",
                          stacklevel=2)
            current[0] = eager
            return eager(*args, **kwargs)

    setattr(module, method, forward)
    return "compiled"
