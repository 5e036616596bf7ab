"""Two-stage retrieval on Flickr8k test: recall and time of the shortlist alone, of exact all-pairs
scoring, and of shortlist + exact re-rank at several K; latency over a whole-collection index.

    python benchmarks/search_quality.py --shortlist runs/flickr8k/dual_seed0 --checkpoint runs/flickr8k/mlasm_seed0 \\
        --data ../shared/data/flickr8k [--index runs/flickr8k-index] [--json results/flickr8k/search_quality.json]

What is measured is what users run: the 1,000 test photos are indexed (``itm.retrieval.index``, their
features read from the feature cache) with the 5,000 test captions as the caption collection, and
every two-stage figure comes from ``itm.retrieval.search.Searcher``.

Recall: the standard protocol's R@1/5/10, medr and meanr both ways (1,000 images x 5,000 captions).
The shortlist alone and exact scoring rank by the two models' all-pairs matrices (the evaluation
engine, as ``itm eval``). Re-ranked at K: each caption's photos as ``Searcher.search`` ranks them (text
query, re-rank depth K), each photo's captions as ``Searcher.search_image`` ranks them (the photo's
bytes as the query, its features read through the cache as an upload's are: the slowest part of a
run); the K re-ranked items come first, every other item after them in the order of the same search
without re-ranking. Text queries are the captions' tokens joined by spaces.

Times, measured in this process, per text query: exact = the engine scoring the query against every
photo (photo preparation included); exact with cached states = ``Searcher.rerank`` of every photo
with every photo's prepared state already cached; two-stage = ``Searcher.search`` (top 10 at re-rank
depth K, states cached), with its stages ``Searcher.shortlist`` and ``Searcher.rerank`` timed alone.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _report import report

from itm.checkpoint import load_checkpoint
from itm.data.load import load_dataset
from itm.data.types import Dataset
from itm.evaluation.engine import score_all_pairs
from itm.evaluation.evaluate import combine_scores
from itm.evaluation.metrics import retrieval_metrics, summarize_ranks
from itm.pipeline import prepare_split
from itm.retrieval.index import IndexStore, index_captions, update_index
from itm.retrieval.search import Searcher, SearchModels, build_faiss

KS = (10, 20, 50, 100)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shortlist", required=True)
    parser.add_argument("--checkpoint", required=True, nargs="+", help="the re-ranker, or several: an ensemble")
    parser.add_argument("--data", required=True)
    parser.add_argument("--index", help="an itm index of the whole collection: per-query latency over it")
    parser.add_argument("--queries", type=int, default=200, help="timed text queries")
    parser.add_argument("--million", action="store_true", help="also time stage 1 on 1M random 512-d vectors")
    parser.add_argument("--exact-scores", metavar="NPY", nargs="+", help="each re-ranker's (1000 x 5000) test matrix "
                        "saved by itm eval --scores, in --checkpoint's order: skips scoring them again (their time "
                        "is then not measured here)")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    dual, matchers = load_checkpoint(args.shortlist), [load_checkpoint(path) for path in args.checkpoint]
    if args.exact_scores and len(args.exact_scores) != len(matchers):
        raise SystemExit(f"--exact-scores: {len(args.exact_scores)} files for {len(matchers)} checkpoints")
    test_set = load_dataset(args.data, "test")
    d_split = prepare_split(test_set, dual.config, dual.vocab, progress=False)
    m_splits = [prepare_split(test_set, m.config, m.vocab, progress=False) for m in matchers]
    owner = m_splits[0].caption_to_image
    texts = [" ".join(t) for im in test_set.images for t in im.tokens]  # the queries, in caption order
    short = score_all_pairs(dual.model, d_split.features, d_split.captions)
    # exact: the ensemble as itm eval scores it (each member's whole matrix z-scored; one member as it is)
    exacts = [exact_matrix(m, split, args.exact_scores[n] if args.exact_scores else None, short.shape)
              for n, (m, split) in enumerate(zip(matchers, m_splits, strict=True))]
    exact = combine_scores([e for e, _ in exacts])
    exact_seconds = None if args.exact_scores else round(sum(t for _, t in exacts), 1)
    result = {"shortlist": args.shortlist, "matcher": args.checkpoint[0] if len(matchers) == 1 else args.checkpoint,
              "exact_all_pairs_seconds": exact_seconds,
              "dual_alone": retrieval_metrics(short, owner), "exact": retrieval_metrics(exact, owner)}
    rng = np.random.default_rng(0)
    picks = rng.choice(len(texts), size=min(args.queries, len(texts)), replace=False)
    with tempfile.TemporaryDirectory(prefix="itm-search-quality-") as folder:
        searcher = index_test_set(Path(folder), test_set, texts, SearchModels(args.shortlist, args.checkpoint))
        result.update(searched_recall(searcher, test_set, texts, owner))

        # time per text query over the 1K test photos: exact = the query against all 1,000 photos
        result["exact_query_ms_1k"] = sum(exact_query_ms(m, split.features, split.captions, picks[:20])
                                          for m, split in zip(matchers, m_splits, strict=True))
        # 8,000 photos: the 1K test features eight times over (the same per-pair work as 8,000 distinct photos)
        eights = [split.features.select(torch.arange(len(split.features)).repeat(8)) for split in m_splits]
        result["exact_query_ms_8k"] = sum(exact_query_ms(m, eight, split.captions, picks[:5])
                                          for m, eight, split in zip(matchers, eights, m_splits, strict=True))
        # the same with every photo's prepared state cached, as a warm searcher has them: only pairs are scored
        every = list(searcher.images)  # every photo (sha1)
        for member in range(len(matchers)):
            searcher.prepared(member, every)
        result["exact_query_ms_1k_cached"] = rerank_ms(searcher, [texts[c] for c in picks[:20]], every)
        result["exact_query_ms_8k_cached"] = rerank_ms(searcher, [texts[c] for c in picks[:10]], every * 8)
        result["two_stage_1k"] = search_ms(searcher, [texts[c] for c in picks])
    for k in KS:
        entry = result["two_stage_1k"][f"k{k}"]
        entry["fraction_of_exact"] = round(entry["median_ms"] / result["exact_query_ms_1k"], 4)
        entry["fraction_of_exact_cached"] = round(entry["median_ms"] / result["exact_query_ms_1k_cached"], 4)
    if args.million:
        result["synthetic_1m"] = synthetic_million(dual.config.model.embed_dim)
    if args.index:
        result["index"] = time_index(args.index, [texts[c] for c in picks])
        for k in KS:
            entry = result["index"][f"k{k}"]
            entry["fraction_of_exact"] = round(entry["median_ms"] / result["exact_query_ms_8k"], 4)
            entry["fraction_of_exact_cached"] = round(entry["median_ms"] / result["exact_query_ms_8k_cached"], 4)
    return report(result, args.json)


def exact_matrix(matcher, split, saved: str | None, shape: tuple[int, int]) -> tuple[np.ndarray, float | None]:
    """The matcher's all-pairs test matrix and its scoring time: read from ``saved``, or scored now."""
    if saved:
        exact = np.load(saved)
        if exact.shape != shape:
            raise SystemExit(f"--exact-scores {saved}: shape {exact.shape}, expected {shape}")
        return exact, None
    t0 = time.perf_counter()
    exact = score_all_pairs(matcher.model, split.features, split.captions)
    return exact, round(time.perf_counter() - t0, 1)


