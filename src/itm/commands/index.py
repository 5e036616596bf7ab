"""``itm index``: index a folder of photos for search (incremental: run it again after changes)."""

from __future__ import annotations

import argparse

from itm.commands import INDEX_THREADS, add_device_argument, add_threads_argument, set_threads

HELP = "index a folder of photos (JPEG/PNG/WebP, recursively); a re-run adds, updates and drops files"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", required=True, help="the photo folder")
    parser.add_argument("--out", required=True, help="the index folder (created; reused by later runs)")
    parser.add_argument("--shortlist", help="checkpoint of an indexable model, e.g. a dual encoder run "
                        "(default: the shipped dual encoder)")
    parser.add_argument("--checkpoint", nargs="+", help="checkpoint of the cross-attention matcher that re-ranks the "
                        "shortlist, or several: an ensemble, their scores z-scored and averaged (default: the shipped BSSAN)")
    parser.add_argument("--no-rerank", action="store_true", help="shortlist only: no cross-attention re-ranker")
    parser.add_argument("--captions", help="a caption collection to search by image: one caption a line (UTF-8)")
    parser.add_argument("--no-progress", action="store_true")
    add_threads_argument(parser, INDEX_THREADS, "extraction and the banks' scoring")
    add_device_argument(parser)


def run(args: argparse.Namespace) -> int:
    from itm.devices import resolve_device
    from itm.retrieval.index import APPROXIMATE_ABOVE, IndexStore, index_captions, update_index
    from itm.retrieval.search import Searcher
    from itm.retrieval.search_models import SearchModels
    from itm.shipped import search_checkpoints

    device = resolve_device(args.device)  # a bad --device is named before anything else
    set_threads(args.threads)
    models = SearchModels(*search_checkpoints(args.shortlist, args.checkpoint, rerank=not args.no_rerank),
                          device=device)
    store = IndexStore(args.out)
    report = update_index(store, args.images, models, progress=not args.no_progress)
    for path, reason in report.skipped:
        print(f"skipped {path}: {reason}")
    print(report.summary())
    if len(store.images()) > APPROXIMATE_ABOVE:  # the approximate graph built (and kept) now, not at the first search
        Searcher(args.out, models)
    if args.captions:
        print(f"{index_captions(store, args.captions, models)} captions indexed for search by image")
    return 0
