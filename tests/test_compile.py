"""torch.compile where it pays: compiled and eager agree, and a machine that cannot compile runs eager."""

import pytest
import torch

from headsync.core import compile as compile_mod
from headsync.renderers.common.hashgrid import HashGrid2D, HashGridConfig

CFG = HashGridConfig(levels=4, features=1, base_resolution=4, finest_resolution=32, log2_table_size=8)


def test_off_leaves_the_module_alone():
    grid = HashGrid2D(CFG, planes=3)
    forward = grid.forward
    assert compile_mod.compile_forward(grid, enabled=False) == "off" and grid.forward == forward


def test_a_failing_compiler_falls_back_to_eager(monkeypatch):
    def broken_compile(fn, **kw):
        def compiled(*a, **k):
            raise RuntimeError("no C++ compiler found")
        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    grid = HashGrid2D(CFG, planes=3)
    x = torch.rand(50, 3, 2)
    expected = grid(x)
    assert compile_mod.compile_forward(grid) == "compiled"
    with pytest.warns(UserWarning, match="no C\\+\\+ compiler found"):
        out = grid(x)
    assert torch.equal(out, expected)
    assert torch.equal(grid(x), expected)  # eager from now on, no second warning needed


def test_torch_without_compile_runs_eager(monkeypatch):
    def refuse(fn, **kw):
        raise RuntimeError("Python 3.99 is not supported by dynamo")

    monkeypatch.setattr(torch, "compile", refuse)
    grid = HashGrid2D(CFG, planes=3)
    with pytest.warns(UserWarning, match="unavailable"):
        assert compile_mod.compile_forward(grid) == "unavailable"


@pytest.mark.slow
@pytest.mark.parametrize("methods, keep_mb", [
    (("forward",), 512.0),                 # the whole forward, as compile_forward does by default
    (("corners", "interpolate"), 0.0),     # training's way (TalkingHead.compile_hot_paths), lean lookup
    (("corners", "interpolate"), 512.0),   # ... and autograd keeping the corners
])
def test_compiled_hash_grid_agrees_with_eager_and_keeps_its_state_dict(one_torch_thread, methods, keep_mb):
    """A real compile on this machine's CPU (a minute or more on two busy cores)."""
    from dataclasses import replace

    cfg = replace(CFG, keep_corners_mb=keep_mb)
    eager, compiled = HashGrid2D(cfg, planes=3), HashGrid2D(cfg, planes=3)
    with torch.no_grad():
        eager.table.uniform_(-1, 1)
    compiled.load_state_dict(eager.state_dict())
    for method in methods:
        assert compile_mod.compile_forward(compiled, method=method) == "compiled"
    for n in (300, 417):  # two sizes: dynamic shapes
        x = torch.rand(n, 3, 2)
        a, b = eager(x), compiled(x)
        assert torch.allclose(a, b, atol=1e-6)
        a.square().sum().backward()
        b.square().sum().backward()
    assert torch.allclose(eager.table.grad, compiled.table.grad, atol=1e-6)
    assert set(compiled.state_dict()) == set(eager.state_dict())
