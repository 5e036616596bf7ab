"""Two-stage retrieval on Flickr8k test: recall and time of the shortlist alone, of exact all-pairs
scoring, and of shortlist + exact re-rank at several K; latency over a whole-collection index.

    python benchmarks/search_quality.py --shortlist runs/flickr8k/dual_seed0 --checkpoint runs/flickr8k/mlasm_seed0 \\
        --data ../shared/data/flickr8k [--index runs/flickr8k-index] [--json results/flickr8k/search.json]

Recall: the standard protocol's R@1/5/10 both ways (1,000 images x 5,000 captions). For a re-ranked
list the top K of the shortlist are ordered by the matcher's exact score and a ground truth outside
the shortlist ranks after it. Times are measured in this process: the exact all-pairs time of one
query is the engine scoring it against every gallery item; the two-stage time is the shortlist
search plus the matcher on K items with cached per-image states (``itm.retrieval.search``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from itm.checkpoint import load_checkpoint
from itm.data.load import load_dataset
from itm.evaluation.engine import score_all_pairs
from itm.evaluation.metrics import retrieval_metrics
from itm.models.base import select_state
from itm.pipeline import prepare_split
from itm.retrieval.search import build_faiss

KS = (10, 20, 50, 100)


def reranked(short: np.ndarray, exact: np.ndarray, k: int) -> np.ndarray:
    """Scores whose ranking is: the shortlist's top k by the exact score, then the rest by the shortlist.
    ``short`` and ``exact`` are (queries, gallery)."""
    top = np.argsort(-short, axis=1, kind="stable")[:, :k]  # (Q, k)
    out = short - short.max() - 10.0  # every shortlisted item ranks above every other
    rows = np.arange(short.shape[0])[:, None]
    picked = exact[rows, top]
    out[rows, top] = picked - picked.min() + 1.0  # (exact order among the k, all above the rest)
    return out


def both_ways(short_i2t: np.ndarray, exact: np.ndarray, owner: np.ndarray, k: int | None) -> dict:
    """R@K of a (images x captions) matrix, re-ranked per query direction at k (None: as is)."""
    if k is None:
        return retrieval_metrics(exact, owner)
    i2t = reranked(short_i2t, exact, k)  # each image's captions
    t2i = reranked(short_i2t.T, exact.T, k).T  # each caption's images
    a, b = retrieval_metrics(i2t, owner), retrieval_metrics(t2i, owner)
    return {"i2t": a["i2t"], "t2i": b["t2i"], "rsum": sum(a["i2t"][f"r{n}"] + b["t2i"][f"r{n}"] for n in (1, 5, 10))}


@torch.inference_mode()
def dual_matrix(ckpt, split) -> np.ndarray:
    model = ckpt.model.eval()
    images = model.encode_images(split.features.streams(model.image_streams)).numpy()
    captions = np.concatenate([model.encode_captions(split.captions.select(slice(s, s + 1000))).numpy()
                               for s in range(0, len(split.captions), 1000)])
    return images @ captions.T


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shortlist", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--index", help="an itm index of the whole collection: per-query latency over it")
    parser.add_argument("--queries", type=int, default=200, help="timed text queries")
    parser.add_argument("--million", action="store_true", help="also time stage 1 on 1M random 512-d vectors")
    parser.add_argument("--exact-scores", metavar="NPY", help="the matcher's (1000 x 5000) test matrix saved by "
                        "itm eval --scores: skips scoring it again (its time is then not measured here)")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    dual, matcher = load_checkpoint(args.shortlist), load_checkpoint(args.checkpoint)
    test_set = load_dataset(args.data, "test")
    d_split = prepare_split(test_set, dual.config, dual.vocab, progress=False)
    m_split = prepare_split(test_set, matcher.config, matcher.vocab, progress=False)
    owner = d_split.caption_to_image
    short = dual_matrix(dual, d_split)
    exact, exact_seconds = exact_matrix(matcher, m_split, args.exact_scores, short.shape)
    result = {"shortlist": args.shortlist, "matcher": args.checkpoint, "exact_all_pairs_seconds": exact_seconds,
              "dual_alone": both_ways(short, short, owner, None), "exact": both_ways(short, exact, owner, None)}
    for k in KS:
        result[f"rerank_k{k}"] = both_ways(short, exact, owner, k)

    # time per text query over the 1K test images: exact = the query against all 1,000 images
    rng = np.random.default_rng(0)
    picks = rng.choice(len(m_split.captions), size=min(args.queries, len(m_split.captions)), replace=False)
    result["exact_query_ms_1k"] = exact_query_ms(matcher, m_split.features, m_split.captions, picks[:20])
    # 8,000 photos: the 1K test features eight times over (the same per-pair work as 8,000 distinct photos)
    eight = m_split.features.select(torch.arange(len(m_split.features)).repeat(8))
    result["exact_query_ms_8k"] = exact_query_ms(matcher, eight, m_split.captions, picks[:5])
    # the same with every photo's prepared state cached, as the two-stage path has it: only pairs are scored
    result["exact_query_ms_1k_cached"] = exact_cached_ms(matcher, m_split.features, m_split.captions, picks[:20], 1)
    result["exact_query_ms_8k_cached"] = exact_cached_ms(matcher, m_split.features, m_split.captions, picks[:10], 8)
    result["two_stage_1k"] = two_stage_ms(dual, matcher, d_split, m_split, picks)
    for k in KS:
        entry = result["two_stage_1k"][f"k{k}"]
        entry["fraction_of_exact"] = round(entry["median_ms"] / result["exact_query_ms_1k"], 4)
        entry["fraction_of_exact_cached"] = round(entry["median_ms"] / result["exact_query_ms_1k_cached"], 4)
    if args.million:
        result["synthetic_1m"] = synthetic_million(dual.config.model.embed_dim)
    if args.index:
        result["index"] = time_index(args.index, [" ".join(t) for im in test_set.images for t in im.tokens], picks)
        for k in KS:
            entry = result["index"][f"k{k}"]
            entry["fraction_of_exact"] = round(entry["median_ms"] / result["exact_query_ms_8k"], 4)
            entry["fraction_of_exact_cached"] = round(entry["median_ms"] / result["exact_query_ms_8k_cached"], 4)
    for key, value in result.items():
        print(f"{key:<22}{json.dumps(value) if isinstance(value, dict) else value}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


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


def exact_query_ms(matcher, features, captions, picks: np.ndarray) -> float:
    """Milliseconds per text query scored exactly against every photo of ``features``."""
    t0 = time.perf_counter()
    for c in picks:
        score_all_pairs(matcher.model, features, captions.select(slice(int(c), int(c) + 1)))
    return round(1000 * (time.perf_counter() - t0) / len(picks), 1)


@torch.inference_mode()
def exact_cached_ms(matcher, features, captions, picks: np.ndarray, copies: int) -> float:
    """Milliseconds per text query scored exactly against every photo (the features ``copies`` times
    over) whose prepared state is already computed: the query's own preparation and its pairs only."""
    model = matcher.model.eval()
    states = model.prepare_images(features.streams(model.image_streams))
    states = select_state(states, torch.arange(len(features)).repeat(copies))
    t0 = time.perf_counter()
    for c in picks:
        caption = model.prepare_captions(captions.select(slice(int(c), int(c) + 1)))
        for start in range(0, len(features) * copies, 1000):  # the engine's tiles: bounded memory
            model.score_block(select_state(states, slice(start, start + 1000)), caption)
    return round(1000 * (time.perf_counter() - t0) / len(picks), 1)


