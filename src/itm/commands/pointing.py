"""``itm pointing-game``: does a model's word attention point at the objects the words name?"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from itm.commands import add_device_argument, add_scoring_set_argument

HELP = "pointing game: hit rate of each named object's peak word attention inside its boxes"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint file or run folder")
    parser.add_argument("--data", required=True, help="Karpathy-format folder (e.g. ../shared/data/coco_boxes_dev)")
    parser.add_argument("--boxes", required=True, help="COCO instances JSON with the photos' boxes")
    parser.add_argument("--split", default="test")
    add_scoring_set_argument(parser)
    parser.add_argument("--synonyms", help="JSON {word: category} added to the built-in word table")
    parser.add_argument("--method", default="attention",
                        help="attention: the peak cell of the word's words-over-regions map (default); objects: "
                             "the centre of the object proposal most attended with the word (a model with a map "
                             "between objects and words); gradient: the peak cell of the Grad-CAM map of the "
                             "query 'a WORD' (any model reading the region grid); concept: the peak cell of the "
                             "backbone's ImageNet classifier for the classes the word names, of the attention map "
                             "for a word naming none (evidence of where the thing is, not of the model's reasons); "
                             "zero-shot: concept, and for a word whose own classes the photo does not show, the map "
                             "of the photo's likeliest classes related to it (ConSE); "
                             "attention+concept: both maps scaled to 0..1, summed")
    parser.add_argument("--fuse-sizes", type=int, nargs="+", default=[], metavar="PX",
                        help="also extract the photos at these sizes and fuse each word's maps over all the grids "
                             "into one over the finest (any method but objects), e.g. --fuse-sizes 416 512")
    parser.add_argument("--min-cases", type=int, default=5, help="categories with fewer cases are not flagged at 0%%")
    parser.add_argument("--json", dest="json_out", metavar="OUT", help="write the result as JSON")
    parser.add_argument("--record", action="store_true",
                        help="with --method attention: keep the result's hit - centre figures in the checkpoint file, "
                             "so that its explanations label the attention panels by them instead of 'a guess'")
    parser.add_argument("--pictures", metavar="DIR", help="draw misses of the worst categories into DIR")
    parser.add_argument("--categories", metavar="NAMES",
                        help="with --pictures: draw these categories' misses instead (comma-separated, e.g. dog,sink)")
    add_device_argument(parser)


def run(args: argparse.Namespace) -> int:
    from itm.checkpoint import load_checkpoint
    from itm.data.load import load_dataset
    from itm.devices import resolve_device
    from itm.errors import ItmError
    from itm.evaluation.grounding import COMBINE_CONCEPT, pointing_cases
    from itm.evaluation.pointing import cases_record, read_coco_boxes, read_synonyms, summarise, word_table
    from itm.pipeline import at_image_size, prepare_split

    if args.record and (args.method != "attention" or args.fuse_sizes):
        raise ItmError("--record keeps evidence about the model's own attention: only with --method attention "
                       "and no --fuse-sizes (the explanation sheet draws one grid)")
    device = resolve_device(args.device)
    boxes, categories = read_coco_boxes(args.boxes)
    words = word_table(categories, read_synonyms(args.synonyms) if args.synonyms else None)
    ckpt = load_checkpoint(args.checkpoint, args.overrides, device=device, explaining=True)
    config = ckpt.config
    dataset = load_dataset(args.data, args.split)
    split = prepare_split(dataset, config, ckpt.vocab, progress=False, device=device)
    others = tuple(prepare_split(dataset, at_image_size(config, size), ckpt.vocab, progress=False, device=device)
                   for size in args.fuse_sizes)
    from itm.features.concepts import concept_maps_for

    try:  # the same backbone at every fused size
        concepts = concept_maps_for(config.features)
    except ItmError:
        if args.method in COMBINE_CONCEPT:
            raise
        concepts = None  # no classifier over the grid: the cases are not split by concept map
    cases = pointing_cases(ckpt.model, split, boxes, words, args.method, others, encode=query_encoder(ckpt),
                           concepts=concepts)
    result = summarise(cases, args.min_cases, seen=set(ckpt.vocab.to_list()))
    # cells index the finest grid when maps of several sizes were fused
    shown = max((split, *others), key=lambda s: s.features.grid_shape[0] * s.features.grid_shape[1])
    rows, cols = shown.features.grid_shape
    fused = f", fused from {', '.join(str(s) for s in [config.features.image_size, *args.fuse_sizes])} px" \
        if others else ""
    print(format_summary(result, f"{config.model.name} on {args.data}, {rows} x {cols} grid "
                                 f"({config.features.image_size} px{fused}), method {args.method}"))
    if args.json_out:
        result.update(checkpoint=str(args.checkpoint), model=config.model.name, data=str(args.data), method=args.method,
                      fuse_sizes=[config.features.image_size, *args.fuse_sizes] if args.fuse_sizes else [],
                      grid=[rows, cols], image_size=config.features.image_size, overrides=args.overrides,
                      cases=cases_record(cases))  # for paired comparisons (scripts/pointing_compare.py)
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(result, indent=2), encoding="utf-8")
    if args.record:
        record_evidence(args, result, [rows, cols])
    if args.pictures:
        from itm.viz.pointing import draw_worst_misses

        names = [n.strip() for n in args.categories.split(",") if n.strip()] if args.categories else None
        for path in draw_worst_misses(cases, result, shown, Path(args.pictures), boxes=boxes, names=names):
            print(f"wrote {path}")
    return 0


def record_evidence(args: argparse.Namespace, result: dict, grid: list[int]) -> None:
    """``--record``: the attention's figures into the checkpoint file (``pointing.attention_evidence``)."""
    from itm.checkpoint import record_in_checkpoint
    from itm.evaluation.pointing import EVIDENCE_KEY, attention_evidence

    sets = "".join(f" --set {text}" for text in args.overrides)
    command = f"itm pointing-game --data {args.data} --boxes {args.boxes} --split {args.split}{sets} --record"
    if result.get("by_concept_map", {}).get("without") is None:
        print("note: the backbone has no classifier over its map, so the evidence says nothing of the words "
              "the explanation sheet draws attention for")
    path = record_in_checkpoint(args.checkpoint, EVIDENCE_KEY,
                                attention_evidence(result, str(args.data), grid, command))
    print(f"recorded the attention's figures in {path}")


