"""docs/results.md's headline table against results/ (issue 44): every stated figure (mean, sd, each
seed, one run's value) is what scripts/results_headline.py computes from the committed JSONs, and
the check fails on a figure, a row or a JSON that disagrees. results/ is committed: no ../shared."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def load_headline():
    name = "results_headline"
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


headline = load_headline()
DOC_TEXT = (REPO / "docs" / "results.md").read_text(encoding="utf-8")


def table_rows(text: str) -> list[str]:
    start, end = headline.doc_table(text)
    return text.splitlines()[start:end]


def replace_in_row(text: str, row_start: str, old: str, new: str) -> str:
    """The document with `old` replaced by `new` in the one headline row that starts with `row_start`."""
    rows = [row for row in table_rows(text) if row.startswith(row_start)]
    assert len(rows) == 1 and old in rows[0], (row_start, old)
    return text.replace(rows[0], rows[0].replace(old, new, 1))


def test_the_headline_table_of_docs_results_is_what_results_gives():
    problems = headline.differences(DOC_TEXT, headline.table())
    assert problems == [], "run python scripts/results_headline.py --write, or fix the JSONs:\n" + "\n".join(problems)


def test_every_headline_row_names_committed_jsons_and_one_run_only_where_there_is_one():
    for row in headline.ROWS:
        for source in row.sources:
            path = source if isinstance(source, str) else source[0]
            assert (REPO / "results" / path).is_file(), path
        assert (len(row.sources) == 1) == ("one run" in row.runs), row.model
    assert len(table_rows(DOC_TEXT)) == len(headline.ROWS) + 2  # header, rule, one line a row


@pytest.mark.parametrize(
    ("row_start", "old", "new"),
    [
        ("| CAAN distilled from BSSAN x 2 + MLASM, scored on two grids", "**270.8** mean", "**270.9** mean"),  # a mean
        ("| MLASM `unconditioned`", "sd 1.6", "sd 1.7"),  # an sd from rounded seeds (the audit's finding)
        ("| BSSAN on the open text side", "sd 2.1", "sd 2.2"),
        ("| dual encoder (`dual_cpu`, runs", "**207.5**", "**207.4**"),
        ("| BSSAN trained on the 13 x 13 grid", "265.5 / 261.4", "265.5 / 261.5"),  # one seed's value
        ("| CAAN on the open text side", "| 251.7 |", "| 251.8 |"),  # one run
        ("| BSSAN without the alignment term", "(223.1-244.1)", "(223.1-244.2)"),  # a range
    ],
)
def test_a_figure_that_disagrees_with_its_jsons_fails_the_check(row_start, old, new):
    tampered = replace_in_row(DOC_TEXT, row_start, old, new)
    problems = headline.differences(tampered, headline.table())
    assert len(problems) == 1 and new in problems[0] and old in problems[0]


def test_a_missing_or_extra_row_fails_the_check():
    rows = table_rows(DOC_TEXT)
    assert headline.differences(DOC_TEXT.replace(rows[-1] + "\n", ""), headline.table())
    extra = "| a model | **300.0** mean, sd 0.1 (300.0 / 300.0 / 300.0) | three seeds | - | - |"
    assert headline.differences(DOC_TEXT.replace(rows[-1], rows[-1] + "\n" + extra), headline.table())


def test_a_json_that_changes_under_a_stated_figure_fails_the_check(tmp_path):
    root = tmp_path / "results"
    shutil.copytree(REPO / "results", root)
    path = root / "flickr8k" / "caan_seed1.json"
    metrics = json.loads(path.read_text(encoding="utf-8"))
    metrics["rsum"] += 0.3  # 252.8 -> 253.1: that seed, CAAN's mean and its sd all move
    path.write_text(json.dumps(metrics), encoding="utf-8")
    problems = headline.differences(DOC_TEXT, headline.table(root))
    assert len(problems) == 1 and "| CAAN (`caan_cpu` before" in problems[0] and "253.1" in problems[0]

    views = root / "flickr8k" / "views" / "caan_distill_views.json"  # a two-grid figure: the combination's rsum
    combinations = json.loads(views.read_text(encoding="utf-8"))
    combinations[1]["rsum_zscore"] = 262.6
    views.write_text(json.dumps(combinations), encoding="utf-8")
    assert len(headline.differences(DOC_TEXT, headline.table(root))) == 2


def test_figures_come_from_the_unrounded_values():
    # BSSAN's open seeds: 254.98 / 250.94 / 254.16 give sd 2.14; rounded first (255.0 / 250.9 / 254.2) 2.17
    assert headline.figure([254.98, 250.94, 254.16], bold=True) == "**253.4** mean, sd 2.1 (255.0 / 250.9 / 254.2)"
    # the dual encoder's: mean 207.453, against 207.433 from the rounded seeds
    assert headline.figure([205.98, 207.44, 208.94], bold=False).startswith("207.5 mean, sd 1.5")
    assert headline.figure([251.7], bold=False) == "251.7"


def test_a_two_view_figure_is_read_from_the_named_combination_only():
    root = REPO / "results"
    source = ("flickr8k/views/caan_distill_views.json", ("caan_distill_seed1", "caan_distill_seed1_416"))
    assert headline.rsum(source, root) == 272.6
    with pytest.raises(ValueError, match="0 combinations"):
        headline.rsum(("flickr8k/views/caan_distill_views.json", ("caan_distill_seed1", "caan_distill_seed2")), root)
