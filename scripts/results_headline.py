"""Print the headline table of docs/results.md ("Today's headline") from the JSONs in results/.

Each row below names its model, the JSONs behind its figure (one per seed) and how they combine:
one file is one run's rsum; several are the mean and sample standard deviation (n - 1) of their
unrounded rsums, each seed shown to one decimal. A figure scored on two grids (or any ensemble) is
read from the file `scripts/ensembles.py` wrote: a list of combinations, the one whose "members" are
named, its z-scored rsum ("rsum_zscore", what `itm eval --checkpoint A B` prints).

    python scripts/results_headline.py            # print the table
    python scripts/results_headline.py --check    # exit 1, naming the rows, if docs/results.md's table differs
    python scripts/results_headline.py --write    # put the printed table into docs/results.md

tests/test_results_docs.py runs the check, so a figure in the table cannot drift from its JSONs.
"""

from __future__ import annotations

import json
import os
import statistics
import string
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "results.md"
HEADING = "## Today's headline"
HEADER = ["| model (config) | test rsum | runs | commands and details | from `results/` |", "|---|---|---|---|---|"]

ALNUM = string.ascii_letters + string.digits
Source = str | tuple[str, tuple[str, ...]]  # an itm eval JSON, or (ensembles.py JSON, the members named)


@dataclass(frozen=True)
class Row:
    model: str  # the first cell: the model and its config
    sources: tuple[Source, ...]  # one per seed, paths relative to results/
    runs: str  # the third cell; a single source must say "one run"
    details: str  # the fourth cell: where the commands are
    bold: bool = True


def three_seeds(stem: str) -> tuple[str, ...]:
    """The JSONs of runs ``<stem>0`` to ``<stem>2``."""
    return tuple(f"flickr8k/{stem}{seed}.json" for seed in range(3))


def views(name: str, *members: str) -> tuple[str, tuple[str, ...]]:
    return (f"flickr8k/views/{name}.json", members)


ABL_GRIDS = "[ablations.md](results/ablations.md#two-grids-at-test-time-the-same-weights-scored-at-260-and-416-px-issue-35)"
MODELS_19 = "[models.md](results/models.md#caan-and-mlasm-beside-bssan-issue-19)"
VOCAB_OPEN = "[vocabulary.md](results/vocabulary.md#bssan-and-caan-on-the-open-text-side)"