@torch.inference_mode()
def two_stage_ms(dual, matcher, d_split, m_split, picks: np.ndarray) -> dict:
    """Per text query over the 1K test photos, the search path of ``itm.retrieval.search``: encode the
    query, FAISS top K of the dual vectors, the matcher on those K with prepared photo states cached."""
    short_model, model = dual.model.eval(), matcher.model.eval()
    vectors = short_model.encode_images(d_split.features.streams(short_model.image_streams)).float().numpy()
    index = build_faiss(vectors, approximate_above=len(vectors) + 1)
    states = model.prepare_images(m_split.features.streams(model.image_streams))  # the cache, filled
    out = {}
    for k in KS:
        times = []
        for c in picks:
            t0 = time.perf_counter()
            query = short_model.encode_captions(d_split.captions.select(slice(int(c), int(c) + 1))).float().numpy()
            _, rows = index.search(query, k)
            top = torch.from_numpy(rows[0])
            model.score_block(select_state(states, top), model.prepare_captions(
                m_split.captions.select(slice(int(c), int(c) + 1))))
            times.append(1000 * (time.perf_counter() - t0))
        out[f"k{k}"] = {"median_ms": round(float(np.median(times)), 2), "p95_ms": round(float(np.percentile(times, 95)), 2)}
    return out


def time_index(index: str, texts: list[str], picks: np.ndarray) -> dict:
    """Latency of text queries over a whole index (warm per-image state cache after the first pass)."""
    from itm.retrieval.search import Searcher

    searcher = Searcher(index)
    out = {"photos": len(searcher)}
    for k in KS:
        searcher.search(texts[int(picks[0])], k=10, rerank=k)  # warm-up
        times = []
        for c in picks:
            t0 = time.perf_counter()
            searcher.search(texts[int(c)], k=10, rerank=k)
            times.append(1000 * (time.perf_counter() - t0))
        out[f"k{k}"] = {"median_ms": round(float(np.median(times)), 1), "p95_ms": round(float(np.percentile(times, 95)), 1)}
    stage1 = []
    for c in picks:
        t0 = time.perf_counter()
        searcher.shortlist(texts[int(c)], 50)
        stage1.append(1000 * (time.perf_counter() - t0))
    out["shortlist_only_median_ms"] = round(float(np.median(stage1)), 2)
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
