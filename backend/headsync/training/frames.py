"""The training frames, stored compactly: four bytes a pixel, on the device when they fit, else read from
the subject folder as they are needed.

Each frame is one record (S, S, 4) uint8: the crop's RGB and a byte of flags (:data:`HEAD`: the pixel is
on the head, labels 1-4, the silhouette target; :data:`PLATE`: its background is the plate, the head
grown by a pixel; :data:`LIPS`: the lips label). The background layer the head is rendered over is rebuilt
from the record and one plate, so it costs no memory of its own. Keeping crop, background and head mask
as separate arrays took seven bytes a pixel (about 14 GB for five minutes at 512 px, more than a 24 GB
machine can spare); the record takes four (7.9 GB), and :class:`StreamedFrames` keeps only the frames in
use, reading each from its JPEG and label PNG when it is drawn (a few milliseconds at 512 px, against
seconds for a CPU iteration).

:func:`open_frames` picks the store: in memory (on the training device) when all records fit in
``budget`` bytes, streamed otherwise. :func:`memory_budget` is the default budget: half the free memory of
a CUDA device; a quarter of the available RAM on the CPU (the rest is for the network's activations,
the optimiser and the other processes of the machine).
"""

from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np
import torch

from ..core.progress import Reporter
from ..subject.data import HEAD_LABELS, LIPS, lips_box, mask_box, plate_mask, read_frame, read_rgb
from ..subject.folder import Subject

#: Flag bits of a record's fourth byte.
HEAD, PLATE, LIPS_FLAG = 1, 2, 4
BYTES_PER_PIXEL = 4


def pack(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """One frame's record (S, S, 4) uint8 from its crop (S, S, 3) uint8 and label map (S, S) uint8."""
    flags = (np.isin(labels, HEAD_LABELS) * HEAD | plate_mask(labels) * PLATE | (labels == LIPS) * LIPS_FLAG)
    return np.concatenate([image, flags.astype(np.uint8)[..., None]], -1)


def available_ram() -> int:
    """Bytes of RAM the system can give without swapping (``MemAvailable``; total RAM where unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def memory_budget(device: torch.device) -> int:
    """Default bytes the frame records may take on ``device`` (see the module's docstring)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    return available_ram() // 4


class FrameStore:
    """Frame records of one subject at side ``size`` on ``device``; subclasses say where they live.

    ``plate`` (S, S, 3) uint8 on the device. Per-pixel reads give floats in [0, 1]."""

    kind = ""

    def __init__(self, subject: Subject, n: int, size: int, device: torch.device):
        self.subject, self.n, self.size, self.device = subject, n, size, device
        self.plate = torch.as_tensor(read_rgb(subject.path("background.jpg"), size), device=device)

    def record(self, i: int) -> torch.Tensor:
        """Frame ``i``'s record (S, S, 4) uint8 on the device."""
        raise NotImplementedError

    def head(self, i: int) -> np.ndarray:
        """Head mask (S, S) bool of frame ``i`` (labels 1-4), on the CPU for the ray samplers."""
        return (self.record(i)[..., 3] & HEAD).bool().cpu().numpy()

    def lips_box(self, i: int) -> np.ndarray:
        """Lips bounding box (4,) int (x0, y0, x1, y1) of frame ``i`` at ``size``, all -1 without lips."""
        return mask_box((self.record(i)[..., 3] & LIPS_FLAG).bool().cpu().numpy())

    def pixels(self, i: int, pix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pixels (M, 2) long (x, y) of frame ``i``: target colour (M, 3), background (M, 3), head (M,)."""
        rec = self.record(i)[pix[:, 1], pix[:, 0]]
        return self._split(rec, self.plate[pix[:, 1], pix[:, 0]])

    def image(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The whole frame ``i``: target (S, S, 3), background (S, S, 3), head (S, S)."""
        return self._split(self.record(i), self.plate)

    @staticmethod
    def _split(rec: torch.Tensor, plate: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        flags = rec[..., 3]
        rgb = rec[..., :3]
        bg = torch.where((flags & PLATE).bool()[..., None], plate, rgb)
        return rgb.float() / 255.0, bg.float() / 255.0, (flags & HEAD).bool().float()

    def nbytes(self) -> int:
        """Bytes all records take."""
        return self.n * self.size * self.size * BYTES_PER_PIXEL


class MemoryFrames(FrameStore):
    """Every record in one (N, S, S, 4) uint8 tensor on the device, read once when opened."""

    kind = "memory"

    def __init__(self, subject: Subject, n: int, size: int, device: torch.device, reporter: Reporter | None = None):
        super().__init__(subject, n, size, device)
        self.records = torch.empty((n, size, size, BYTES_PER_PIXEL), dtype=torch.uint8, device=device)
        self.boxes = np.empty((n, 4), np.int64)
        if reporter:
            reporter.start("load", n)
        for i in range(n):
            image, labels = read_frame(subject, i, size)
            self.records[i] = torch.from_numpy(pack(image, labels)).to(device)
            self.boxes[i] = lips_box(labels)
            if reporter:
                reporter.advance(1)

    def record(self, i: int) -> torch.Tensor:
        return self.records[i]

    def lips_box(self, i: int) -> np.ndarray:
        return self.boxes[i]


class StreamedFrames(FrameStore):
    """Records read from the subject folder when asked for; the ``keep`` most recent stay in memory."""

    kind = "streamed"

    def __init__(self, subject: Subject, n: int, size: int, device: torch.device, keep: int = 16):
        super().__init__(subject, n, size, device)
        self.keep = keep
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()

    def record(self, i: int) -> torch.Tensor:
        if not 0 <= i < self.n:
            raise IndexError(f"frame {i} of {self.n}")
        rec = self._cache.pop(i, None)
        if rec is None:
            rec = torch.from_numpy(pack(*read_frame(self.subject, i, self.size))).to(self.device)
        self._cache[i] = rec
        while len(self._cache) > self.keep:
            self._cache.popitem(last=False)
        return rec


def open_frames(subject: Subject, n: int, size: int, device: torch.device, budget: int | None = None,
                reporter: Reporter | None = None) -> FrameStore:
    """The frames ``0..n-1`` of ``subject`` at ``size``: in memory on ``device`` when their records fit in
    ``budget`` bytes (None: :func:`memory_budget`), streamed from the folder otherwise."""
    need = n * size * size * BYTES_PER_PIXEL
    if need <= (memory_budget(device) if budget is None else budget):
        return MemoryFrames(subject, n, size, device, reporter)
    return StreamedFrames(subject, n, size, device)
