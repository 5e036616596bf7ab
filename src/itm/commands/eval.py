"""``itm eval``: standard retrieval evaluation of a checkpoint on any Karpathy-format dataset."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from itm.commands import add_device_argument, add_scoring_set_argument
from itm.config import ENSEMBLE_NORMS, PRECISIONS
from itm.evaluation.hubness import METHODS

HELP = "evaluate a checkpoint: R@1/5/10, median and mean rank, rsum (both directions)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, nargs="+",
                        help="checkpoint file or run folder (uses best.pt); several (of any models): an ensemble "
                             "scored by the mean of their score matrices, each normalised (--ensemble-norm)")
    parser.add_argument("--data", required=True, help="dataset folder (Karpathy JSON + images, or precomp)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--protocol", default="flickr", help="flickr | coco1k | coco5k")
    parser.add_argument("--json", dest="json_out", metavar="OUT", help="write the metrics as JSON")
    parser.add_argument("--memory-mb", type=int, default=None, help="memory budget of the scoring engine")
    parser.add_argument("--skip-bad", action="store_true", help="skip unreadable images, with a report")
    add_scoring_set_argument(parser)
    parser.add_argument("--scores", metavar="OUT.npy", help="also save the (images x captions) score matrix "
                        "(flickr protocol; the mean matrix for an ensemble)")
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="bf16: score under bf16 autocast (default: the checkpoint's eval.precision, fp32)")
    parser.add_argument("--by-vocabulary", action="store_true",
                        help="also split the captions into those whose every word was in the training captions and "
                             "those with another word (R@K of each), and probe each unseen word that names two or "
                             "more photos with the query 'a WORD' (recall@5 beside chance); flickr protocol")
    parser.add_argument("--ensemble-norm", choices=ENSEMBLE_NORMS, default="zscore",
                        help="several checkpoints, or one scored over several grids (eval.score_sizes): put each "
                             "score matrix on a common scale before the mean (zscore: its own mean and standard "
                             "deviation; none: raw scores)")
    parser.add_argument("--normalise", choices=METHODS, default="none",
                        help="also report text -> photo figures with a hubness correction over the caption bank "
                             "(csls, is: inverted softmax, dis: QB-Norm's dynamic inverted softmax; parameters "
                             "chosen on dev sets, docs/results/search.md): a separate row beside the raw one")
    parser.add_argument("--no-progress", action="store_true")
    add_device_argument(parser)


def run(args: argparse.Namespace) -> int:
    import torch

    from itm.checkpoint import load_checkpoint
    from itm.data.load import load_dataset
    from itm.devices import resolve_device
    from itm.distributed import is_main, setup, world_size
    from itm.errors import ItmError
    from itm.evaluation.evaluate import Member, evaluate_ensemble
    from itm.evaluation.hubness import DEFAULTS, hubness
    from itm.evaluation.metrics import format_table
    from itm.evaluation.protocols import PROTOCOLS
    from itm.pipeline import prepare_split, scoring_views
    from itm.training.run import code_commit

    PROTOCOLS.get(args.protocol)  # fail fast on a typo, before any work
    if (args.scores or args.by_vocabulary or args.normalise != "none") and args.protocol != "flickr":
        raise ItmError("--scores, --by-vocabulary and --normalise need the one matrix of the flickr protocol; drop "
                       "them for coco1k / coco5k")
    device = resolve_device(args.device)
    setup(device)  # under torchrun: each process scores its share of the images (itm.evaluation.engine)
    # all load before any long work
    checkpoints = [load_checkpoint(path, args.overrides, device) for path in args.checkpoint]
    dataset = load_dataset(args.data, args.split).split(args.split)
    if not len(dataset):
        raise ItmError(f"dataset {args.data}: no images in split '{args.split}'")
    members, owners, splits, member_checkpoints, member_views = [], [], [], [], []
    for path, ckpt in zip(args.checkpoint, checkpoints, strict=True):
        for view in scoring_views(ckpt.config):  # the trained grid, then any eval.score_sizes
            member_views.append((path, view.features.image_size))
            split = prepare_split(dataset, view, ckpt.vocab, skip_bad=args.skip_bad, progress=not args.no_progress,
                                  device=device)
            members.append(Member(ckpt.model, split.features, split.captions))
            owners.append(split.caption_to_image)
            splits.append(split)
            member_checkpoints.append(ckpt)
    if any(not np.array_equal(owner, owners[0]) for owner in owners):
        raise ItmError(f"dataset {args.data}: the checkpoints read different captions of split '{args.split}'")
    config = checkpoints[0].config
    precision = args.precision or config.eval.precision
    result = evaluate_ensemble(members, owners[0], args.protocol, args.memory_mb or config.eval.memory_budget_mb,
                               config.eval.caption_tile, progress=not args.no_progress and is_main(),
                               keep_scores=args.protocol == "flickr",
                               max_image_chunk=config.eval.image_tile, precision=precision,
                               normalise=args.ensemble_norm)
    if args.by_vocabulary:
        result.update(vocabulary_report(member_checkpoints, splits, members, result["scores"], config,
                                        args.ensemble_norm))
    member_scores = result.pop("member_scores", None)
    if member_scores is not None:
        result["hubness"] = hubness(result["scores"])
        if len(members) > 1:  # what each checkpoint and grid scores alone: from the matrices already computed
            result["members"] = member_figures(member_scores, owners[0], member_views)
    if args.normalise != "none":
        result["normalised"] = normalised_report(members, member_checkpoints, member_scores, owners[0],
                                                 DEFAULTS[args.normalise], args.ensemble_norm, precision)
    if not is_main():
        return 0  # rank 0 prints and writes
    scores = result.pop("scores", None)
    if args.scores:
        Path(args.scores).parent.mkdir(parents=True, exist_ok=True)
        np.save(args.scores, scores)
    model_name = " + ".join(ckpt.config.model.name + views_label(ckpt.config) for ckpt in checkpoints)
    title = (f"{model_name} on {args.data} [{args.split}, {args.protocol}]: "
             f"{result['n_images']} images, {result['n_captions']} captions, {result['seconds']:.1f} s")
    print(format_table(result, title))
    if "hubness" in result:
        print(hubness_line("raw", result["hubness"]))
    if "normalised" in result:
        print(format_table(result["normalised"], f"with {args.normalise} ({DEFAULTS[args.normalise].label()}): "
                                                 "t2i normalised, i2t raw"))
        print(hubness_line(args.normalise, result["normalised"]["hubness"]))
    if args.by_vocabulary:
        print(vocabulary_lines(result))
    for member in result.get("members", []):
        print(f"  alone: {member['checkpoint']} at {member['image_size']} px: rsum {member['rsum']:.1f}")
    if args.json_out:
        out = {k: result[k] for k in ("i2t", "t2i", "rsum", "n_images", "n_captions", "seconds", "protocol")}
        for key in ("hubness", "normalised", "by_vocabulary", "concept_probe", "concept_search", "members"):
            if key in result:
                out[key] = result[key]
        out["checkpoint"] = " + ".join(args.checkpoint)
        out["peak_rss_mb"] = peak_rss_mb()  # the whole process: data, model and the engine's tiles
        out["model"] = model_name
        out["processes"] = world_size()
        out["threads"] = torch.get_num_threads()  # per process: the engine's one-thread workers on the CPU
        out["device"], out["precision"] = str(device), precision
        if len(checkpoints) > 1:
            out["ensemble"] = list(args.checkpoint)
        if len(members) > 1:
            out["ensemble_norm"] = args.ensemble_norm
        if any(ckpt.config.eval.score_sizes for ckpt in checkpoints):  # test-time views: one entry per checkpoint
            out["score_sizes"] = [[ckpt.config.features.image_size, *ckpt.config.eval.score_sizes]
                                  for ckpt in checkpoints]
        if args.overrides:  # e.g. a test-time features.image_size: the figures are not the saved config's
            out["overrides"] = list(args.overrides)
        out["provenance"] = [run_provenance(path) for path in args.checkpoint]  # what trained each model
        out["eval_commit"] = code_commit()
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(out, indent=2), encoding="utf-8")
    return 0


def member_figures(member_scores, owner, views) -> list[dict]:
    """Each ensemble member's own figures (one checkpoint at one grid: ``views``, (path, image size) per
    member), from its score matrix: what every view and checkpoint brings, with no second scoring."""
    from itm.evaluation.metrics import retrieval_metrics

    figures = []
    for scores, (path, size) in zip(member_scores, views, strict=True):
        metrics = retrieval_metrics(scores, owner)
        figures.append({"checkpoint": path, "image_size": size, **{k: metrics[k] for k in ("i2t", "t2i", "rsum")}})
    return figures


def normalised_report(members, checkpoints, member_scores, owner, norm, ensemble_norm: str, precision: str) -> dict:
    """``evaluate_normalised`` with each member's photos scored against the caption bank."""
    from itm.evaluation.engine import score_all_pairs
    from itm.evaluation.evaluate import evaluate_normalised
    from itm.pipeline import encoded_bank

    banks = [score_all_pairs(m.model, m.features, encoded_bank(ckpt.config, ckpt.vocab, norm.bank_size),
                             ckpt.config.eval.memory_budget_mb, ckpt.config.eval.caption_tile, precision=precision)
             for m, ckpt in zip(members, checkpoints, strict=True)]
    return evaluate_normalised(member_scores, banks, owner, norm, ensemble_norm)


