"""How often a misspelt caption word is read as the word meant: the old spelling rule (difflib, the
closest training word unless a table word is strictly closer, similarity at least 0.8) against the new
one (``itm.data.open_vocab.Speller``: fewest edits, a swap counting one, training words winning ties),
on the same list and the same model vocabulary.

    python scripts/spelling_eval.py --json results/spelling.json

The list (tests/data/spelling_misspellings.tsv) was made once with ``--build``, from Wikipedia's
"Lists of common misspellings/For machines" as NL-Augmenter stores it (one correction a misspelling):

    python scripts/spelling_eval.py --build spell_corrections.json
"""

from __future__ import annotations

import argparse
import difflib
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from itm.checkpoint import load_checkpoint
from itm.data.open_vocab import SPELLING_TABLE_WORDS

ROOT = Path(__file__).resolve().parents[1]
LIST = ROOT / "tests/data/spelling_misspellings.tsv"
CHECKPOINT = ROOT / "src/itm/assets/models/bssan.pt"
CAPTIONS = ROOT / "../shared/data/flickr8k/dataset_flickr8k.json"
ISSUE = [("brocoli", "broccoli"), ("tabel", "table")]  # issue 45's own query
HEADER = """# Misspellings of Flickr8k caption words, for scripts/spelling_eval.py (tab-separated: misspelling, intended word).
# Source: Wikipedia, "Wikipedia:Lists of common misspellings/For machines"
#   (https://en.wikipedia.org/wiki/Wikipedia:Lists_of_common_misspellings/For_machines), as stored by
#   GEM-benchmark/NL-Augmenter (commit b64a8efe, nlaugmenter/transformations/correct_common_misspellings/
#   spell_corrections.json: entries with one correction only). Licence: CC BY-SA 3.0 / 4.0 (Wikipedia's text licence).
# Kept: lower-case pairs whose intended word occurs in the Flickr8k captions and whose misspelling is neither in
#   the 50-d GloVe 6B table (it would be read as a word) nor a Flickr8k caption word; then the issue's two
#   (brocoli, tabel). Made with: python scripts/spelling_eval.py --build spell_corrections.json
"""


def old_rule(vocab, word: str, table_words: list[str]) -> str | None:
    """The spelling rule before issue 45 (open_vocab.py at commit 97d64f7), for the comparison."""
    stem = word[:-1] if word.endswith("s") and len(word) > 2 else None
    if stem and (stem in vocab._ids or stem in vocab.table):
        return stem
    scored = [(difflib.SequenceMatcher(None, word, close).ratio(), rank, close)
              for rank, pool in enumerate((table_words, vocab._candidates))
              for close in difflib.get_close_matches(word, pool, n=1, cutoff=0.8)]
    return max(scored)[2] if scored else None


def new_rule(vocab, word: str, table_words=None) -> str | None:
    kind, as_word = vocab.route(word)
    return as_word if kind == "spelling" else None


def build(source: Path, vocab) -> None:
    """Write the list from a {misspelling: correction} JSON (see HEADER)."""
    captions = json.loads(CAPTIONS.read_text())
    caption_words = Counter(t for im in captions["images"] for s in im["sentences"] for t in s["tokens"])
    pairs = [(m, c) for m, c in json.loads(source.read_text()).items()
             if m.isalpha() and m == m.lower() and c in caption_words and m not in caption_words
             and m not in vocab.table]
    lines = [f"{m}\t{c}" for m, c in sorted({*pairs, *ISSUE})]
    LIST.write_text(HEADER + "\n".join(lines) + "\n", encoding="utf-8")
    print(f"{len(lines)} pairs -> {LIST.relative_to(ROOT)}")


def accuracy(vocab, pairs, rule, table_words) -> dict:
    start = time.perf_counter()
    read = [rule(vocab, m, table_words) for m, _ in pairs]
    seconds = time.perf_counter() - start
    right = sum(r == c for r, (_, c) in zip(read, pairs, strict=True))
    unread = sum(r is None for r in read)
    return {"accuracy": round(right / len(pairs), 4), "right": right, "wrong": len(pairs) - right - unread,
            "unreadable": unread, "seconds_per_word": round(seconds / len(pairs), 4),
            "issue_example": {m: r for r, (m, c) in zip(read, pairs, strict=True) if (m, c) in ISSUE}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=str(CHECKPOINT))
    parser.add_argument("--build", type=Path, help="write the list from this {misspelling: word} JSON, then stop")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    vocab = load_checkpoint(args.checkpoint).vocab
    vocab.speller()  # load the table and gather the candidates outside the timing
    table_words = vocab.table.frequent(SPELLING_TABLE_WORDS)
    if args.build:
        return build(args.build, vocab)
    pairs = [tuple(line.split("\t")) for line in LIST.read_text().splitlines() if line and not line.startswith("#")]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    figures = {"command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), "commit": commit,
               "list": str(LIST.relative_to(ROOT)), "pairs": len(pairs), "checkpoint": Path(args.checkpoint).resolve().relative_to(ROOT).as_posix(),
               "old_rule (difflib, similarity >= 0.8)": accuracy(vocab, pairs, old_rule, table_words),
               "new_rule (Speller: OSA edits, training words then frequency on a tie)": accuracy(vocab, pairs, new_rule, table_words)}
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
