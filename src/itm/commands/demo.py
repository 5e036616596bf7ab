"""``itm demo``: the main job on the bundled Flickr8k subset (or any Karpathy-format folder)."""

from __future__ import annotations

import argparse

HELP = "extract features, train BSSAN, evaluate and write a report (bundled data by default)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="Karpathy-format dataset folder (default: the bundled Flickr8k subset)")
    parser.add_argument("--out", default="itm-demo", help="output folder (default: ./itm-demo)")
    parser.add_argument("--config", default=None, help="config name or file (default: the recommended CPU config)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from itm.demo import run_demo

    run_demo(args.data, args.out, args.config, args.overrides, progress=not args.no_progress)
    return 0
