"""``grata-segmenter web``: serve the page, say where, stop cleanly.

The page has no login: it binds to 127.0.0.1 unless told otherwise, and says
so loudly when it is told otherwise. Ctrl-C (SIGINT) or SIGTERM stops the
server; a run still going is cancelled (its whole process tree ended) and the
session's temporary files are removed before the process exits.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="grata-segmenter web",
                                     description="Serve GraTa Segmenter as a web page (Slicer's views and segment "
                                                 "editor in the browser).")
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options, shared with the engine's ``grata-segmenter web`` (which hands them over)."""
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (default %(default)s; 0: any free)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default %(default)s: this machine only; the page has no login)")
    parser.add_argument("--data", metavar="DIR",
                        help="folder whose images the page may open and into which it saves")


def check_arguments(args: argparse.Namespace) -> str | None:
    """What is wrong with the options (one message), or None."""
    if not 0 <= args.port <= 65535:
        return f"--port must be from 0 to 65535, not {args.port}"
    if args.data is not None and not Path(args.data).is_dir():
        return f"--data {args.data}: no such folder; give an existing folder"
    return None


def host_warning(host: str) -> str | None:
    """What a user binding beyond this machine must know, or None for a local address."""
    if host in LOCAL_HOSTS:
        return None
    return (f"listening on {host}: anyone who can reach this address can open the page, read the images of "
            f"--data and write into it (the page has no login). Put it behind an authenticating proxy, or keep "
            f"--host 127.0.0.1 and reach it through an SSH tunnel.")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problem = check_arguments(args)
    if problem:
        print(f"grata-segmenter web: error: {problem}", file=sys.stderr)
        return 2
    warning = host_warning(args.host)
    if warning:
        print(f"grata-segmenter web: warning: {warning}", file=sys.stderr)

    from .rendering import choose_offscreen_backend

    choose_offscreen_backend()
    from trame.app import get_server

    from .page import GraTaPage

    server = get_server("grata-segmenter", client_type="vue3")
    page = GraTaPage(server, data_dir=args.data)

    def announce(**_):
        port = server.port
        shown = f"[{args.host}]" if ":" in args.host else args.host
        print(f"GraTa Segmenter is at http://{shown}:{port}/ (Ctrl-C stops it)", flush=True)

    server.controller.on_server_ready.add(announce)
    def stop(*_):
        raise KeyboardInterrupt  # SIGTERM stops as Ctrl-C does

    signal.signal(signal.SIGTERM, stop)
    try:
        server.start(host=args.host, port=args.port, open_browser=False, show_connection_info=False,
                     disable_logging=True)
    except KeyboardInterrupt:
        pass
    finally:
        page.close()
        print("GraTa Segmenter stopped.", flush=True)
    return 0