def hubness_line(label: str, figures: dict) -> str:
    return (f"hubness ({label}, text -> photo top {figures['k']}): N{figures['k']} skewness "
            f"{figures['n_k_skewness']:.2f}, the most frequent top photo {100 * figures['top1_share']:.1f}% of "
            f"queries, {100 * figures['never_in_top_k']:.1f}% of photos in no top {figures['k']}")


def views_label(config) -> str:
    """" at 260 + 416 px" for a model scored over several grids (``eval.score_sizes``), else ""."""
    sizes = [config.features.image_size, *config.eval.score_sizes]
    return f" at {' + '.join(str(s) for s in sizes)} px" if len(sizes) > 1 else ""


def vocabulary_report(checkpoints, splits, members, scores, config, normalise: str) -> dict:
    """``--by-vocabulary``: the split's captions by vocabulary group, and the concept probe; ``checkpoints``:
    each member's (a model scored over several grids is several members). "Seen" words are the first
    checkpoint's training words (an ensemble's members share a training set)."""
    from itm.data.encode import encode_captions
    from itm.evaluation.evaluate import evaluate_vocabulary
    from itm.evaluation.vocabulary import has_unseen_word, probe_words

    seen = set(checkpoints[0].vocab.to_list())
    tokens, owner = splits[0].dataset.caption_tokens()
    unseen = has_unseen_word(tokens, seen, config.data.max_words)
    photos = probe_words(tokens, owner, seen)
    queries = [["a", word] for word in photos]
    probes = [encode_captions(queries, ckpt.vocab, ckpt.config.data.max_words) for ckpt in checkpoints] if queries \
        else []
    text_side = (tokens, seen, config.data.max_words)
    return evaluate_vocabulary(members, scores, owner, unseen, photos, probes, config.eval.memory_budget_mb,
                               normalise, text_side, concept_evidence(config, splits[0]))


