"""``itm search``: ranked photos of an index for a text query."""

from __future__ import annotations

import argparse
import json

from itm.commands import add_device_argument, add_normalise_argument

HELP = "search an index by text: the shortlist model's top candidates, re-ranked by the matcher"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", required=True, help="an index folder made by itm index")
    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--text", help="a text query: ranked photos")
    query.add_argument("--image", help="a photo: ranked captions of the collection given at index time")
    parser.add_argument("-k", type=int, default=10, help="results to show (default 10)")
    parser.add_argument("--rerank", type=int, default=50, help="shortlist size re-ranked exactly (0: none)")
    parser.add_argument("--no-concepts", dest="concepts", action="store_false",
                        help="rank by the models alone (default: a query word outside the training captions that "
                             "names ImageNet classes also ranks the photos by the backbone's evidence for them)")
    add_normalise_argument(parser)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    add_device_argument(parser)


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from itm.devices import resolve_device
    from itm.features.images import read_image_file
    from itm.retrieval.search import Searcher

    searcher = Searcher(args.index, device=resolve_device(args.device), normalise=args.normalise)
    for note in searcher.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.image:
        hits = searcher.search_image(read_image_file(args.image), Path(args.image).name, args.k, args.rerank)
        rows = [{"rank": n + 1, "caption_id": h.caption_id, "text": h.text, "score": round(h.score, 5),
                 "shortlist_score": round(h.shortlist_score, 5)} for n, h in enumerate(hits)]
        print(json.dumps(rows, indent=2) if args.json else
              "\n".join(f"{r['rank']:>3}  {r['score']:8.4f}  {r['text']}" for r in rows))
        return 0
    hits = searcher.search(args.text, args.k, args.rerank, concepts=args.concepts)
    notice = hits.notice()
    if notice:  # on stderr: the results on stdout stay machine-readable
        print(f"note: {notice}", file=sys.stderr)
    if args.json:
        print(json.dumps([{"rank": n + 1, "image_id": h.image_id, "path": h.path, "score": round(h.score, 5),
                           "shortlist_score": round(h.shortlist_score, 5), "paths": h.paths}
                          for n, h in enumerate(hits)], indent=2))
    else:
        for n, hit in enumerate(hits, start=1):
            print(f"{n:>3}  {hit.score:8.4f}  {hit.path}")
    return 0