ROWS = (
    Row("CAAN trained on both grids and distilled from the shipped BSSAN + CAAN + MLASM, scored on two grids "
        "(`caan_cpu`, `train.image_sizes: [416]`, `train.distill_from`, 10 epochs, `eval.score_sizes: [416]`; runs "
        "`caan_ms_distill_seed0-2`; seed 0 ships as `caan.pt`)",
        tuple(f"flickr8k/caan_ms_distill_seed{s}.json" for s in range(3)), "three seeds",
        "[ensembles.md](results/ensembles.md#one-model-at-280-issue-48-the-levers-so-far)"),
    Row("CAAN distilled from BSSAN x 2 + MLASM, scored on two grids (`caan_cpu`, `train.distill_from`, 8 epochs, "
        "`eval.score_sizes: [416]`: the 9 x 9 and 13 x 13 views' z-scored mean, twice the scoring cost)",
        tuple(views("caan_distill_views", f"caan_distill_seed{s}", f"caan_distill_seed{s}_416") for s in range(3)),
        "three seeds", ABL_GRIDS),
    Row("BSSAN scored on two grids (`bssan_cpu_lite2`, `eval.score_sizes: [416]`; seed 0 the shipped file, runs "
        "`bssan_open_seed1-2`)",
        (views("bssan_shipped_views", "bssan_s0", "bssan_s0_416"), views("bssan_s1_views", "bssan_s1", "bssan_s1_416"),
         views("bssan_s2_views", "bssan_s2", "bssan_s2_416")),
        "three seeds", ABL_GRIDS),
    Row("MLASM scored on two grids (`mlasm_cpu`, `eval.score_sizes: [416]`, runs `mlasm_unconditioned_seed0-2`)",
        tuple(views("mlasm_unconditioned_views", f"mlasm_unconditioned_seed{s}", f"mlasm_unconditioned_seed{s}_416")
              for s in range(3)),
        "three seeds", ABL_GRIDS),
    Row("BSSAN trained on the 13 x 13 grid (`bssan_cpu_lite2`, `features.image_size=416`, `eval.score_sizes=[]`, "
        "runs `bssan_416_seed0-2`; about twice the training)",
        three_seeds("bssan_416_seed"),
        "three seeds", "[ablations.md](results/ablations.md#bssan-trained-on-the-finer-grid-issue-35)"),
    Row("CAAN distilled from BSSAN x 2 + MLASM (`caan_cpu`, `train.distill_from`, 8 epochs)",
        three_seeds("caan_distill_seed"),
        "three seeds", "[ensembles.md](results/ensembles.md#distillation-caan-taught-by-bssan-x-2--mlasm-issue-35)"),
    Row("CAAN (`caan_cpu` before issue 35's `eval.score_sizes`: its trained grid alone)",
        three_seeds("caan_seed"), "three seeds", MODELS_19),
    Row("BSSAN (`bssan_cpu_lite2`, with the alignment term `align_weight` 0.5)",
        ("flickr8k/bssan_align05.json", "flickr8k/bssan_align05_seed1.json", "flickr8k/bssan_align05_seed2.json"),
        "three seeds", "[grounding.md](results/grounding.md#the-weak-word-region-alignment-term-issue-22)"),
    Row("BSSAN on the open text side (`bssan_cpu_lite2`, `align_weight` 0.5; seed 0 the shipped file, runs "
        "`bssan_open_seed1-2`, read with the open vocabulary)",
        ("flickr8k/open_vocab/shipped_bssan_open.json", "flickr8k/bssan_open_seed1.json", "flickr8k/bssan_open_seed2.json"),
        "three seeds", VOCAB_OPEN),
    Row("CAAN on the open text side (`caan_cpu`, run `caan_open_seed0`)",
        ("flickr8k/caan_open_seed0.json",), "one run", VOCAB_OPEN, bold=False),
    Row("MLASM `unconditioned` (`mlasm_cpu` since issue 35, runs `mlasm_unconditioned_seed0-2`, open text side)",
        three_seeds("mlasm_unconditioned_seed"),
        "three seeds", "[ablations.md](results/ablations.md#mlasm-unconditioned-three-seeds-issue-35)"),
    Row("MLASM `pairwise` (`mlasm_cpu` before issue 35)",
        three_seeds("mlasm_seed"), "three seeds", MODELS_19),
    Row("dual encoder (`dual_cpu`, runs `dual_open_seed0-2`, all 16 epochs, read with the open vocabulary)",
        three_seeds("dual_open_seed"),
        "three seeds", "[vocabulary.md](results/vocabulary.md#the-dual-encoder-trained-again-three-seeds-the-open-text-side)"),
    Row("dual encoder (`dual_cpu`, run `dual_seed0`)", ("flickr8k/dual_seed0.json",),
        "**one run** (seed 0), not a three-seed mean; its 20-minute budget stopped it during epoch 16", MODELS_19),
    Row("BSSAN without the alignment term (`bssan_cpu_lite2` before issue 22)",
        tuple(f"flickr8k/{name}.json" for name in ("aug", "aug_seed1", "aug_seed2", "aug_seed3", "aug_seed4", "aug_seed5")),
        "six seeds; the budget cut three (`aug`, `aug_seed2`, `aug_seed3`) at about 11 of their 12 epochs",
        "[ablations.md](results/ablations.md#three-more-seeds-of-the-best-configuration-six-runs-test-rsum-2231-2441-mean-2349)",
        bold=False),
    Row("dual-encoder yardstick (`scripts/dual_baseline.py`, Lite2; the script was removed in issue 32, see the linked page)",
        ("flickr8k/dual_lite2.json",), "one run",
        "[models.md](results/models.md#the-dual-encoder-yardstick-on-the-same-features)", bold=False),
)


