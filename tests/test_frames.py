"""The compact frame store: what it gives back is what the subject folder holds, in memory or streamed,
and training on streamed frames is the same training as on frames in memory."""

import numpy as np
import pytest
import torch

from headsync import tasks
from headsync.core.progress import silent
from headsync.subject.data import HEAD_LABELS, background_layer, lips_box, read_frame, read_rgb
from headsync.subject.folder import Subject
from headsync.training.frames import (BYTES_PER_PIXEL, MemoryFrames, StreamedFrames, memory_budget, open_frames,
                                      pack)
from synthetic_head import make_subject, write_preset

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    return Subject(make_subject(tmp_path_factory.mktemp("frames") / "s", n_frames=12, size=32))


def test_record_rebuilds_crop_background_head_and_lips(subject):
    plate = read_rgb(subject.path("background.jpg"), 32)
    store = MemoryFrames(subject, 12, 32, CPU)
    for i in (0, 5, 11):
        image, labels = read_frame(subject, i, 32)
        target, bg, head = store.image(i)
        assert np.array_equal((target.numpy() * 255).round().astype(np.uint8), image)
        assert np.array_equal((bg.numpy() * 255).round().astype(np.uint8), background_layer(image, labels, plate))
        assert np.array_equal(head.numpy() > 0, np.isin(labels, HEAD_LABELS))
        assert np.array_equal(store.head(i), np.isin(labels, HEAD_LABELS))
        assert np.array_equal(store.lips_box(i), lips_box(labels)) and lips_box(labels)[0] >= 0
    assert pack(image, labels).shape == (32, 32, BYTES_PER_PIXEL)


def test_streamed_frames_equal_frames_in_memory_and_stay_bounded(subject):
    mem = MemoryFrames(subject, 12, 32, CPU)
    stream = StreamedFrames(subject, 12, 32, CPU, keep=3)
    pix = torch.tensor([[0, 0], [31, 31], [16, 20], [5, 30]])
    for i in [3, 0, 11, 3, 7, 9, 1]:
        for a, b in zip(mem.pixels(i, pix), stream.pixels(i, pix)):
            assert torch.equal(a, b)
        assert np.array_equal(mem.lips_box(i), stream.lips_box(i))
        assert len(stream._cache) <= 3
    with pytest.raises(IndexError):
        stream.record(12)


def test_open_frames_streams_what_does_not_fit(subject):
    need = 12 * 32 * 32 * BYTES_PER_PIXEL
    assert open_frames(subject, 12, 32, CPU, budget=need).kind == "memory"
    assert open_frames(subject, 12, 32, CPU, budget=need - 1).kind == "streamed"
    assert memory_budget(CPU) > 0


def test_training_on_streamed_frames_is_the_same_training(tmp_path, one_torch_thread):
    root = make_subject(tmp_path / "s", n_frames=12, size=32)
    runs = {}
    for name, gb in (("memory", 0.0), ("streamed", 1e-6)):
        preset = write_preset(tmp_path / f"{name}.toml", coarse_iters=12, fine_iters=4, frame_memory_gb=gb, threads=1,
                              heldout_eval_frames=1)
        runs[name] = tasks.run("train", {"subject": str(root), "preset": str(preset), "run": name}, silent())["metrics"]
    assert runs["memory"]["frame_store"] == "memory" and runs["streamed"]["frame_store"] == "streamed"
    for k in ("loss", "heldout_psnr"):
        assert runs["memory"][k] == runs["streamed"][k], k


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@needs_cuda
def test_frames_on_the_gpu_equal_frames_on_the_cpu_and_train(subject, tmp_path):
    cuda = torch.device("cuda")
    on_gpu, on_cpu = MemoryFrames(subject, 12, 32, cuda), MemoryFrames(subject, 12, 32, CPU)
    assert on_gpu.records.device.type == "cuda"
    pix = torch.tensor([[0, 0], [31, 31], [16, 20]])
    for a, b in zip(on_gpu.pixels(4, pix.cuda()), on_cpu.pixels(4, pix)):
        assert torch.equal(a.cpu(), b)
    preset = write_preset(tmp_path / "gpu.toml", coarse_iters=20, fine_iters=4, device="cuda", compile=True)
    m = tasks.run("train", {"subject": str(subject.root), "preset": str(preset), "run": "gpu"}, silent())["metrics"]
    assert m["device"].startswith("cuda") and m["frame_store"] == "memory" and m["compile"] in ("compiled", "fused")
    assert np.isfinite(m["loss"])
