"""The ``grata-segmenter`` command line.

This file only parses arguments, dispatches to the modules that do the work
(:mod:`.segment` for ``adapt``, :mod:`.demo` for ``demo``), and turns the way a
run ends into an exit status, one message on stderr and, with ``--events``,
an ``error`` event: 0 success, 2 a user error (:class:`GraTaError`: bad input,
option, model file, existing output, full disk, out of memory), 130 cancelled
(SIGINT/SIGTERM), 1 an internal error (a bug).
"""

from __future__ import annotations

import argparse
from pathlib import Path
import contextlib
import os
import re
import sys
import time
import traceback

from . import __version__, choices
from .choices import DEVICES, LOSSES, METHODS, MODES, PRECISIONS
from .errors import GraTaError, OutOfMemory

EXIT_USER_ERROR = 2
EXIT_CANCELLED = 130
EXIT_INTERNAL = 1


class UsageError(GraTaError):
    """The command line itself is wrong (unknown option, missing argument)."""


class _Parser(argparse.ArgumentParser):
    """Errors as UsageError (one message, an error event); no abbreviations: ``--ev`` is
    not taken for ``--events`` (the event stream must be asked for by its name)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # noqa: D401 - argparse API
        raise UsageError(f"{message} (see {self.prog} --help)")


def _cmd_info(args: argparse.Namespace, emit) -> int:
    from .adaptation.norm import adaptation_summary
    from .models import card_summary, default_model_path, file_sha256, load_model
    from .models.monai_bundle import WEIGHTS, bundle_summary, is_monai_bundle, load_bundle
    from .models.nnunet import is_nnunet_folder, load_nnunet, nnunet_summary

    path = Path(args.model) if args.model else default_model_path()
    if is_monai_bundle(path):
        bundle = load_bundle(path)
        print(card_summary(bundle.card))
        print(bundle_summary(bundle))
        print(f"adapts: {adaptation_summary(bundle.network)}")
        print(f"weights: {path / WEIGHTS} sha256 {file_sha256(path / WEIGHTS)}")
        return 0
    if is_nnunet_folder(path):
        folder = load_nnunet(path)
        print(card_summary(folder.card))
        print(nnunet_summary(folder))
        print(f"adapts: {adaptation_summary(folder.network)}")
        for fold in folder.folds:
            checkpoint = folder.folder / f"fold_{fold}" / folder.checkpoint
            print(f"fold {fold}: {checkpoint} sha256 {file_sha256(checkpoint)}")
        return 0
    model = load_model(path)
    print(card_summary(model.card))
    print(f"adapts: {adaptation_summary(model)}")
    print(f"file: {path}")
    print(f"sha256: {file_sha256(path)}")
    return 0


def _options(args: argparse.Namespace):
    from .segment import Options

    return Options(model=args.model, method=args.method, steps=args.steps, lr=args.lr, aux_loss=args.aux_loss,
                   pseudo_loss=args.pseudo_loss, mode=args.mode, device=args.device, seed=args.seed,
                   precision=args.precision, save_state=args.save_state, load_state=args.load_state,
                   overwrite=args.overwrite, probabilities=args.probabilities, uncertainty=args.uncertainty,
                   batch_size=args.batch_size, postprocess=not args.no_postprocess,
                   skip_existing=args.skip_existing)


def _load_engine(args: argparse.Namespace) -> None:
    """Import torch and the engine in a helper thread while the main thread waits: a signal
    handled in the middle of torch's import would break it (and the interpreter), and held back
    until the import is done (seconds on a busy machine) it would come after the Slicer panel's
    SIGKILL. Waiting instead, the main thread cancels at once; nothing has been written yet,
    and the command line's exit ends the helper."""
    import importlib

    from .cancel import interruptible

    interruptible(importlib.import_module, ".segment", __package__)
    _use_threads(args)  # here: OpenMP's thread count is a setting of the calling thread


