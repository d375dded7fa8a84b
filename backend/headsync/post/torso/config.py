"""The ``[torso]`` preset table: which torso path the render uses, and how each part is trained."""

from __future__ import annotations

from dataclasses import dataclass

from ...core.errors import UserError

#: The torso paths. ``source``: the source frame's own torso (today's behaviour, gaps in the neck colour);
#: ``restorer``: the source torso, gaps inpainted by the Torso-Inpainting Restorer; ``field``: the torso
#: rendered by the torso field from the head pose (follows an edited pose); ``field+restorer``: both.
MODES = ("source", "restorer", "field", "field+restorer")
#: The torso job's files in the subject folder (the service reads them without loading torch).
RESTORER_FILE, FIELD_FILE, RECORD_FILE = "torso/restorer.pt", "torso/field.pt", "torso/torso.json"


def trained_modes(has_restorer: bool, has_field: bool) -> list[str]:
    """The modes a render can pick given the parts trained (``source`` needs none), in :data:`MODES` order."""
    return [m for m in MODES if ("restorer" not in m or has_restorer) and ("field" not in m or has_field)]


@dataclass(frozen=True)
class TorsoConfig:
    """Settings of the torso path. Pixel lengths ``expand_*`` are at 512 px and scaled to the crop."""

    mode: str = "restorer"
    device: str = "auto"
    threads: int = 0
    # Torso-Inpainting Restorer (SyncTalk++ Sec. III-F)
    restorer_resolution: int = 256  # side the U-Net runs at
    restorer_width: int = 16  # channels of the first U-Net level (doubling per level)
    restorer_depth: int = 3  # down-sampling levels
    restorer_steps: int = 3000
    restorer_batch: int = 8
    restorer_lr: float = 2e-3
    rotation: float = 10.0  # random rotation of the training frames, +/- degrees
    expand_min: float = 10.0  # random face-mask expansion in training, px at 512
    expand_max: float = 30.0
    expand_render: float = 15.0  # fixed expansion at render, px at 512
    # below the lips, rendered head pixels under this opacity join the restored band (the head's soft chin
    # edge carries its own chin shadow); from it to 1 the head's coverage ramps from 0 to 1 (:func:`.path.chin_coverage`)
    chin_solid_opacity: float = 0.5
    perceptual_weight: float = 1.0  # L_inpaint = L1 + w * LPIPS (or its stand-in)
    # Torso field with Adaptive Pose Encoding (ER-NeRF Sec. 3.4)
    field_resolution: int = 128  # side the field is rendered at
    field_steps: int = 4000
    field_rays: int = 4096
    field_lr: float = 5e-3
    field_hidden: int = 64
    field_levels: int = 4  # dense 2D feature grids, base_resolution * 2^l
    field_base_resolution: int = 16
    field_features: int = 4

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UserError(f"unknown torso mode {self.mode!r} in [torso]", f"use one of {', '.join(MODES)}")
        if not 0 < self.expand_min <= self.expand_max:
            raise UserError("[torso] needs 0 < expand_min <= expand_max", "e.g. expand_min = 10, expand_max = 30")
        if not 0 <= self.chin_solid_opacity < 1:
            raise UserError("[torso] needs 0 <= chin_solid_opacity < 1", "e.g. chin_solid_opacity = 0.5")

    @property
    def uses_restorer(self) -> bool:
        return "restorer" in self.mode

    @property
    def uses_field(self) -> bool:
        return "field" in self.mode
