"""One module per ``itm`` subcommand: HELP, add_arguments(parser), run(args) -> exit status."""

from __future__ import annotations

import argparse


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """``--device``, resolved in the command's ``run`` by ``itm.devices.resolve_device`` (torch is
    imported lazily, so parsing stays cheap)."""
    parser.add_argument("--device", default=None, metavar="DEVICE",
                        help="cpu | cuda | cuda:N (default: cuda when available, else cpu; "
                             "under torchrun each process uses cuda:LOCAL_RANK)")