def concept_evidence(config, split):
    """words -> (n_images,) the backbone's ImageNet evidence for them in the split's photos, or None
    when the features have no grid or the backbone no classifier over it (then no concept figures)."""
    from itm.errors import ItmError
    from itm.features.concepts import cached_concept_maps

    if split.features.grid_shape is None:
        return None
    try:
        concepts = cached_concept_maps(config.features.backbone, config.features.weights)
    except ItmError:
        return None
    probs = concepts.probabilities(split.features.regions).numpy()  # (n_images, K), once
    return lambda words: concepts.evidence_from(probs, words)


def vocabulary_lines(result: dict) -> str:
    """The --by-vocabulary figures as a few printed lines."""
    lines = ["captions by vocabulary (seen: every word in the training captions)"]
    for group, r in result["by_vocabulary"].items():
        t2i, i2t = r["t2i"], r["i2t"]
        lines.append(f"  {group:<7} {r['captions']:>6} captions  t2i R@1/5/10 {t2i['r1']:5.1f} {t2i['r5']:5.1f} "
                     f"{t2i['r10']:5.1f}   i2t R@1/5/10 {i2t['r1']:5.1f} {i2t['r5']:5.1f} {i2t['r10']:5.1f}")
    probe = result["concept_probe"]
    lines.append(f"concept probe ('a WORD', {probe['words']} unseen words naming 2+ photos): recall@{probe['k']} "
                 f"{probe['recall']:.1f} (chance {probe['chance']:.1f})")
    search = result.get("concept_search")
    if search:
        plain, looked = search["plain"], search["with_concepts"]
        low, high = search["unseen_r1_change_interval"]
        lines.append(f"text queries with concepts ({search['captions_changed']} captions' unseen words name ImageNet "
                     f"classes): t2i R@1 seen {looked['seen']['t2i']['r1']:.1f}, unseen {plain['unseen']['t2i']['r1']:.1f} "
                     f"-> {looked['unseen']['t2i']['r1']:.1f} (change 95% interval over photos {low:+.1f}, {high:+.1f}); "
                     f"probe recall@{probe['k']} {search['probe_with_concepts']['recall']:.1f}")
    return "\n".join(lines)


def run_provenance(checkpoint: str) -> dict:
    """What trained a checkpoint, from its run folder's summary.json (``PROVENANCE_KEYS``); a checkpoint
    outside a run folder, or from a run before provenance was kept, says which keys it lacks."""
    from itm.training.run import PROVENANCE_KEYS

    folder = Path(checkpoint) if Path(checkpoint).is_dir() else Path(checkpoint).parent
    try:
        summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        summary = {}
    record = {"checkpoint": checkpoint, **{k: summary[k] for k in PROVENANCE_KEYS if k in summary}}
    missing = [k for k in PROVENANCE_KEYS if k not in summary]
    if missing:
        record["not_recorded"] = missing
    return record


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports KiB, macOS bytes)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)