def _cmd_adapt(args: argparse.Namespace, emit) -> int:
    from .cancel import finish

    _load_engine(args)
    from .segment import Segmenter

    start = time.perf_counter()
    segmenter = Segmenter(_options(args), emit=emit, progress=not args.events)
    args._segmenter = segmenter
    results = segmenter.run(args.inputs, args.output)
    finish()  # every result is in place: a signal from now on changes nothing
    emit("done", outputs=len(results), seconds=round(time.perf_counter() - start, 3))
    if not args.events:
        for paths in results:
            print(os.path.dirname(paths["labelmap"]))
    return 0


def _cmd_demo(args: argparse.Namespace, emit) -> int:
    _load_engine(args)
    from .demo import run_demo

    run_demo(output=args.output, samples=args.samples, model=args.model, steps=args.steps, device=args.device,
             overwrite=args.overwrite, seed=args.seed)
    return 0


def _add_adapt(sub) -> None:
    p = sub.add_parser("adapt", help="adapt the model to images and segment them",
                       description="Adapt a segmentation model to target images without labels (GraTa or a "
                                   "baseline) and segment them; one result folder per input in OUTDIR.")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="2D image (PNG, JPEG, TIFF, BMP), volume (NRRD, NIfTI, MHA/MHD) or DICOM series folder")
    p.add_argument("-o", "--output", required=True, type=_folder, metavar="OUTDIR", help="folder for the results")
    p.add_argument("--model", help="model file, an nnU-Net v2 model folder (or one of its fold_N folders) or a "
                   "MONAI bundle folder; default: the bundled fundus model")
    p.add_argument("--method", default=choices.DEFAULT_METHOD, choices=METHODS,
                   help="adaptation method (default %(default)s; none = the source model as trained)")
    p.add_argument("--steps", type=int, default=choices.DEFAULT_STEPS,
                   help="adaptation steps per input (default %(default)s)")
    p.add_argument("--lr", type=float, default=choices.DEFAULT_LR, help="base learning rate (default %(default)g)")
    p.add_argument("--aux-loss", default=choices.DEFAULT_AUX_LOSS, choices=LOSSES,
                   help="GraTa auxiliary loss (default %(default)s)")
    p.add_argument("--pseudo-loss", default=choices.DEFAULT_PSEUDO_LOSS, choices=LOSSES,
                   help="GraTa pseudo loss (default %(default)s)")
    p.add_argument("--mode", default=choices.DEFAULT_MODE, choices=MODES,
                   help="episodic: every input starts from the source model; continual: the adapted model "
                        "carries over from one input to the next, in the given order (default %(default)s)")
    p.add_argument("--device", default=choices.DEFAULT_DEVICE, choices=DEVICES,
                   help="auto: cuda if available, else mps, else cpu")
    p.add_argument("--seed", type=_seed, default=choices.DEFAULT_SEED, help="random seed (default %(default)s)")
    _add_threads(p)
    p.add_argument("--precision", default=choices.DEFAULT_PRECISION, choices=PRECISIONS)
    p.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help="slices per batch for a 2D model on a volume (default: from the image size)")
    p.add_argument("--save-state", metavar="FILE", help="save the adapted state after the last input")
    p.add_argument("--load-state", metavar="FILE", help="start from a saved adapted state")
    p.add_argument("--probabilities", action="store_true", help="also write the class probabilities")
    p.add_argument("--uncertainty", action="store_true", help="also write the per-pixel uncertainty (entropy)")
    p.add_argument("--no-postprocess", action="store_true",
                   help="keep the network's masks as they are, without the model card's anatomical rules "
                        "(e.g. one disc, the cup inside it, no holes)")
    p.add_argument("--overwrite", action="store_true", help="replace existing results in OUTDIR")
    p.add_argument("--skip-existing", action="store_true",
                   help="skip inputs whose result folder in OUTDIR is complete (to go on after a stop)")
    p.add_argument("--events", action="store_true",
                   help="JSON lines on stdout instead of progress bars (docs/events.md)")
    p.set_defaults(func=_cmd_adapt)


