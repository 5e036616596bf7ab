"""Image-side evidence for words ImageNet does not name (issue 45): ConSE (Norouzi et al., ICLR 2014)
on coco_boxes_dev, as a probe per COCO category and through the search path.

    python scripts/concept_probe.py [--data ../shared/data/coco_boxes_dev --index DIR]

1. Index the 80 photos with the shipped models (``itm.build_index``, what ``itm index`` runs; into a
   temporary folder unless ``--index`` names one, reused when it holds an index).
2. Probe: for each COCO category whose name's head word (its last word: "fire hydrant" -> hydrant)
   names no ImageNet class (``concepts(word)`` finds none) and which at least one photo shows
   (instances_boxes.json), rank the 80 photos by ConSE's evidence for the head word
   (``ConceptMaps.zero_shot_evidence``: the cosine of its GloVe vector with the photo's top-10 classes'
   vectors weighted by their probabilities, from the re-ranker's backbone, as search computes it).
   Probe recall@5 of a category: the share of the photos that show it that are in the top 5. Chance:
   a random order puts each photo in the top 5 with probability 5/80, so the expected recall is
   5/80 = 0.0625 for every category (the expected hits, 5 x positives / 80, are listed too).
   Overall: the mean over categories (each category counts once), and the pooled share (hits over
   positives).
3. Search: every caption through ``open_index(folder).search(caption, k=10, concepts=...)``, R@1/5/10
   of its own photo, three ways: concepts off; concepts on without ConSE (``add_concept_evidence``
   with ``zero_shot=False``, its default: the evidence as before this issue); concepts on with ConSE
   (``zero_shot=True``).

Writes results/coco_boxes_dev/concept_probe.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np


def git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def probe(concepts, probs: np.ndarray, files: list[str], boxes: dict) -> list[dict]:
    """Per COCO category naming no ImageNet class and shown in a photo: its probe recall@5."""
    by_file = {image["id"]: image["file_name"] for image in boxes["images"]}
    shown: dict[int, set[str]] = {}
    for a in boxes["annotations"]:
        shown.setdefault(a["category_id"], set()).add(by_file[a["image_id"]])
    rows = []
    for category in boxes["categories"]:
        head = category["name"].split()[-1]
        positives = shown.get(category["id"], set()) & set(files)
        if concepts.concepts(head).found or not positives:
            continue
        evidence = concepts.zero_shot_evidence(probs, head)
        top = [files[i] for i in np.argsort(-evidence, kind="stable")[:5]]
        hits = len(set(top) & positives)
        rows.append({"category": category["name"], "word": head, "photos": len(positives), "hits": hits,
                     "recall_at_5": hits / len(positives), "chance_hits": 5 * len(positives) / len(files),
                     "chance_recall": 5 / len(files), "in_glove": head in concepts.table,
                     "top5": top})
    return rows


def search_recall(searcher, captions: list[tuple[str, str]], concepts: bool, ks=(1, 5, 10)) -> dict:
    """R@k of each caption's own photo (file name) in ``searcher.search(caption, k=10, concepts=...)``."""
    ranks, looked = [], 0
    for text, own in captions:
        hits = searcher.search(text, k=max(ks), concepts=concepts)
        looked += bool(hits.concepts)
        names = [Path(h.path).name for h in hits]
        ranks.append(names.index(own) if own in names else max(ks))
    ranks = np.array(ranks)
    return {**{f"r@{k}": float((ranks < k).mean()) for k in ks}, "captions": len(ranks),
            "captions_with_a_word_looked_for": looked, "ranks": ranks.tolist()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/coco_boxes_dev")
    parser.add_argument("--index", default=None, help="index folder (default: a temporary one)")
    parser.add_argument("--json", default="results/coco_boxes_dev/concept_probe.json")
    args = parser.parse_args(argv)

    import itm
    import itm.features.concepts as concept_module
    from itm.features.concepts import cached_concept_maps

    data = Path(args.data)
    boxes = json.loads((data / "instances_boxes.json").read_text("utf-8"))
    karpathy = json.loads((data / "dataset_coco_boxes_dev.json").read_text("utf-8"))["images"]
    scratch = tempfile.TemporaryDirectory() if args.index is None else None
    folder = Path(args.index or scratch.name) / "index"
    start = time.perf_counter()
    itm.build_index(data / "images", folder)  # an existing index is only brought up to date
    print(f"index {folder} ready in {time.perf_counter() - start:.0f} s")
    searcher = itm.open_index(folder)
    sha1s = list(searcher.images)
    files = [Path(searcher.paths[s][0]).name for s in sha1s]
    settings = (searcher.models.reranker or searcher.models.shortlist).config.features
    concepts = cached_concept_maps(settings.backbone, settings.weights)
    probs = concepts.probabilities(searcher.feature_rows(sha1s).regions).numpy()

    rows = probe(concepts, probs, files, boxes)
    mean_recall = float(np.mean([r["recall_at_5"] for r in rows]))
    pooled = sum(r["hits"] for r in rows) / sum(r["photos"] for r in rows)
    chance = 5 / len(files)
    print(f"\nprobe: {len(rows)} COCO categories whose head word names no ImageNet class ({settings.backbone})")
    print(f"{'category':16} {'word':10} {'photos':>6} {'hits@5':>6} {'recall@5':>8} {'chance hits':>11}")
    for r in rows:
        print(f"{r['category']:16} {r['word']:10} {r['photos']:>6} {r['hits']:>6} {r['recall_at_5']:>8.3f} "
              f"{r['chance_hits']:>11.2f}")
    print(f"mean over categories {mean_recall:.3f}, pooled {pooled:.3f}; chance {chance:.4f} "
          f"({mean_recall / chance:.1f}x and {pooled / chance:.1f}x chance)")

    captions = [(s["raw"], image["filename"]) for image in karpathy for s in image["sentences"]]
    plain = search_recall(searcher, captions, concepts=False)
    original = concept_module.add_concept_evidence
    try:  # search.py calls add_concept_evidence with its defaults: set zero_shot each way
        concept_module.add_concept_evidence = functools.partial(original, zero_shot=False)
        named_only = search_recall(searcher, captions, concepts=True)
        concept_module.add_concept_evidence = functools.partial(original, zero_shot=True)
        conse = search_recall(searcher, captions, concepts=True)
    finally:
        concept_module.add_concept_evidence = original
    print(f"\nsearch over the {len(files)} photos, {len(captions)} captions (k=10, rerank 50):")
    for name, r in (("concepts off", plain), ("concepts on, classes named outright (default)", named_only),
                    ("concepts on, with ConSE (zero_shot=True)", conse)):
        print(f"  {name:46} R@1 {r['r@1']:.3f}  R@5 {r['r@5']:.3f}  R@10 {r['r@10']:.3f}  "
              f"({r['captions_with_a_word_looked_for']} captions with a word looked for)")
    changed = sum(a != b for a, b in zip(named_only["ranks"], conse["ranks"], strict=True))
    print(f"  ConSE changed the rank of its own photo for {changed} captions")

    report = {"command": "python scripts/concept_probe.py", "data": str(data), "commit": git("rev-parse", "HEAD"),
              "uncommitted_src": git("status", "--short", "--", "src"), "photos": len(files),
              "backbone": settings.backbone, "image_size": settings.image_size,
              "checkpoints": searcher.store.meta("checkpoints"),
              "probe": {"categories": rows, "mean_recall_at_5": mean_recall, "pooled_recall_at_5": pooled,
                        "chance_recall_at_5": chance, "mean_over_chance": mean_recall / chance,
                        "pooled_over_chance": pooled / chance},
              "search": {"concepts_off": plain, "named_classes_only": named_only, "with_conse": conse,
                         "ranks_changed_by_conse": changed},
              "seconds": time.perf_counter() - start}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1) + "\n", "utf-8")
    if scratch is not None:
        scratch.cleanup()
    return report


if __name__ == "__main__":
    main()
