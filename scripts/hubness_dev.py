"""Choose the hubness correction on the dev sets: Flickr8k val and coco_boxes_dev, never test.

    python scripts/hubness_dev.py --flickr8k ../shared/data/flickr8k --coco ../shared/data/coco_boxes_dev \\
        [--checkpoint A B C] [--cache runs/hubness] [--json results/hubness/dev_grid.json]
        [--stage rerank|shortlist|neighbours]

For the re-rankers search ships (or ``--checkpoint``), each dev set's exact all-pairs matrix and its
photos' scores against the whole caption bank (2,000 Flickr8k train captions) are computed once
(kept under ``--cache``). Then every candidate correction (method x bank size x parameter) ranks each
set's photos for each caption the way search does: each member's scores normalised by its own bank
statistics, then the members z-scored and averaged. Printed and written per candidate: text -> photo
R@1, R@5 and the hubness figures on each set, and their means over the two sets. The choice: the
largest mean R@1 among the candidates whose bank fits ``--max-bank`` (the largest bank whose scoring
keeps a photo's index time within +50%: benchmarks/library_search.py measures it), and the best
candidate of each method there (``itm.evaluation.hubness.DEFAULTS``, what ``itm eval --normalise``
applies). ``--stage neighbours`` does the same on each photo's own bank, its nearest pool captions by
the shortlist (``itm.evaluation.hubness.SEARCH_METHODS``, what search applies).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np

from itm.checkpoint import load_checkpoint
from itm.data.load import load_dataset
from itm.evaluation.engine import score_all_pairs
from itm.evaluation.evaluate import combine_scores
from itm.evaluation.hubness import Normalisation, hubness, normalise, photo_stats
from itm.evaluation.metrics import retrieval_metrics
from itm.features.cache import content_key
from itm.pipeline import encoded_bank, prepare_split
from itm.shipped import search_checkpoints

BANK_SIZES = (250, 500, 1000, 2000)
BETAS = (10.0, 20.0, 40.0)
CSLS_K = (10,)


def candidates() -> list[Normalisation]:
    out = [Normalisation("none")]
    for size in BANK_SIZES:
        out += [Normalisation("csls", k=k, bank_size=size) for k in CSLS_K]
        out += [Normalisation(method, beta=beta, bank_size=size) for method, beta in itertools.product(("is", "dis"), BETAS)]
    return out


def member_matrices(checkpoint: str, data: str, split: str, cache: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(queries (n_img, n_cap), bank (n_img, n_bank), caption -> image) of one member on one set, cached."""
    name = f"{Path(data).name}_{split}_{Path(checkpoint).stem}"
    files = [cache / f"{name}_{part}.npy" for part in ("queries", "bank", "owner")]
    if all(f.is_file() for f in files):
        return tuple(np.load(f) for f in files)
    ckpt = load_checkpoint(checkpoint)
    prepared = prepare_split(load_dataset(data, split).split(split), ckpt.config, ckpt.vocab, progress=False)
    started = time.time()
    queries = score_all_pairs(ckpt.model, prepared.features, prepared.captions)
    bank = score_all_pairs(ckpt.model, prepared.features, encoded_bank(ckpt.config, ckpt.vocab))
    print(f"{name}: {queries.shape} + bank {bank.shape} scored in {time.time() - started:.0f} s", flush=True)
    cache.mkdir(parents=True, exist_ok=True)
    for f, array in zip(files, (queries, bank, prepared.caption_to_image), strict=True):
        np.save(f, array)
    return queries, bank, prepared.caption_to_image