def _add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=_thread_count, default=None, metavar="N",
                   help="CPU threads for torch (default: one per core). On a machine shared with other busy "
                        "programs, fewer threads can be much faster: idle threads spin against the others")


MAX_SEED = 2**32 - 1  # what numpy's and torch's generators take without overflow
MAX_THREADS = 256  # more threads than this only fail to start ("libgomp: Thread creation failed")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _thread_count(text: str) -> int:
    value = _positive_int(text)
    if value > MAX_THREADS:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_THREADS}, not {value} (this machine has "
                                         f"{os.cpu_count()} cores)")
    return value


def _folder(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty; name the folder for the results")
    return text


def _seed(text: str) -> int:
    value = int(text)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be a whole number from 0 to {MAX_SEED}, not {value}")
    return value


def _use_threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="run the bundled model on the bundled samples, before and after adaptation")
    p.add_argument("-o", "--output", default="grata-demo", metavar="OUTDIR",
                   help="folder for the results (default ./grata-demo)")
    p.add_argument("--samples", help="samples folder (default: the bundled samples)")
    p.add_argument("--model", help="model file (default: the bundled model)")
    p.add_argument("--steps", type=int, default=choices.DEFAULT_STEPS,
                   help="adaptation steps per sample (default %(default)s)")
    p.add_argument("--device", default=choices.DEFAULT_DEVICE, choices=DEVICES)
    p.add_argument("--seed", type=_seed, default=choices.DEFAULT_SEED)
    _add_threads(p)
    p.add_argument("--overwrite", action="store_true", help="replace existing results in OUTDIR")
    p.set_defaults(func=_cmd_demo, events=False)


def _web(options: list[str]) -> int:
    """Hand over to the web front-end in a process of its own: the engine never imports
    trame or slicer, and the server's process holds neither torch nor the engine."""
    import importlib.util
    import subprocess

    for needed in ("GraTaSegmenterWeb", "trame_slicer"):
        if importlib.util.find_spec(needed) is None:
            raise UsageError(f"the web page needs {needed}, which is not installed; install the 'web' extra "
                             f"(pip install -e '.[web]' in the source folder, or `make web`)")
    command = [sys.executable, "-m", "GraTaSegmenterWeb", *options]
    sys.stdout.flush()
    sys.stderr.flush()
    if os.name == "posix":
        os.execv(sys.executable, command)  # signals (Ctrl-C, SIGTERM) reach the server itself
    return subprocess.call(command)


