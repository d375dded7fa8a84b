"""The ``headsync`` command. Each subcommand maps its flags onto a job (``tasks``), so the terminal and
the local service run the same code. Exit codes: 0 success, 2 bad input (with a hint), 1 internal failure.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import traceback
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from . import __version__, tasks
from .renderers.registry import DEFAULT_RENDERER, RENDERERS
from .core.errors import Cancelled, UserError
from .core.progress import Reporter, json_lines_sink, terminal_sink



def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="headsync", description="Audio-driven talking heads for dubbing in Blender.")
    p.add_argument("--version", action="version", version=f"headsync {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--json-progress", action="store_true", help="print one JSON object per line")
        return sp

    for task in tasks.TASKS.values():  # one subcommand per job kind, its flags from the kind's schema
        sp = common(sub.add_parser(task.kind, help=task.help))
        _job_flags(sp, task)
        if task.kind == "eval":
            sp.add_argument("--json", action="store_true", help="print the metrics as JSON")

    sp = common(sub.add_parser("demo", help="the whole pipeline on the bundled sample"))
    sp.add_argument("--out", default=str(Path("out") / "demo"), help="folder for the demo (default: ./out/demo)")
    sp.add_argument("--preset", default="preview")
    sp.add_argument("--renderer", choices=RENDERERS,
                    help=f"a registered renderer (default: the preset's [renderer] default, else {DEFAULT_RENDERER})")

    from .service.server import add_arguments

    add_arguments(sub.add_parser("serve", help="the local service the Blender add-on talks to"))
    sp = sub.add_parser("batch", help="render many shots (a JSON list of subject/audio/curves/out); reports "
                                      "which failed")
    sp.add_argument("shots", help="SHOTS.json")
    sp.add_argument("--workspace", default=None, help="the service's workspace (default as serve)")
    sp.add_argument("--executor", choices=("local", "ray"), default="local",
                    help="where the shots run when no service serves the workspace (as serve)")
    sp.add_argument("--ray-address", default=None, metavar="HOST:PORT", help="as serve")
    sp.add_argument("--max-jobs", type=int, default=None, help="shots at a time when run here (as serve)")

    sp = sub.add_parser("models", help="optional pretrained models")
    msub = sp.add_subparsers(dest="models_command", required=True)
    msub.add_parser("list")
    mi = msub.add_parser("install")
    mi.add_argument("name")
    mi.add_argument("--from", dest="from_file")
    return p


def _job_flags(sp: argparse.ArgumentParser, task: tasks.Task) -> None:
    """The flags of a job kind's parameters: ``--name VALUE`` (a positional, ``--no-name`` or ``--name
    [VALUE]`` where the schema's :class:`~headsync.tasks.Cli` says so). Defaults and checks stay in the
    schema (:func:`headsync.tasks.validate`): a flag not given is a parameter not sent."""
    types = {int: int, float: float, str: str}
    for name, f in task.model.model_fields.items():
        cli = task.cli(name)
        shown = f"{f.description} (default {f.default})" if f.default is not None and f.annotation is not bool \
            and not f.is_required() else f.description
        kw: dict[str, Any] = {"help": shown, "dest": name, "default": None}
        base, choices = _flag_type(f.annotation)
        if cli.choices is not None:
            choices = cli.choices
        if cli.hidden:
            continue
        if cli.or_file:  # captured|generated|FILE: one flag, two parameters (see _params)
            kw["metavar"] = "|".join(choices or []) + "|FILE"
            choices = None
        if cli.metavar:
            kw["metavar"] = cli.metavar
        if base is bool:
            if cli.flag:
                sp.add_argument(cli.flag, action="store_false", **kw)
            else:
                sp.add_argument(f"--{name.replace('_', '-')}", action="store_true", **kw)
            continue
        kw["type"] = types[base]
        if choices is not None:  # not truthiness: a lazy container would import what it lists
            kw["choices"] = choices
        if cli.positional:
            kw.pop("dest")
            kw.pop("default")
            sp.add_argument(name, **kw)
            continue
        if cli.nargs:
            kw.update(nargs=cli.nargs, const=cli.const, metavar=name.upper())
        sp.add_argument(cli.flag or f"--{name.replace('_', '-')}", required=f.is_required(), **kw)


def _flag_type(ann: Any) -> tuple[type, list[str] | None]:
    """The flag's Python type (bool, int, float or str) and its choices (a Literal's values), through
    ``Optional`` and ``Annotated``."""
    if ann in (bool, int, float, str):
        return ann, None
    if get_origin(ann) is Literal:
        return str, [str(a) for a in get_args(ann)]
    for a in get_args(ann):  # Optional[X] / Annotated[X, ...]
        if a is not type(None):
            return _flag_type(a)
    return str, None


def _params(args: argparse.Namespace) -> dict[str, Any]:
    """The job parameters of a parsed subcommand (names as in its schema); flags not given are left out."""
    task = tasks.TASKS[args.command]
    raw = vars(args)
    out = {n: raw[n] for n in task.names if raw.get(n) is not None}
    for n in task.names:
        cli, values = task.cli(n), _flag_type(task.model.model_fields[n].annotation)[1]
        if cli.or_file and n in out and out[n] not in (values or []):  # a file, not a choice
            out[cli.or_file] = out.pop(n)
    return out


def _reporter(args: argparse.Namespace) -> Reporter:
    sink = json_lines_sink() if getattr(args, "json_progress", False) else terminal_sink()
    return Reporter(sink=sink)


def _demo(args: argparse.Namespace, reporter: Reporter) -> dict[str, Any]:
    from .core.package_data import sample_dir

    sample = sample_dir()
    videos = sorted(sample.glob("*.mp4"))
    if not videos or not (sample / "dub.wav").exists():
        raise UserError(f"the bundled sample is missing from {sample}",
                        "reinstall headsync, or in a checkout run `python sample_projects/make_sample.py`")
    out = Path(args.out).resolve()
    subject = out / "subject"
    result: dict[str, Any] = {}
    result["prepare"] = tasks.run("prepare", {"video": str(videos[0]), "subject": str(subject),
                                              "preset": args.preset}, reporter)
    from .core.config import load_preset
    from .subject.folder import Subject
    from .training.checkpoints import run_dir

    run = load_preset(args.preset).name  # the run is named after the preset (a path's file name)
    # A demo stopped during training picks up from its checkpoint when run again.
    resume = (run_dir(Subject(subject), run) / "checkpoint.pt").exists()
    train = {"subject": str(subject), "preset": args.preset, "run": run, "resume": resume}
    if args.renderer:  # else the preset's [renderer] default
        train["renderer"] = args.renderer
    result["train"] = tasks.run("train", train, reporter)
    result["render"] = tasks.run("render", {"subject": str(subject), "audio": str(sample / "dub.wav"),
                                            "run": run, "out": str(out / "render")}, reporter)
    return result


#: What is left after a cancelled command (Ctrl-C or SIGTERM), said as it is.
AFTER_CANCEL = {
    "prepare": "finished stages are kept and the next run resumes from them",
    "train": "the last checkpoint is kept: `headsync train --resume` continues from it",
    "render": "no frames were kept (a render is not resumable): run it again to render from the start",
    "demo": "finished stages and the last training checkpoint are kept; the next demo continues from them",
}


def _terminate(signum, frame) -> None:
    """SIGTERM as Ctrl-C, so temporary folders are removed on the way out instead of left behind."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    tasks.load_plugins()
    args = _parser().parse_args(argv)
    if args.command != "serve":  # the service handles its own signals
        signal.signal(signal.SIGTERM, _terminate)
    json_mode = getattr(args, "json_progress", False)
    try:
        if args.command == "serve":
            from .service.server import run

            return run(args)
        if args.command == "batch":
            from .service import batch

            return batch.main(args.shots, args.workspace, args.executor, args.ray_address, args.max_jobs)
        if args.command == "models":
            return _models(args)
        reporter = _reporter(args)
        if args.command == "demo":
            result = _demo(args, reporter)
        else:
            result = tasks.run(args.command, _params(args), reporter)
        if json_mode:
            print(json.dumps({"event": "done", "result": result}))
        elif args.command == "eval" and args.json:
            print(json.dumps(result, indent=1))
        else:
            _print_result(args.command, result)
        return 0
    except UserError as e:
        if json_mode:
            print(json.dumps({"event": "error", "message": e.message, "hint": e.hint}))
        else:
            print(f"error: {e.message}", file=sys.stderr)
            if e.hint:
                print(f"hint: {e.hint}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Cancelled):
        print(f"\ncancelled; {AFTER_CANCEL.get(args.command, 'nothing half-written was kept')}", file=sys.stderr)
        return 130
    except Exception as e:  # internal failure: show the traceback, it is a bug
        if json_mode:
            print(json.dumps({"event": "error", "message": f"internal error: {e!r}", "hint": "please report this"}))
        traceback.print_exc()
        return 1


def _print_result(command: str, result: dict[str, Any]) -> None:
    if command == "prepare":
        print(f"prepared subject: {result['subject']} ({result['frames']} frames)")
        for w in result.get("warnings", []):
            print(f"warning: {w}")
    elif command == "eval" and "metrics" in result:
        for k, v in result["metrics"].items():
            print(f"{k}: {v}")
        if result.get("weak_expressions"):
            print(f"weak expression coefficients (edits will barely show): {', '.join(result['weak_expressions'])}")
        for w in result.get("warnings", []):
            print(f"warning: {w}")
    elif command == "eval" and "verdict" in result:
        print(f"{result['video']}: {result['verdict']}")
    elif command == "demo":
        print("demo finished:")
        print(f"  subject:  {result['prepare']['subject']}")
        for k in ("train", "render"):
            for name, v in result.get(k, {}).items():
                if isinstance(v, (str, int, float)):
                    print(f"  {k}.{name}: {v}")
    else:
        for k, v in result.items():
            print(f"{k}: {v}")


def _models(args: argparse.Namespace) -> int:
    from .core import registry

    if args.models_command == "list":
        for m in registry.MODELS.values():
            where = registry.find(m.name)
            print(f"{m.name}: {'installed at ' + str(where) if where else 'not installed'}")
            digest = f"sha256 {m.sha256}" if m.sha256 else f"sha256 starts with {m.sha256_prefix} (no published full hash)"
            print(f"  file {m.filename}, {digest}, licence {m.licence}")
            print(f"  url  {m.url}")
            print(f"  used by: {m.used_by}")
            print(f"  without it: {m.default}")
        return 0
    dest = registry.install(args.name, args.from_file)
    print(f"installed {args.name} at {dest}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
