"""A test-only job kind, so that the service's cancel/kill/restart tests need no minutes of real work.

Not part of the installed package: the tests put ``tests/plugins`` on ``PYTHONPATH`` (see
``tests/service_harness.py``), where ``headsync_test_tasks-0.dist-info`` registers this module in the
entry-point group ``headsync.tasks``; the service and its workers load that group
(:func:`headsync.tasks.load_plugins`) and this module declares the kind ``test_sleep``. It behaves like a
stage: it creates its subject folder, holds a half-written ``.partial.tmp-PID`` file while it works,
reports ``steps`` progress steps over ``seconds`` (saving ``checkpoint.json`` after each, which
``resume`` continues from), and writes ``result.json`` atomically at the end.
``mode`` makes it misbehave: ``user`` (bad input), ``crash`` (an internal error), ``enospc`` (disk full),
``cuda`` (asks PyTorch for a GPU it does not have), ``stubborn`` (ignores the stop request). ``warm`` sends
it to the service's warm worker, as a Preview Frame's render is.
"""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from headsync import tasks
from headsync.core.errors import UserError
from headsync.core.progress import Reporter
from headsync.core.atomic import write_json_atomic

KIND = "test_sleep"


def sleep_task(params: dict[str, Any], reporter: Reporter) -> dict[str, Any]:
    root = Path(params["subject"])
    root.mkdir(parents=True, exist_ok=True)
    mode = params["mode"]
    partial = root / f".partial.tmp-{os.getpid()}"
    partial.write_text("half-written\n")
    steps, seconds = params["steps"], params["seconds"]
    reporter.message(f"sleeping {seconds}s in {steps} steps (mode {mode}, resume {params['resume']})")
    ckpt = root / "checkpoint.json"
    first = 0
    if params["resume"] and ckpt.is_file():
        first = json.loads(ckpt.read_text())["step"]  # continue where the interrupted job stopped
    reporter.start("sleep", steps)
    if first:
        reporter.message(f"resuming at step {first}")
        reporter.set(first)
    out = Path(params["out"]) if params.get("out") else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    for i in range(first, steps):
        if out:
            (out / f"{i:06d}.txt").write_text(str(i))
        t_end = time.monotonic() + seconds / steps
        while time.monotonic() < t_end:
            time.sleep(min(0.02, max(t_end - time.monotonic(), 0)))
        if mode == "stubborn":
            reporter.done += 1  # never calls check(): only SIGKILL stops it
            continue
        write_json_atomic(ckpt, {"step": i + 1})
        reporter.advance(1, step=i, loss=float("nan") if i == 0 else 1.0 / (i + 1))
        if i == steps // 2:
            if mode == "user":
                raise UserError("the test job was told to fail", "do not pass mode=user")
            if mode == "crash":
                raise RuntimeError("boom")
            if mode == "enospc":
                raise OSError(errno.ENOSPC, "No space left on device", str(partial))
            if mode == "cuda":
                import torch

                torch.zeros(1, device="cuda")
    partial.unlink()
    write_json_atomic(root / "result.json", {"steps": steps, "resume": params["resume"]})
    return {"result": str(root / "result.json"), "steps": steps, "psnr": float("nan")}


@tasks.job_kind(KIND, sleep_task, "test only: sleeps, reporting progress", creates_subject=True,
                checkpoint=lambda p: Path(p["subject"]) / "checkpoint.json", warm=lambda p: p.get("warm"))
class SleepParams(tasks.JobParams):
    subject: tasks.SubjectFolder = Field(description="the subject folder it creates")
    seconds: float = Field(1.0, gt=0, le=3600, description="how long it sleeps")
    steps: int = Field(10, ge=1, le=100_000, description="progress steps over that time")
    mode: Literal["ok", "user", "crash", "enospc", "cuda", "stubborn"] = Field("ok", description="how it misbehaves")
    resume: bool = Field(False, description="continue from checkpoint.json")
    out: tasks.OutputFolder | None = Field(None, description="a folder it fills with one file per step (like a render)")
    warm: bool = Field(False, description="run in the service's warm worker, like a Preview Frame")