# -- the test set as users search it ----------------------------------------------------------------------

def index_test_set(folder: Path, test_set: Dataset, texts: list[str], models: SearchModels) -> Searcher:
    """A Searcher over an ``itm index`` of the test photos (links to the dataset's files, under
    ``folder``) with ``texts`` as its caption collection, in order."""
    photos = folder / "photos"
    for record in test_set.images:
        link = photos / record.filename
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path(record.path).resolve())
    store = IndexStore(folder / "index")
    report = update_index(store, photos, models, progress=False)
    if report.skipped:
        raise SystemExit(f"indexing the test photos skipped {report.skipped[0][0]}: {report.skipped[0][1]}")
    if any(not text.strip() for text in texts):  # a blank line is no caption: the collection would shift
        raise SystemExit("a test caption has no words: the caption collection cannot keep the captions' order")
    (folder / "captions.txt").write_text("".join(f"{text}\n" for text in texts), encoding="utf-8")
    index_captions(store, folder / "captions.txt", models)
    return Searcher(folder / "index", models, normalise="none")  # the raw re-rank, against exact scoring


def searched_recall(searcher: Searcher, test_set: Dataset, texts: list[str], owner: np.ndarray) -> dict:
    """{"rerank_k<K>": metrics} for every K of ``KS``: the ranks the searcher gives, both ways."""
    row_of = {record.filename: i for i, record in enumerate(test_set.images)}
    photos = searcher.search(texts[0], k=len(searcher), rerank=0)
    images = {hit.image_id: len(hit.paths) for hit in photos}  # a photo indexed once: every test image of it
    photo_of = {row_of[path]: hit.image_id for hit in photos for path in hit.paths}  # test image -> photo
    t2i = np.zeros((len(KS), len(texts)), dtype=np.int64)  # 0-based rank of each caption's photo
    for c, text in enumerate(texts):
        rest = [hit.image_id for hit in searcher.search(text, k=len(searcher), rerank=0)]  # shortlist order
        for n, k in enumerate(KS):
            top = [hit.image_id for hit in searcher.search(text, k=k, rerank=k)]
            t2i[n, c] = rank_of(top, rest, {photo_of[owner[c]]}, images)
    captions_of = [set(np.flatnonzero(owner == i).tolist()) for i in range(len(test_set.images))]
    i2t = np.zeros((len(KS), len(test_set.images)), dtype=np.int64)  # 0-based rank of a photo's first caption
    for i, record in enumerate(test_set.images):
        data, name = Path(record.path).read_bytes(), Path(record.filename).name
        rest = [hit.caption_id for hit in searcher.search_image(data, name, k=len(texts), rerank=0)]
        for n, k in enumerate(KS):
            top = [hit.caption_id for hit in searcher.search_image(data, name, k=k, rerank=k)]
            i2t[n, i] = rank_of(top, rest, captions_of[i])
    out = {}
    for n, k in enumerate(KS):
        a, b = summarize_ranks(i2t[n]), summarize_ranks(t2i[n])
        out[f"rerank_k{k}"] = {"i2t": a, "t2i": b, "rsum": sum(part[f"r{m}"] for part in (a, b) for m in (1, 5, 10))}
    return out


