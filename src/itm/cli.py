"""The ``itm`` command line: parses arguments and calls the library (``main(argv)`` for tests)."""

from __future__ import annotations

import argparse
import importlib
import sys

from itm.errors import ItmError

# subcommand -> module in itm.commands exposing HELP, add_arguments(parser) and run(args) -> int
COMMANDS = {
    "models": "itm.commands.models",
    "features": "itm.commands.features",
    "train": "itm.commands.train",
    "eval": "itm.commands.eval",
    "explain": "itm.commands.explain",
    "pointing-game": "itm.commands.pointing",
    "index": "itm.commands.index",
    "search": "itm.commands.search",
    "serve": "itm.commands.serve",
    "demo": "itm.commands.demo",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="itm", description="Image-text matching with cross-attention matchers (BSSAN, CAAN, MLASM) and search.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)  # command modules import heavy libraries lazily
        command = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 0
    try:
        return int(args.run(args) or 0)
    except ItmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
