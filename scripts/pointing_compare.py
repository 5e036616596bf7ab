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

from itm.errors import DataError
from itm.evaluation.pointing import cases_of_run, comparison_groups, paired_difference


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--json", dest="json_out", type=Path)
    args = parser.parse_args(argv)
    try:
        before, after = cases_of_run(args.before), cases_of_run(args.after)
    except DataError as exc:
        raise SystemExit(f"pointing_compare.py: {exc}") from None
    out = {}
    for name, group in comparison_groups(after).items():
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
