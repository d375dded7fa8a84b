"""Densification and pruning of the Gaussians: a strategy object the trainer calls around each step.

gsplat's ``DefaultStrategy`` design (from 3DGS, Kerbl et al. 2023): after each backward pass the norm of
every visible Gaussian's screen-space mean gradient (``means2d``, scaled to [-1, 1] screen units) is
accumulated; every ``refine_every`` steps between ``refine_start_iter`` and ``refine_stop_iter``,
Gaussians whose mean gradient exceeds ``grow_grad2d`` are cloned when small (scale <= ``grow_scale3d`` x
scene scale) and split in two when large (new centres drawn from the Gaussian, scales / 1.6); Gaussians
with opacity below ``prune_opa`` or larger than ``prune_scale3d`` x scene scale are removed. Every
``reset_every`` steps opacities are clamped to twice the pruning threshold so that floaters must earn
their opacity again.

It works on any model whose per-Gaussian tensors are given as ``params`` (name -> Parameter, leading
dimension N), with ``means`` (N, 3), ``log_scales`` (N, 3) (added to the log-scale) and ``opacity_logits``
(N,) (added to the opacity logit), and that reports in ``info`` the activated canonical ``scales``,
``quats`` (wxyz) and ``opacities`` besides the rasterizer's ``means2d`` (with its gradient), ``radii``,
``width``, ``height``, ``n_cameras``. Every optimizer holding one of ``params`` gets the new Parameter
and its Adam moments re-indexed (copied for kept and cloned Gaussians, zero for split ones' children),
as gsplat does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from .rasterizer import quat_to_rotmat

#: Canonical attributes the model reports in ``info`` for the decisions.
_INFO_ATTRS = ("scales", "quats", "opacities")


@dataclass(frozen=True)
class DensifyConfig:
    """Thresholds and schedule (gsplat's defaults; scales are fractions of the scene scale)."""

    prune_opa: float = 0.005
    grow_grad2d: float = 0.0002
    grow_scale3d: float = 0.01
    prune_scale3d: float = 0.1
    refine_start_iter: int = 500
    refine_stop_iter: int = 15_000
    refine_every: int = 100
    reset_every: int = 3000
    max_gaussians: int = 200_000  # no growth beyond this count (CPU budgets)


class DensifyStrategy:
    """Call :meth:`step_pre_backward` after rendering and :meth:`step_post_backward` after ``backward()``
    and before ``optimizer.step()``; ``state`` (from :meth:`initialize_state`) is kept by the caller."""

    def __init__(self, cfg: DensifyConfig, scene_scale: float):
        self.cfg = cfg
        self.scene_scale = float(scene_scale)

    def initialize_state(self) -> dict[str, Any]:
        return {"grad2d": None, "count": None}

    def step_pre_backward(self, info: dict[str, Any]) -> None:
        """Keep the screen-space mean gradient (the rasterizer's ``means2d`` is not a leaf)."""
        if info["means2d"].requires_grad:
            info["means2d"].retain_grad()

    @torch.no_grad()
    def step_post_backward(self, params: dict[str, nn.Parameter], optimizers: list[torch.optim.Optimizer],
                           state: dict[str, Any], step: int, info: dict[str, Any]) -> dict[str, int]:
        """Accumulate gradients; refine, prune and reset on schedule. Returns counts of what changed
        (``cloned``, ``split``, ``pruned``, ``reset``), zeros on steps that do nothing."""
        cfg = self.cfg
        report = {"cloned": 0, "split": 0, "pruned": 0, "reset": 0}
        if step >= cfg.refine_stop_iter:
            return report
        self._accumulate(state, info, params["means"].shape[0])
        if step > cfg.refine_start_iter and step % cfg.refine_every == 0:
            report.update(self._grow(params, optimizers, state, info))
            report["pruned"] = self._prune(params, optimizers, state, info)
            state["grad2d"].zero_()
            state["count"].zero_()
        if step > 0 and step % cfg.reset_every == 0:
            report["reset"] = self._reset_opacity(params, optimizers, info)
        return report

    # ---- statistics ---------------------------------------------------------------------------------
    def _accumulate(self, state: dict[str, Any], info: dict[str, Any], n: int) -> None:
        grad = info["means2d"].grad
        if state["grad2d"] is None or state["grad2d"].shape[0] != n:
            state["grad2d"] = torch.zeros(n, device=info["means2d"].device)
            state["count"] = torch.zeros(n, device=info["means2d"].device)
        if grad is None:
            return
        g = grad.clone()
        g[..., 0] *= info["width"] / 2.0 * info["n_cameras"]  # to [-1, 1] screen units, as gsplat
        g[..., 1] *= info["height"] / 2.0 * info["n_cameras"]
        sel = (info["radii"] > 0).all(-1) if info["radii"].dim() == 3 else info["radii"] > 0  # (C, N)
        ids = torch.nonzero(sel)[:, 1]
        state["grad2d"].index_add_(0, ids, g[sel].norm(dim=-1).float())
        state["count"].index_add_(0, ids, torch.ones_like(ids, dtype=torch.float32))

    # ---- refinement ---------------------------------------------------------------------------------
    def _grow(self, params, optimizers, state, info) -> dict[str, int]:
        """Clone small and split large high-gradient Gaussians; ``info``'s canonical attributes are kept
        aligned with ``params`` (children copy their parent's) for the pruning that follows."""
        cfg = self.cfg
        n = params["means"].shape[0]
        avg = state["grad2d"] / state["count"].clamp_min(1)
        high = avg > cfg.grow_grad2d
        small = info["scales"].max(-1).values <= cfg.grow_scale3d * self.scene_scale
        room = max(0, cfg.max_gaussians - n)
        clone = torch.nonzero(high & small).squeeze(1)[:room]
        split = torch.nonzero(high & ~small).squeeze(1)[:max(0, room - clone.numel())]
        split_rot, split_scales = quat_to_rotmat(info["quats"][split]), info["scales"][split]
        if clone.numel():
            _extend(params, optimizers, state, clone, {}, zero_moments=False)
            _extend_info(info, clone)
        if split.numel():
            # Two children sampled from the parent Gaussian, 1.6x smaller; the parent is removed.
            noise = torch.randn(2, split.numel(), 3, device=split_scales.device) * split_scales
            centres = params["means"][split] + torch.einsum("nij,bnj->bni", split_rot, noise)
            shrink = params["log_scales"][split] - math.log(1.6)
            new = {"means": centres.reshape(-1, 3), "log_scales": shrink.repeat(2, 1)}
            _extend(params, optimizers, state, split.repeat(2), new, zero_moments=True)
            _extend_info(info, split.repeat(2))
            info["scales"][-2 * split.numel():] /= 1.6
            keep = torch.ones(params["means"].shape[0], dtype=torch.bool, device=split.device)
            keep[split] = False
            _select(params, optimizers, state, keep)
            for k in _INFO_ATTRS:
                info[k] = info[k][keep]
        return {"cloned": int(clone.numel()), "split": int(split.numel())}

    def _prune(self, params, optimizers, state, info) -> int:
        """Remove transparent and huge Gaussians (never all of them)."""
        op, sc = info["opacities"], info["scales"].max(-1).values
        bad = (op < self.cfg.prune_opa) | (sc > self.cfg.prune_scale3d * self.scene_scale)
        if bad.all():
            bad[op.argmax()] = False
        n = int(bad.sum())
        if n:
            _select(params, optimizers, state, ~bad)
            for k in _INFO_ATTRS:
                info[k] = info[k][~bad]
        return n

    def _reset_opacity(self, params, optimizers, info) -> int:
        """Clamp opacities to ``2 x prune_opa``: lower the per-Gaussian logit by the excess."""
        target = math.log(2 * self.cfg.prune_opa / (1 - 2 * self.cfg.prune_opa))
        op = info["opacities"].clamp(1e-6, 1 - 1e-6)
        n = params["opacity_logits"].shape[0]
        if op.shape[0] != n:  # refined this step; the next reset will catch up
            return 0
        excess = (torch.log(op / (1 - op)) - target).clamp_min(0)
        params["opacity_logits"].sub_(excess)
        for opt in optimizers:  # the moments of a reset parameter start again, as gsplat
            st = opt.state.get(params["opacity_logits"])
            if st:
                for v in st.values():
                    if torch.is_tensor(v) and v.shape == params["opacity_logits"].shape:
                        v.zero_()
        return int((excess > 0).sum())


# ---- parameter surgery, optimizer state kept in step ----------------------------------------------------
def _replace(params: dict[str, nn.Parameter], optimizers: list[torch.optim.Optimizer],
             fn_param: Callable[[str, torch.Tensor], torch.Tensor],
             fn_state: Callable[[str, torch.Tensor], torch.Tensor]) -> None:
    """Swap every per-Gaussian Parameter for ``fn_param(name, old)``, re-pointing the optimizers' groups and
    mapping their per-parameter tensors (Adam's moments) with ``fn_state``."""
    for name in list(params.keys()):
        old = params[name]
        new = nn.Parameter(fn_param(name, old.data), requires_grad=old.requires_grad)
        for opt in optimizers:
            for group in opt.param_groups:
                for i, p in enumerate(group["params"]):
                    if p is old:
                        group["params"][i] = new
                        st = opt.state.pop(old, None)
                        if st is not None:
                            opt.state[new] = {k: fn_state(name, v) if torch.is_tensor(v) and v.dim() > 0
                                              and v.shape[0] == old.shape[0] else v for k, v in st.items()}
        params[name] = new


def _extend(params, optimizers, state, src: torch.Tensor, new: dict[str, torch.Tensor], zero_moments: bool) -> None:
    """Append Gaussians copied from rows ``src`` (values in ``new`` override the copy)."""
    def fp(name, x):
        return torch.cat([x, new[name] if name in new else x[src]])

    def fs(name, v):
        return torch.cat([v, torch.zeros_like(v[src]) if zero_moments else v[src]])

    _replace(params, optimizers, fp, fs)
    for k in ("grad2d", "count"):
        if state.get(k) is not None:
            state[k] = torch.cat([state[k], state[k][src]])


def _select(params, optimizers, state, keep: torch.Tensor) -> None:
    _replace(params, optimizers, lambda name, x: x[keep], lambda name, v: v[keep])
    for k in ("grad2d", "count"):
        if state.get(k) is not None:
            state[k] = state[k][keep]


def _extend_info(info: dict[str, Any], src: torch.Tensor) -> None:
    for k in _INFO_ATTRS:
        info[k] = torch.cat([info[k], info[k][src]])