def shortlist_matrices(checkpoint: str, data: str, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(queries, bank, caption -> image) of the shortlist model: inner products of its vectors."""
    from itm.data.caption_bank import caption_bank
    from itm.retrieval.search_models import SearchModels

    models = SearchModels(checkpoint)
    prepared = prepare_split(load_dataset(data, split).split(split), models.shortlist.config, models.shortlist.vocab,
                             progress=False)
    photos = models.image_vectors(prepared.features)  # (n_img, d)
    texts = [" ".join(tokens) for tokens in prepared.dataset.caption_tokens()[0]]
    queries = photos @ models.caption_vectors(texts).T
    bank = photos @ models.caption_vectors([" ".join(tokens) for tokens in caption_bank()]).T
    return queries, bank, prepared.caption_to_image


def shortlist_grid(args, sets: dict) -> dict:
    """``--stage shortlist``: the same candidates on the shortlist model alone, judged by recall at the
    re-rank depth (50): what the shortlist hands the re-rankers."""
    data = {label: shortlist_matrices(args.shortlist, folder, split) for label, (folder, split) in sets.items()}
    rows = []
    for norm in [Normalisation("none")] + [n for n in candidates() if n.bank_size == 2000]:
        row = {"normalisation": norm.to_dict(), "label": norm.label()}
        for label, (queries, bank, owner) in data.items():
            scores = normalise(queries, photo_stats(bank, norm), norm)
            top = np.argpartition(-scores, 50, axis=0)[:50]
            row[label] = {"t2i_r50": round(100 * float((top == owner[None]).any(0).mean()), 2), **hubness(scores, 50)}
        row["mean_t2i_r50"] = round(float(np.mean([row[label]["t2i_r50"] for label in sets])), 2)
        rows.append(row)
        print(f"{norm.label():28s} R@50 {row['flickr8k_val']['t2i_r50']:5.1f} / {row['coco_boxes_dev']['t2i_r50']:5.1f} "
              f"mean {row['mean_t2i_r50']:5.2f} | N50 skew {row['flickr8k_val']['n_k_skewness']:5.2f} / "
              f"{row['coco_boxes_dev']['n_k_skewness']:5.2f}", flush=True)
    best = max(rows, key=lambda r: r["mean_t2i_r50"])
    print(f"best by mean R@50: {best['label']}")
    return {"shortlist": args.shortlist, "rows": rows, "best": best["label"],
            "chosen_by": "the largest mean text -> photo R@50 over the two dev sets (the whole bank: inner products "
                         "of the shortlist's vectors cost nothing at index time)",
            "command": "python scripts/hubness_dev.py --stage shortlist --flickr8k ../shared/data/flickr8k --coco "
                       "../shared/data/coco_boxes_dev --json results/hubness/dev_grid_shortlist.json"}


def own_bank_matrices(checkpoints: list[str], shortlist: str, data: str, split: str, m: int,
                      cache: Path) -> list[np.ndarray]:
    """Each re-ranker's (n_img, m) scores of a set's photos against their own banks, as search makes
    them (``SearchModels.own_banks``: each photo's m nearest pool captions by the shortlist), cached."""
    from itm.retrieval.search_models import SearchModels

    name = f"{Path(data).name}_{split}"
    files = [cache / f"{name}_{Path(c).stem}_own{m}.npy" for c in checkpoints]
    if all(f.is_file() for f in files):
        return [np.load(f) for f in files]
    models = SearchModels(shortlist, checkpoints)
    dataset = load_dataset(data, split).split(split)
    prepared = prepare_split(dataset, models.shortlist.config, models.shortlist.vocab, progress=False)
    sha1s = [content_key(Path(record.path).read_bytes()) for record in prepared.dataset.images]
    banks = models.bank_scores(prepared.features, models.image_vectors(prepared.features), sha1s, m)
    cache.mkdir(parents=True, exist_ok=True)
    for f, bank in zip(files, banks, strict=True):
        np.save(f, bank)
    return banks


def neighbours_grid(args, checkpoints: list[str], sets: dict) -> dict:
    """``--stage neighbours``: the corrections on each photo's own bank (search's), bank sizes m up to
    ``--neighbours``; the choice by the same rule as the fixed bank's (the largest mean R@1)."""
    data = {}
    for label, (folder, split) in sets.items():
        matrices = [member_matrices(c, folder, split, Path(args.cache)) for c in checkpoints]
        banks = own_bank_matrices(checkpoints, args.shortlist, folder, split, args.neighbours, Path(args.cache))
        data[label] = ([q for q, _, _ in matrices], banks, matrices[0][2])
    norms = [Normalisation("none")]
    for m in (16, 32, 48, 64):
        if m <= args.neighbours:
            norms += [Normalisation("csls", k=k, neighbours=m) for k in (5, 10)]
            norms += [Normalisation("is", beta=beta, neighbours=m) for beta in (10.0, 20.0)]
    rows = []
    for norm in norms:
        row = {"normalisation": norm.to_dict(), "label": norm.label()}
        for label, (queries, banks, owner) in data.items():
            own = [bank[:, : norm.neighbours] for bank in banks]  # a photo's m nearest: the first m columns
            row[label] = evaluate(norm, list(zip(queries, own, strict=True)), owner)
        summarise(row, sets)
        rows.append(row)
    affordable = [r for r in rows if (r["normalisation"]["neighbours"] or 0) <= args.max_neighbours]
    best = max(affordable, key=lambda r: r["mean_t2i_r1"])
    print(f"best by mean R@1 with at most {args.max_neighbours} captions a photo: {best['label']}; without the bound: "
          f"{max(rows, key=lambda r: r['mean_t2i_r1'])['label']}")
    return {"checkpoints": checkpoints, "shortlist": args.shortlist, "sets": {k: list(v) for k, v in sets.items()},
            "rows": rows, "best": best["label"], "best_unconstrained": max(rows, key=lambda r: r["mean_t2i_r1"])["label"],
            "chosen_by": f"the largest mean text -> photo R@1 over the two dev sets among own banks of at most "
                         f"{args.max_neighbours} captions (the largest whose scoring keeps a photo's index time within "
                         "+50%: benchmarks/library_search.py's index cost, 64 photos: +45% at 48, +53-58% at 64)",
            "command": "python scripts/hubness_dev.py --stage neighbours --flickr8k ../shared/data/flickr8k --coco "
                       "../shared/data/coco_boxes_dev --json results/hubness/dev_grid_neighbours.json"}


def summarise(row: dict, sets: dict) -> None:
    """The means over the sets, and a printed line."""
    row["mean_t2i_r1"] = round(float(np.mean([row[label]["t2i_r1"] for label in sets])), 2)
    row["mean_n10_skewness"] = round(float(np.mean([row[label]["n_k_skewness"] for label in sets])), 3)
    print(f"{row['label']:50s} R@1 {row['flickr8k_val']['t2i_r1']:5.1f} / {row['coco_boxes_dev']['t2i_r1']:5.1f} "
          f"mean {row['mean_t2i_r1']:5.2f} | N10 skew {row['flickr8k_val']['n_k_skewness']:5.2f} / "
          f"{row['coco_boxes_dev']['n_k_skewness']:5.2f} | top-1 share {row['flickr8k_val']['top1_share']:.3f} / "
          f"{row['coco_boxes_dev']['top1_share']:.3f}", flush=True)


def evaluate(norm: Normalisation, members: list[tuple[np.ndarray, np.ndarray]], owner: np.ndarray) -> dict:
    blocks = [normalise(queries, photo_stats(bank, norm), norm) for queries, bank in members]
    scores = combine_scores(blocks)  # (n_img, n_cap)
    t2i = retrieval_metrics(scores, owner)["t2i"]
    return {"t2i_r1": round(t2i["r1"], 2), "t2i_r5": round(t2i["r5"], 2), **hubness(scores, 10)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flickr8k", required=True)
    parser.add_argument("--coco", required=True)
    parser.add_argument("--checkpoint", nargs="+", help="the re-rankers (default: those search ships)")
    parser.add_argument("--cache", default="runs/hubness")
    parser.add_argument("--max-bank", type=int, default=500, help="the largest bank size search can afford")
    parser.add_argument("--stage", choices=("rerank", "shortlist", "neighbours"), default="rerank",
                        help="which stage's scores are corrected: the re-rankers' on the fixed bank (default), the "
                             "shortlist's, or the re-rankers' on each photo's own bank (search's)")
    parser.add_argument("--neighbours", type=int, default=64, help="--stage neighbours: the largest own bank")
    parser.add_argument("--max-neighbours", type=int, default=48,
                        help="--stage neighbours: the largest own bank search can afford")
    parser.add_argument("--shortlist", default=search_checkpoints(None, None)[0], help="the shortlist checkpoint")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    checkpoints = args.checkpoint or search_checkpoints(None, None)[1]
    checkpoints = [checkpoints] if isinstance(checkpoints, str) else list(checkpoints)
    sets = {"flickr8k_val": (args.flickr8k, "val"), "coco_boxes_dev": (args.coco, "test")}
    if args.stage != "rerank":
        result = shortlist_grid(args, sets) if args.stage == "shortlist" else neighbours_grid(args, checkpoints, sets)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(result, indent=2), encoding="utf-8")
        return result
    data = {}
    for label, (folder, split) in sets.items():
        matrices = [member_matrices(c, folder, split, Path(args.cache)) for c in checkpoints]
        data[label] = ([(q, b) for q, b, _ in matrices], matrices[0][2])
    rows = []
    for norm in candidates():
        row = {"normalisation": norm.to_dict(), "label": norm.label()}
        for label, (members, owner) in data.items():
            row[label] = evaluate(norm, members, owner)
        summarise(row, sets)
        rows.append(row)
    affordable = [r for r in rows if (r["normalisation"]["bank_size"] or 0) <= args.max_bank]
    best = max(affordable, key=lambda r: r["mean_t2i_r1"])
    per_method = {m: max((r for r in affordable if r["normalisation"]["method"] == m), key=lambda r: r["mean_t2i_r1"])
                  ["label"] for m in ("csls", "is", "dis")}
    result = {"checkpoints": checkpoints, "sets": {k: list(v) for k, v in sets.items()}, "rows": rows,
              "chosen_by": f"the largest mean text -> photo R@1 over the two dev sets, bank at most {args.max_bank}",
              "best": best["label"], "best_per_method": per_method,
              "best_unconstrained": max(rows, key=lambda r: r["mean_t2i_r1"])["label"],
              "command": "python scripts/hubness_dev.py --flickr8k ../shared/data/flickr8k --coco "
                         "../shared/data/coco_boxes_dev --json results/hubness/dev_grid.json"}
    print(f"best by mean R@1 with a bank of at most {args.max_bank}: {best['label']}; per method: {per_method}; "
          f"without the bound: {result['best_unconstrained']}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