def rank_of(top: list, rest: list, positives: set, sizes: dict | None = None) -> int:
    """0-based rank of the first of ``positives`` in the ranking ``top`` (the re-ranked items), then
    the items of ``rest`` not in ``top``, in ``rest``'s order: how many test items come before it
    (``sizes``: how many one item stands for; None: one each)."""
    seen = set(top)
    before = 0
    for item in top + [item for item in rest if item not in seen]:
        if item in positives:
            return before
        before += 1 if sizes is None else sizes[item]
    raise SystemExit("a ground truth is missing from the searcher's results")


# -- time -------------------------------------------------------------------------------------------------

def exact_query_ms(matcher, features, captions, picks: np.ndarray) -> float:
    """Milliseconds per text query scored exactly against every photo of ``features``."""
    t0 = time.perf_counter()
    for c in picks:
        score_all_pairs(matcher.model, features, captions.select(slice(int(c), int(c) + 1)))
    return round(1000 * (time.perf_counter() - t0) / len(picks), 1)


def rerank_ms(searcher: Searcher, texts: list[str], sha1s: list[str]) -> float:
    """Milliseconds per text query of ``Searcher.rerank`` over ``sha1s`` (their states cached)."""
    t0 = time.perf_counter()
    for text in texts:
        searcher.rerank(text, sha1s)
    return round(1000 * (time.perf_counter() - t0) / len(texts), 1)


