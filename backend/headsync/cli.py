"""The ``headsync`` command. Each subcommand maps its flags onto a job (``tasks``), so the terminal and
the local service run the same code. Exit codes: 0 success, 2 bad input (with a hint), 1 internal failure.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path
from typing import Any

from . import __version__, tasks
from .core.errors import Cancelled, UserError
from .core.progress import Reporter, json_lines_sink, terminal_sink
from .renderers.registry import DEFAULT_RENDERER, RENDERERS

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "sample_projects" / "astronaut"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="headsync", description="Audio-driven talking heads for dubbing in Blender.")
    p.add_argument("--version", action="version", version=f"headsync {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--json-progress", action="store_true", help="print one JSON object per line")
        return sp

    sp = common(sub.add_parser("prepare", help="video (+ audio) -> prepared subject folder"))
    sp.add_argument("video")
    sp.add_argument("--audio")
    sp.add_argument("--subject", required=True)
    sp.add_argument("--preset", default="standard")
    sp.add_argument("--fps", type=float)
    sp.add_argument("--resolution", type=int)

    sp = common(sub.add_parser("train", help="train the talking head of a prepared subject"))
    sp.add_argument("--subject", required=True)
    sp.add_argument("--preset", default="standard")
    sp.add_argument("--renderer", choices=RENDERERS,
                    help=f"a registered renderer (default: the preset's [renderer] default, else {DEFAULT_RENDERER})")
    sp.add_argument("--run", default="default")
    sp.add_argument("--resume", action="store_true")

    sp = common(sub.add_parser("render", help="render new dialogue with a trained subject"))
    sp.add_argument("--subject", required=True)
    sp.add_argument("--audio", required=True)
    sp.add_argument("--run", default="default")
    sp.add_argument("--curves")
    sp.add_argument("--out")
    sp.add_argument("--no-portrait", action="store_true", help="write the raw head crops, not the composited plate")
    sp.add_argument("--expressions", default="captured", metavar="captured|generated|FILE",
                    help="expression source: captured, generated from the audio, or a curves.json / Live Link CSV")

    sp = common(sub.add_parser("express", help="expression curves for new audio (or a Live Link Face take)"))
    sp.add_argument("--subject", required=True)
    sp.add_argument("--audio", help="dialogue to generate expressions for")
    sp.add_argument("--livelink", metavar="CSV", help="import a Live Link Face take instead of generating")
    sp.add_argument("--out", help="curves.json to write")
    sp.add_argument("--seed", type=int, help="draw of the stochastic blinks")
    sp.add_argument("--livelink-fps", dest="livelink_fps", type=float, help="the take's capture rate")
    sp.add_argument("--retrain", action="store_true", help="train the subject's expression models again")

    sp = common(sub.add_parser("eval", help="held-out metrics of a trained model"))
    sp.add_argument("--subject", required=True)
    sp.add_argument("--run", default="default")
    sp.add_argument("--json", action="store_true", help="print the metrics as JSON")
    sp.add_argument("--sync", nargs="?", const="latest", metavar="VIDEO",
                    help="judge lip sync of VIDEO (default: the newest render) with the subject's discriminator")
    sp.add_argument("--audio", help="with --sync: judge against this sound instead of the video's own")

    sp = common(sub.add_parser("demo", help="the whole pipeline on the bundled sample"))
    sp.add_argument("--out", default=str(REPO / "out" / "demo"))
    sp.add_argument("--preset", default="preview")
    sp.add_argument("--renderer", choices=RENDERERS,
                    help=f"a registered renderer (default: the preset's [renderer] default, else {DEFAULT_RENDERER})")

    sp = sub.add_parser("serve", help="the local service the Blender add-on talks to")
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=int, default=0)
    sp.add_argument("--workspace", default=str(Path.home() / "HeadSync"))

    sp = sub.add_parser("models", help="optional pretrained models")
    msub = sp.add_subparsers(dest="models_command", required=True)
    msub.add_parser("list")
    mi = msub.add_parser("install")
    mi.add_argument("name")
    mi.add_argument("--from", dest="from_file")
    return p


def _params(args: argparse.Namespace) -> dict[str, Any]:
    """The job parameters of a parsed subcommand (names as in ``tasks.TASKS``)."""
    spec = tasks.TASKS[args.command].params
    raw = vars(args)
    out = {p.name: raw[p.name] for p in spec if p.name in raw and raw[p.name] is not None}
    if args.command == "render":
        out["portrait"] = not args.no_portrait
        if args.expressions not in ("captured", "generated"):  # a file: curves.json or Live Link CSV
            out["expressions_file"] = out.pop("expressions")
    return out


def _reporter(args: argparse.Namespace) -> Reporter:
    sink = json_lines_sink() if getattr(args, "json_progress", False) else terminal_sink()
    return Reporter(sink=sink)


def _demo(args: argparse.Namespace, reporter: Reporter) -> dict[str, Any]:
    videos = sorted(SAMPLE.glob("*.mp4"))
    if not videos or not (SAMPLE / "dub.wav").exists():
        raise UserError(f"the bundled sample is missing from {SAMPLE}",
                        "run `python sample_projects/make_sample.py` or restore the folder from git")
    out = Path(args.out).resolve()
    subject = out / "subject"
    result: dict[str, Any] = {}
    result["prepare"] = tasks.run("prepare", {"video": str(videos[0]), "subject": str(subject),
                                              "preset": args.preset}, reporter)
    from .subject.folder import Subject
    from .training.checkpoints import run_dir

    # A demo stopped during training picks up from its checkpoint when run again.
    resume = (run_dir(Subject(subject), args.preset) / "checkpoint.pt").exists()
    train = {"subject": str(subject), "preset": args.preset, "run": args.preset, "resume": resume}
    if args.renderer:
        train["renderer"] = args.renderer
    result["train"] = tasks.run("train", train, reporter)
    result["render"] = tasks.run("render", {"subject": str(subject), "audio": str(SAMPLE / "dub.wav"),
                                            "run": args.preset, "out": str(out / "render")}, reporter)
    return result


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    json_mode = getattr(args, "json_progress", False)
    try:
        if args.command == "serve":
            from .service.server import serve

            serve(args.host, args.port, Path(args.workspace))
            return 0
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
        print("\ncancelled; finished stages are kept and the next run resumes from them", file=sys.stderr)
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
