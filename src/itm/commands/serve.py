"""``itm serve``: the search service and its web page over an index."""

from __future__ import annotations

import argparse
import ipaddress
import sys

from itm.commands import (
    SERVE_THREADS,
    add_device_argument,
    add_normalise_argument,
    add_threads_argument,
    set_threads,
)

HELP = "serve an index over HTTP: POST /search, GET /images/{id}, /thumbnails/{id}, /explain, and a web page at /"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", required=True, help="an index folder made by itm index")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--allow-remote", action="store_true", help="required to bind a non-loopback --host")
    add_normalise_argument(parser)
    add_threads_argument(parser, SERVE_THREADS, "each query's scoring")
    add_device_argument(parser)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    from itm.devices import resolve_device
    from itm.errors import ItmError

    device = resolve_device(args.device)  # a bad --device fails before anything is bound
    set_threads(args.threads)
    if not is_loopback(args.host):
        if not args.allow_remote:
            raise ItmError(f"--host {args.host} is reachable from other machines: add --allow-remote to mean it")
        print(f"warning: serving on {args.host}: anyone who can reach this machine can search and view the photos",
              file=sys.stderr)
    import uvicorn

    from itm.retrieval.search import Searcher
    from itm.service.app import create_app

    searcher = Searcher(args.index, device=device, normalise=args.normalise)
    for note in searcher.notes:
        print(f"note: {note}", file=sys.stderr)
    app = create_app(searcher)
    print(f"serving {args.index} at http://{args.host}:{args.port}/", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