def search_ms(searcher: Searcher, texts: list[str], digits: int = 2) -> dict:
    """Per text query at every re-rank depth K: ``Searcher.search`` of the top 10 (median, p95), and its
    two stages alone (``Searcher.shortlist`` of the top max(10, K), ``Searcher.rerank`` of them)."""
    out = {}
    for k in KS:
        searcher.search(texts[0], k=10, rerank=k)  # warm-up
        total, stage1, stage2 = [], [], []
        for text in texts:
            t0 = time.perf_counter()
            searcher.search(text, k=10, rerank=k)
            t1 = time.perf_counter()
            sha1s, _ = searcher.shortlist(text, max(10, k))
            t2 = time.perf_counter()
            searcher.rerank(text, sha1s)
            t3 = time.perf_counter()
            total.append(1000 * (t1 - t0))
            stage1.append(1000 * (t2 - t1))
            stage2.append(1000 * (t3 - t2))
        out[f"k{k}"] = {"median_ms": round(float(np.median(total)), digits),
                        "p95_ms": round(float(np.percentile(total, 95)), digits),
                        "shortlist_median_ms": round(float(np.median(stage1)), digits),
                        "rerank_median_ms": round(float(np.median(stage2)), digits)}
    return out


def time_index(index: str, texts: list[str]) -> dict:
    """Latency of text queries over a whole index (its state cache warming as the queries run)."""
    searcher = Searcher(index, normalise="none")
    out = {"photos": len(searcher), **search_ms(searcher, texts, digits=1)}
    out["shortlist_only_median_ms"] = out["k50"]["shortlist_median_ms"]  # stage 1 of a K = 50 search
    return out


def synthetic_million(dim: int = 512, n: int = 1_000_000, queries: int = 50) -> dict:
    """Stage 1 on random unit vectors: exact (flat) search over 1M; IVF over 1M (nlist 1024, nprobe
    32) against exact (does it find the query's planted neighbour; how much of exact's top 50 it
    returns, which on random vectors, all about equally far, is the worst case); the index's HNSW at 100k (its build time at 1M is too long
    to measure here: about 20x the 100k one, more with the graph's depth)."""
    import faiss

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    q = vectors[:queries] + 0.05 * rng.standard_normal((queries, dim), dtype=np.float32)
    out = {}

    def timed_search(index, base=None) -> dict:
        t0 = time.perf_counter()
        found = np.concatenate([index.search(q[i : i + 1], 50)[1] for i in range(queries)])  # one query at a time
        entry = {"query_ms": round(1000 * (time.perf_counter() - t0) / queries, 2)}
        if base is not None:  # random vectors have no near neighbours but the planted one: the worst case
            entry["planted_found"] = round(float(np.mean(found[:, 0] == np.arange(queries))), 3)
            entry["overlap_at_50"] = round(float(np.mean([len(set(a) & set(b)) / 50 for a, b in zip(found, base, strict=True)])), 3)
        return entry, found

    t0 = time.perf_counter()
    flat = build_faiss(vectors, n + 1)
    out["flat_1m"], exact = timed_search(flat)
    out["flat_1m"]["build_s"] = round(time.perf_counter() - t0 - out["flat_1m"]["query_ms"] * queries / 1000, 1)
    t0 = time.perf_counter()
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, 1024, faiss.METRIC_INNER_PRODUCT)
    ivf.train(vectors[:: n // 50_000])
    ivf.add(vectors)
    ivf.nprobe = 32
    build = time.perf_counter() - t0
    out["ivf_1m"], _ = timed_search(ivf, exact)
    out["ivf_1m"]["build_s"] = round(build, 1)
    small = 100_000
    t0 = time.perf_counter()
    hnsw = build_faiss(vectors[:small], 0)
    build = time.perf_counter() - t0
    _, exact_small = timed_search(build_faiss(vectors[:small], small + 1))
    out["hnsw_100k"], _ = timed_search(hnsw, exact_small)
    out["hnsw_100k"]["build_s"] = round(build, 1)
    return out


if __name__ == "__main__":
    main()