def _add_web(sub) -> None:
    # Listed for --help only: main() hands `web ...` over before parsing, and the options
    # are the server's own (GraTaSegmenterWeb.server, one definition).
    sub.add_parser("web", help="serve the page: open, adapt, watch, correct and save in a browser "
                               "(grata-segmenter web --help for its options)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="grata-segmenter",
                     description="Adapt segmentation networks to new images at test time (GraTa) and segment them.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    info = sub.add_parser("info", help="show what a model is (a model file, an nnU-Net model folder or a MONAI "
                                             "bundle)")
    info.add_argument("model", nargs="?", help="model file, nnU-Net model folder or MONAI bundle folder (default: the "
                                              "bundled model)")
    info.set_defaults(func=_cmd_info, events=False)
    _add_adapt(sub)
    _add_demo(sub)
    _add_web(sub)
    return parser


_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def _message(exc: BaseException) -> str:
    """One line of plain text: no line breaks, no terminal colour codes (some libraries colour
    their messages; the events and the Slicer panel would show the escapes)."""
    text = " ".join(_ANSI.sub("", str(exc)).split()) or type(exc).__name__
    if isinstance(exc, OutOfMemory) and "smaller batch" in text and "--batch-size" not in text:
        hinted = text.replace("a smaller batch (", "a smaller batch (--batch-size N, ")
        text = hinted if hinted != text else text.rstrip(".") + " (options --batch-size N, --device cpu)."
    return text


def main(argv: list[str] | None = None) -> int:
    program = argv is None  # run as the program (not called from Python)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["web"]:
        try:
            return _web(argv[1:])
        except UsageError as exc:
            print(f"grata-segmenter: error: {exc}", file=sys.stderr)
            return EXIT_USER_ERROR
    # Run as the program, signals are ignored from the end of _main's cancel block on: a late
    # Ctrl+C prints no traceback and a late SIGTERM cannot kill a run that has written `done`.
    status = _main(argv, program)
    if program:
        # Everything is on disk and reported (results committed, or staged outputs removed,
        # and the last event written). Skip the interpreter's teardown, a second with torch
        # loaded: the Slicer panel and the web page wait for the exit to import the results,
        # and a Cancel right after `done` would otherwise meet the panel's SIGKILL at 1 s. It
        # also ends a writer thread that a cancel left inside a long write (cancel.interruptible).
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a reader that went away: nothing more to tell it
                pass
        os._exit(status)
    return status


def _main(argv: list[str], program: bool = False) -> int:
    from .cancel import Cancelled, cancel_on_signals
    from .errors import is_out_of_memory, oom_advice
    from .events import EventWriter, no_events

    real_stdout = sys.stdout
    emit = no_events
    args = None
    try:
        with cancel_on_signals(then_ignore=program):
            try:
                args = build_parser().parse_args(argv)
                if args.events:
                    emit = EventWriter(real_stdout)
                # With --events stdout carries events only: anything else printed goes to stderr.
                redirect = contextlib.redirect_stdout(sys.stderr) if args.events else contextlib.nullcontext()
                with redirect:
                    return args.func(args, emit)
            except Exception as exc:  # noqa: BLE001 - translated below, outside the signal handlers
                if is_out_of_memory(exc) and not isinstance(exc, GraTaError):
                    device = getattr(getattr(args, "_segmenter", None), "device", None)
                    raise OutOfMemory(f"{oom_advice(getattr(device, 'type', 'cpu'), 'segmenting')} "
                                      f"({_message(exc)})") from None
                raise
    except SystemExit as exc:  # --help, --version
        return int(exc.code or 0)
    except BrokenPipeError:
        # The reader of stdout went away (e.g. `| head`, or the Slicer module closed the pipe):
        # stop quietly; staged outputs were removed on the way out.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        print("grata-segmenter: error: the output pipe was closed; stopped", file=sys.stderr)
        return EXIT_CANCELLED
    except (Cancelled, KeyboardInterrupt) as exc:
        code, kind = EXIT_CANCELLED, "Cancelled"
        text = str(exc) if isinstance(exc, Cancelled) else "cancelled; no output was kept for the unfinished input"
    except GraTaError as exc:
        code, kind, text = EXIT_USER_ERROR, type(exc).__name__, _message(exc)
        if isinstance(exc, UsageError) and "--events" in argv and emit is no_events:
            emit = EventWriter(real_stdout)
    except Exception as exc:  # noqa: BLE001 - a bug: say so, keep the traceback optional
        code, kind = EXIT_INTERNAL, type(exc).__name__
        text = (f"internal error ({type(exc).__name__}: {_message(exc)}); please report it with the command "
                f"line (set GRATA_SEGMENTER_DEBUG=1 for the traceback)")
        if os.environ.get("GRATA_SEGMENTER_DEBUG"):
            traceback.print_exc()
    segmenter = getattr(args, "_segmenter", None)
    current = getattr(segmenter, "current_input", None)
    summary = segmenter.summary() if segmenter is not None else None
    if summary:
        print(f"grata-segmenter: {summary}", file=sys.stderr)
    print(f"grata-segmenter: error: {text}", file=sys.stderr)
    emit("error", message=text, kind=kind, input=current)
    return code


if __name__ == "__main__":
    sys.exit(main())
