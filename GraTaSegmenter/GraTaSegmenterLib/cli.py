"""The ``grata-segmenter`` command line.

Subcommands are added by the modules that implement them; this file only
parses arguments, dispatches, and turns user errors (:class:`GraTaError`) into
one message on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .errors import GraTaError


def _cmd_info(args: argparse.Namespace) -> int:
    from .models import card_summary, default_model_path, file_sha256, load_model

    path = args.model or default_model_path()
    model = load_model(path)
    print(card_summary(model.card))
    print(f"file: {path}")
    print(f"sha256: {file_sha256(path)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="grata-segmenter", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="show a model file's card")
    info.add_argument("model", nargs="?", help="model file (default: the bundled model)")
    info.set_defaults(func=_cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except GraTaError as exc:
        print(f"grata-segmenter: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
