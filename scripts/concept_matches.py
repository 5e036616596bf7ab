"""Which ImageNet classes do the most frequent caption words reach, and which of those matches are
false? Before (any word may name a class) and after the noun check (``itm.features.concepts``:
function words, one-letter words and words whose usual reading is not a noun name none).

    python scripts/concept_matches.py [--data ../shared/data/flickr8k/dataset_flickr8k.json --top 500]

The words: the ``top`` most frequent tokens of the train split's captions. The classes: ``concepts(word)``
of the concept maps of EfficientNet-Lite2, the backbone of the shipped models. Prints the table and
writes results/concept_matches.json.

The judgement (made by reading the matches of each of the 144 words matched before the check):
a match word -> class is FALSE when
  (a) the word, as Flickr8k captions use it, is not a noun: a verb ("standing", "sits", "watches",
      "rides"), an adjective or colour ("red", "small", "orange"), an adverb ("together"), the "t"
      of "t-shirt"; every class it reaches is then a false match; or
  (b) the word is a noun but the class is not the thing it names in captions, nor a kind of it
      ("people" -> minibus, "dog" -> hotdog, "player" -> cd player, "house" -> cinema, "tank" (a
      tank top) -> the army tank, "skiing" -> the ski).
Otherwise it is right: the thing itself or a kind of it ("dog" -> collie, "car" -> sports car, "man"
-> groom, "building" -> church, "cap" -> shower cap).
"""

from __future__ import annotations

import argparse
import json
import subprocess
from collections import Counter
from pathlib import Path

# word -> the classes judged false for it ("*": every class, rule (a)); a word not listed: all right
# (a) not a noun in captions
NOT_NOUNS = ("white", "brown", "red", "blue", "standing", "small", "large", "stands", "orange", "sits", "stand",
             "rides", "together", "sit", "covered", "long", "ride", "dark", "grey", "watch", "watches", "colored",
             "t", "gray", "flying", "tall", "shallow", "wears", "set", "overlooking", "falling", "skiing", "stick")
FALSE = {
    **{w: "*" for w in NOT_NOUNS},
    # (b) a noun, not that kind of thing
    "dog": ["hotdog"], "dogs": ["hotdog"], "people": "*", "ball": ["punching bag"], "snow": "*", "person": "*",
    "front": "*", "mouth": "*", "player": ["cassette player", "cd player", "tape player"],
    "players": ["cassette player", "cd player", "tape player"], "jacket": "*", "soccer": "*", "car": ["tow truck"],
    "hair": "*", "tennis": "*", "ocean": "*", "area": "*", "helmet": ["gasmask"], "shorts": "*", "head": "*",
    "dress": "*", "dresses": "*", "slide": "*", "slides": "*", "side": "*", "track": "*",
    "horse": ["hippopotamus"], "horses": ["hippopotamus"], "motorcycle": "*", "suit": ["maillot"],
    "table": ["altar"], "river": "*", "woods": "*", "body": "*", "hockey": "*", "collar": "*",
    "cap": ["bearskin", "bottlecap", "lens cap"], "glasses": ["binoculars"],
    "light": ["beacon", "candle", "lighter"], "board": "*", "house": "*", "metal": "*",
    "drink": ["restaurant"], "bar": ["space bar", "sandbar"], "rail": "*", "puppy": "*", "nose": "*",
    "tank": "*", "truck": ["forklift"], "equipment": "*", "book": ["book jacket"],
}


def frequent_words(data: str, top: int) -> list[str]:
    images = json.loads(Path(data).read_text("utf-8"))["images"]
    counts = Counter(t for image in images if image.get("split") == "train"
                     for sentence in image["sentences"] for t in sentence["tokens"])
    return [w for w, _ in counts.most_common(top)]


def matches(concepts, words: list[str]) -> dict[str, list[str]]:
    return {w: concepts.concepts(w).names for w in words if concepts.concepts(w).found}


def false_pairs(found: dict[str, list[str]]) -> dict[str, list[str]]:
    out = {}
    for word, names in found.items():
        judged = FALSE.get(word, [])
        wrong = list(names) if judged == "*" else [n for n in names if n in judged]
        if wrong:
            out[word] = wrong
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/flickr8k/dataset_flickr8k.json")
    parser.add_argument("--top", type=int, default=500)
    parser.add_argument("--backbone", default="efficientnet_lite2")
    parser.add_argument("--json", default="results/concept_matches.json")
    args = parser.parse_args(argv)

    from itm.config import FeatureConfig
    from itm.features.concepts import NOUN, ConceptMaps, brill_tags, concept_maps_for

    words = frequent_words(args.data, args.top)
    after = concept_maps_for(FeatureConfig(backbone=args.backbone))
    if brill_tags() is None:
        raise SystemExit("textblob is not installed: the noun check cannot be measured (pip install textblob)")
    before = ConceptMaps(after.weight, after.bias, after.classes, after.table, noun=None)
    before.reading = lambda word: NOUN  # the matching as it was: any word may name a class by any route
    found = {"before": matches(before, words), "after": matches(after, words)}
    wrong = {k: false_pairs(v) for k, v in found.items()}
    summary = {k: {"words_with_a_class": len(found[k]), "pairs": sum(len(v) for v in found[k].values()),
                   "false_words": len(wrong[k]),
                   "false_words_not_nouns": sum(w in NOT_NOUNS for w in wrong[k]), "false_pairs": sum(len(v) for v in wrong[k].values())}
               for k in found}
    dropped = sorted(set(found["before"]) - set(found["after"]), key=words.index)
    lost = {w: [n for n in found["before"][w] if n not in false_pairs({w: found["before"][w]}).get(w, [])]
            for w in dropped}
    lost = {w: v for w, v in lost.items() if v}  # right matches the noun check removed

    print(f"the {len(words)} most frequent train-caption words, classes of {args.backbone}'s concept maps")
    print(f"{'':8} {'words with a class':>18} {'false words':>12} {'of them not nouns':>18} {'pairs':>6} "
          f"{'false pairs':>12}")
    for k, s in summary.items():
        print(f"{k:8} {s['words_with_a_class']:>18} {s['false_words']:>12} {s['false_words_not_nouns']:>18} "
              f"{s['pairs']:>6} {s['false_pairs']:>12}")
    for k in found:
        print(f"\nfalse matches {k} ({len(wrong[k])} words):")
        for word, names in wrong[k].items():
            shown = ", ".join(names[:4]) + (f" +{len(names) - 4}" if len(names) > 4 else "")
            print(f"  {word} -> {shown}")
    print(f"\nno longer matched ({len(dropped)}): {', '.join(dropped)}")
    print(f"right matches lost: {lost or 'none'}")
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    report = {"command": "python scripts/concept_matches.py", "data": args.data, "top": args.top,
              "backbone": args.backbone, "commit": commit, "summary": summary, "matches": found,
              "false_matches": wrong, "no_longer_matched": dropped, "right_matches_lost": lost}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1) + "\n", "utf-8")
    return report


if __name__ == "__main__":
    main()
