"""Search over a whole photo library through the product path, with and without the hub correction.

    python benchmarks/library_search.py --data ../shared/data/flickr8k --index runs/flickr8k-library \\
        [--split test] [--queries 5000] [--json results/flickr8k/library_search.json]
    python benchmarks/library_search.py --data ../shared/data/coco_boxes_dev --index runs/coco-library \\
        --split test --json results/coco_boxes_dev/library_search.json

Every photo of the dataset (all splits: Flickr8k's 8,000) is indexed as a user indexes a folder
(``itm.retrieval.index.update_index`` with the shipped models: the dual-encoder shortlist, the
BSSAN + CAAN + MLASM re-rankers, and each photo's scores against its own caption bank), then each caption of
``--split`` is searched as a user searches (``Searcher.search``: shortlist, exact re-rank of the top
50, concept evidence for new words) once with the default correction and once with ``--normalise
none``. Reported for each: text -> photo R@1/5/10 (the caption's own photo within the top 10; beyond
it counts as a miss), the hubness of the top-10 lists over the whole library (N10 skewness, the
largest share of queries one photo is the top hit of, the photos in no top 10) and the query
latency (median, p95; one process, the state cache warming as queries run); and the correction's
R@1 change with a 95% interval from a bootstrap over photos.

The index-time cost of the bank, per photo, is measured on ``--cost-photos`` photos extracted again
into a fresh cache: extraction, the shortlist vector, and the own-bank scores of all re-rankers
(the caption pool's encoding, once per indexing run, reported apart).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from _report import report

from itm.data.load import load_dataset
from itm.evaluation.hubness import SEARCH_DEFAULT, hubness_from_lists
from itm.evaluation.vocabulary import r1_gain_interval
from itm.retrieval.index import IndexStore, update_index
from itm.retrieval.search import Searcher
from itm.retrieval.search_models import BANK_NEIGHBOURS, SearchModels
from itm.shipped import search_checkpoints


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--index", required=True, help="the library's index folder (made or updated here)")
    parser.add_argument("--split", default="test", help="whose captions are the queries")
    parser.add_argument("--shortlist", help="the shortlist checkpoint (default: the shipped one)")
    parser.add_argument("--checkpoint", nargs="+", help="the re-rankers (default: the shipped ensemble)")
    parser.add_argument("--queries", type=int, default=None, help="the first N captions only")
    parser.add_argument("--cost-photos", type=int, default=64, help="photos the index-time cost is measured on")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    dataset = load_dataset(args.data)
    models = SearchModels(*search_checkpoints(args.shortlist, args.checkpoint))
    index = Path(args.index)
    started = time.perf_counter()
    indexed = update_index(IndexStore(index / "index"), library_folder(index / "photos", dataset), models,
                           progress=False)
    result = {"data": args.data, "split": args.split, "photos": indexed.images, "bank_neighbours": BANK_NEIGHBOURS,
              "index_seconds": round(time.perf_counter() - started, 1), "index_added": indexed.added,
              "index_cost_per_photo": index_cost(models, dataset, args.cost_photos)}
    queries = [(" ".join(tokens), record.filename) for record in dataset.split(args.split).images
               for tokens in record.tokens][: args.queries]
    ranks = {}
    for method in (SEARCH_DEFAULT, "none"):
        result[method], ranks[method], owners = searched(Searcher(index / "index", models, normalise=method), queries)
    # the correction's R@1 change, with a 95% interval from a bootstrap over photos (a photo's captions together)
    result["r1_change"] = round(float(100 * ((ranks[SEARCH_DEFAULT] < 1).mean() - (ranks["none"] < 1).mean())), 2)
    result["r1_change_interval"] = [round(x, 2) for x in r1_gain_interval(ranks["none"], ranks[SEARCH_DEFAULT], owners,
                                                                          np.ones(len(owners), dtype=bool))]
    return report(result, args.json)


def library_folder(folder: Path, dataset) -> Path:
    """Links to every photo of the dataset, as a user's folder of them (made once)."""
    for record in dataset.images:
        link = folder / record.filename
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(Path(record.path).resolve())
    return folder


def searched(searcher: Searcher, queries: list[tuple[str, str]], k: int = 10) -> tuple[dict, np.ndarray, np.ndarray]:
    """R@1/5/10, hubness of the top-k lists and latency of ``queries`` (text, the file of its photo);
    and each query's 0-based rank of its photo (k: not in the top k) and its photo's id."""
    id_of_path = {path: image_id for sha1, (image_id, _) in searcher.images.items() for path in searcher.paths[sha1]}
    position = {image_id: n for n, image_id in enumerate(sorted(id_of_path.values()))}
    ranks, lists, millis = [], [], []
    searcher.search(queries[0][0], k=k)  # warm-up: models and the feature cache's table of contents
    for text, filename in queries:
        t0 = time.perf_counter()
        hits = searcher.search(text, k=k)
        millis.append(1000 * (time.perf_counter() - t0))
        found = [hit.image_id for hit in hits]
        ranks.append(found.index(id_of_path[filename]) if id_of_path[filename] in found else k)
        lists.append([position[image_id] for image_id in found])
    ranks = np.asarray(ranks)
    figures = {"t2i": {f"r{n}": round(100 * float((ranks < n).mean()), 2) for n in (1, 5, 10)},
               "hubness": hubness_from_lists(lists, len(position)), "queries": len(queries),
               "median_ms": round(float(np.median(millis)), 1), "p95_ms": round(float(np.percentile(millis, 95)), 1),
               "notes": searcher.notes}
    return figures, ranks, np.asarray([id_of_path[filename] for _, filename in queries])


def index_cost(models: SearchModels, dataset, n: int) -> dict:
    """Milliseconds per photo of what indexing a new photo costs: extraction (into a fresh cache), the
    shortlist vector, and each photo's own bank against every re-ranker (the part the correction adds;
    the pool's encoding, once per indexing run, apart)."""
    from itm.features.cache import content_key
    from itm.features.extract import file_features
    from itm.retrieval.search_models import _POOL_VECTORS

    files = [(record.filename, Path(record.path)) for record in dataset.images[:n]]
    with tempfile.TemporaryDirectory(prefix="itm-index-cost-") as cache:
        t0 = time.perf_counter()
        features = file_features(files, models.features, cache, models.device)
        t1 = time.perf_counter()
        vectors = models.image_vectors(features)
        t2 = time.perf_counter()
        _POOL_VECTORS.clear()  # encoded once per indexing process: timed apart, not per photo
        models._pool = None
        models.pool()
        t_pool = time.perf_counter()
        models.bank_scores(features, vectors, [content_key(path.read_bytes()) for _, path in files])
        t3 = time.perf_counter()
    per = {"extraction_ms": 1000 * (t1 - t0) / n, "vector_ms": 1000 * (t2 - t1) / n, "bank_ms": 1000 * (t3 - t_pool) / n,
           "pool_encoding_s_per_run": t_pool - t2}
    per = {key: round(value, 1) for key, value in per.items()}
    per["bank_increase"] = round(per["bank_ms"] / (per["extraction_ms"] + per["vector_ms"]), 3)
    per["photos"] = n
    return per


if __name__ == "__main__":
    main()