def rsum(source: Source, root: Path) -> float:
    """The unrounded rsum of one seed: an itm eval JSON's, or the named combination's z-scored one."""
    if isinstance(source, str):
        return float(json.loads((root / source).read_text(encoding="utf-8"))["rsum"])
    path, members = source
    matches = [c for c in json.loads((root / path).read_text(encoding="utf-8")) if tuple(c["members"]) == members]
    if len(matches) != 1:
        raise ValueError(f"{path}: {len(matches)} combinations of {members}, expected one")
    return float(matches[0]["rsum_zscore"])


def figure(values: list[float], bold: bool) -> str:
    """The rsum cell: one run's value, or the mean, its sample sd and each seed, from unrounded values."""
    mean = f"**{statistics.mean(values):.1f}**" if bold else f"{statistics.mean(values):.1f}"
    if len(values) == 1:
        return mean
    seeds = " / ".join(f"{v:.1f}" for v in values)
    if len(values) > 3:  # many seeds: their range
        seeds = f"{min(values):.1f}-{max(values):.1f}"
    return f"{mean} mean, sd {statistics.stdev(values):.1f} ({seeds})"


def files(sources: tuple[Source, ...]) -> str:
    """The row's JSONs in one cell: their common start and end once (cut at a "_", "/" or "."), the rest in braces."""
    paths = list(dict.fromkeys(s if isinstance(s, str) else s[0] for s in sources))
    if len(paths) == 1:
        return f"`{paths[0]}`"
    head = os.path.commonprefix(paths)
    tail = os.path.commonprefix([p[::-1] for p in paths])[::-1]
    tail = tail[max(0, len(head) + len(tail) - min(map(len, paths))):]  # the two may not overlap
    head, tail = head.rstrip(ALNUM), tail.lstrip(ALNUM)
    return f"`{head}{{{','.join(p[len(head):len(p) - len(tail)] for p in paths)}}}{tail}`"


def table(root: Path = REPO / "results") -> list[str]:
    lines = list(HEADER)
    for row in ROWS:
        if (len(row.sources) == 1) != ("one run" in row.runs):
            raise ValueError(f"{row.model}: a single source must be called one run, and only it")
        value = figure([rsum(s, root) for s in row.sources], row.bold)
        lines.append(f"| {row.model} | {value} | {row.runs} | {row.details} | {files(row.sources)} |")
    return lines


def doc_table(text: str) -> tuple[int, int]:
    """The line span [start, end) of the first table after the headline heading in docs/results.md."""
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith(HEADING))
    start = next(i for i in range(at, len(lines)) if lines[i].startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return start, end


def differences(doc_text: str, expected: list[str]) -> list[str]:
    """Each row of the document's headline table that is not what the JSONs give, said in one line."""
    start, end = doc_table(doc_text)
    stated = doc_text.splitlines()[start:end]
    problems = []
    for i in range(max(len(stated), len(expected))):
        got = stated[i] if i < len(stated) else "(missing)"
        want = expected[i] if i < len(expected) else "(no such row)"
        if got != want:
            problems.append(f"row {i - 1}: docs/results.md has\n  {got}\nresults/ gives\n  {want}")
    return problems


def main(argv: list[str]) -> int:
    expected = table()
    if argv[:1] == ["--check"]:
        problems = differences(DOC.read_text(encoding="utf-8"), expected)
        print("\n".join(problems) or "docs/results.md's headline table matches results/")
        return 1 if problems else 0
    if argv[:1] == ["--write"]:
        text = DOC.read_text(encoding="utf-8")
        start, end = doc_table(text)
        lines = text.splitlines()
        DOC.write_text("\n".join(lines[:start] + expected + lines[end:]) + "\n", encoding="utf-8")
        return 0
    print("\n".join(expected))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
