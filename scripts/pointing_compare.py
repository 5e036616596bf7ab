"""Two pointing-game runs on the same cases, compared pairwise: the hit rate's change with its 95%
interval by a bootstrap over photos (each photo carries all its cases in both runs), overall, in each
half of the photos and by whether the word has a concept map.

    python scripts/pointing_compare.py BEFORE.json AFTER.json [--json OUT]

BEFORE / AFTER: ``itm pointing-game --json`` files (they hold their ``cases``), e.g. a control
checkpoint and the same run trained with ``train.concept_weight``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from itm.evaluation.pointing import cases_from_record, paired_difference, photo_halves


def groups(cases):
    named = {"with a concept map": [c for c in cases if c.concept_map is True],
             "without": [c for c in cases if c.concept_map is False]}
    return {"overall": cases, **{f"half {k}": v for k, v in photo_halves(cases).items()},
            **{k: v for k, v in named.items() if v}}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--json", dest="json_out", type=Path)
    args = parser.parse_args(argv)
    runs = []
    for path in (args.before, args.after):
        record = json.loads(path.read_text(encoding="utf-8"))
        if "cases" not in record:
            raise SystemExit(f"pointing_compare.py: {path} holds no cases (written before itm pointing-game kept them)")
        runs.append(cases_from_record(record["cases"]))
    before, after = runs
    out = {}
    for name, group in groups(after).items():
        chosen = {(c.image, c.caption, c.position) for c in group}
        out[name] = paired_difference([c for c in before if (c.image, c.caption, c.position) in chosen], group)
        low, high = out[name]["interval"]
        print(f"{name:<20} {out[name]['cases']:>4} cases, {out[name]['photos']:>3} photos: "
              f"hit {out[name]['difference']:+.1f} points [{low:+.1f}, {high:+.1f}]")
    if args.json_out:
        args.json_out.write_text(json.dumps({"before": str(args.before), "after": str(args.after), **out}, indent=2),
                                 encoding="utf-8")
    return out


if __name__ == "__main__":
    main()
