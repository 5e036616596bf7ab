"""One module per ``itm`` subcommand: HELP, add_arguments(parser), run(args) -> exit status."""

from __future__ import annotations

import argparse


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """``--device``, resolved in the command's ``run`` by ``itm.devices.resolve_device`` (torch is
    imported lazily, so parsing stays cheap)."""
    parser.add_argument("--device", default=None, metavar="DEVICE",
                        help="cpu | cuda | cuda:N (default: cuda when available, else cpu; "
                             "under torchrun each process uses cuda:LOCAL_RANK)")


# torch threads of the commands that share a machine with others (docs/results/speed.md, "A busy machine"):
# on 2 cores, a 2-thread service beside a 2-thread index job answered 4.2x slower than alone (p95 20x, the
# thread pools spinning against each other); one thread each kept it at 0.97x, a query alone 6% slower
# than at two threads, and the index job extracted fastest (0.27 s a photo against 0.34)
INDEX_THREADS = 1
SERVE_THREADS = 1


def add_threads_argument(parser: argparse.ArgumentParser, default: int, role: str) -> None:
    """``--threads``: torch's threads for this command (``set_threads`` applies it in ``run``)."""
    parser.add_argument("--threads", type=int, default=default, metavar="N",
                        help=f"torch threads (default {default}: {role}; docs/results/speed.md, 'A busy machine')")


def set_threads(threads: int) -> None:
    """Apply ``--threads`` (at least 1, else a one-line error)."""
    from itm.errors import ItmError

    if threads < 1:
        raise ItmError(f"--threads: must be at least 1, got {threads}")
    import torch

    torch.set_num_threads(threads)


def add_scoring_set_argument(parser: argparse.ArgumentParser) -> None:
    """``--set KEY=VALUE`` for commands that load a trained checkpoint: switches that leave the weights'
    shapes alone (``itm.checkpoint.load_checkpoint``)."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="change a scoring switch of the saved config, e.g. --set model.global_context=pairwise, "
                             "or --set features.image_size=416 (a finer region grid at test time)")


def add_normalise_argument(parser: argparse.ArgumentParser) -> None:
    """``--normalise``: search's hub-photo correction (``itm.evaluation.hubness``), on by default."""
    from itm.evaluation.hubness import SEARCH_DEFAULT, SEARCH_METHODS

    parser.add_argument("--normalise", choices=list(SEARCH_METHODS), default=SEARCH_DEFAULT,
                        help=f"correct the re-rankers' scores for hub photos by each photo's scores against its own "
                             f"nearest captions (default {SEARCH_DEFAULT}; none: raw scores; docs/search.md)")