def query_encoder(ckpt):
    """Token lists -> the checkpoint's model inputs (the gradient method's "a WORD" queries)."""
    from itm.data.encode import encode_captions
    from itm.pipeline import word_vectors

    def encode(token_lists):
        return encode_captions(token_lists, ckpt.vocab, ckpt.config.data.max_words,
                               word_vectors(token_lists, ckpt.config, progress=False))

    return encode


def interval_line(boot: dict) -> str:
    """The bootstrap's intervals in one line."""
    low, high = boot["hit"]
    d_low, d_high = boot["hit_minus_centre_interval"]
    return (f"{100 * boot['confidence']:.0f}% intervals over {boot['photos']} photos: hit {low:.1f}-{high:.1f}%, "
            f"hit - centre {boot['hit_minus_centre']:+.1f} [{d_low:+.1f}, {d_high:+.1f}]")


def format_summary(result: dict, title: str) -> str:
    overall = result["overall"]
    lines = [f"{title}: {overall['cases']} cases",
             f"  hit {overall['hit']:.1f}%   random cell {overall['random_cell']:.1f}%   "
             f"centre cell {overall['centre_cell']:.1f}%",
             "  " + interval_line(result["bootstrap"])]
    for name, half in result["halves"].items():
        lines.append(f"  half {name} ({half['photos']} photos, {half['cases']} cases): hit {half['hit']:.1f}%, centre "
                     f"{half['centre_cell']:.1f}%; " + interval_line(half["bootstrap"]))
    for name, group in result.get("by_vocabulary", {}).items():
        lines.append(f"  {name} words ({group['cases']} cases, {group['photos']} photos): hit {group['hit']:.1f}%, "
                     f"centre {group['centre_cell']:.1f}%; " + interval_line(group["bootstrap"]))
    for name, group in result.get("by_concept_map", {}).items():
        lines.append(f"  words {name} a concept map ({group['cases']} cases, {group['photos']} photos): hit "
                     f"{group['hit']:.1f}%, centre {group['centre_cell']:.1f}%; " + interval_line(group["bootstrap"]))
    for name, group in result.get("by_map", {}).items():
        lines.append(f"  pointed by its {name} map ({group['cases']} cases, {group['photos']} photos): hit "
                     f"{group['hit']:.1f}%, centre {group['centre_cell']:.1f}%; " + interval_line(group["bootstrap"]))
    if result.get("by_peak"):
        lines.append("  by how peaked the map was (max / mean), thirds: " + "; ".join(
            f"{name} {band['peak'][0]:.1f}-{band['peak'][1]:.1f}: hit {band['hit']:.1f}%, centre "
            f"{band['centre_cell']:.1f}%" for name, band in result["by_peak"].items()))
    lines.append(f"  {'category':<16}{'cases':>6}{'photos':>7}{'hit %':>8}{'random %':>10}{'centre %':>10}"
                 f"{'reachable %':>13}")
    for name, r in sorted(result["per_category"].items(), key=lambda kv: (kv[1]["hit"], -kv[1]["cases"])):
        lines.append(f"  {name:<16}{r['cases']:>6}{r['photos']:>7}{r['hit']:>8.1f}{r['random_cell']:>10.1f}{r['centre_cell']:>10.1f}"
                     f"{r['reachable']:>13.1f}")
    if result["categories_at_zero"]:
        lines.append(f"  at 0% with >= {result['min_cases']} cases ({result['photos_at_zero']} photos): "
                     f"{', '.join(result['categories_at_zero'])}")
    if result["unreachable_at_zero"]:
        lines.append(f"  of those, no box holds a cell centre (no attention on this grid can hit): "
                     f"{', '.join(result['unreachable_at_zero'])}")
    if result["categories_at_zero"]:
        lines.append(f"  at 0% with >= {result['min_cases']} reachable cases: "
                     f"{', '.join(result['reachable_at_zero']) or 'none'}")
    return "\n".join(lines)
