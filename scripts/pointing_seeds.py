"""Several seeds' pointing games on the same cases, pooled: the seeds' mean hit - centre with its 95%
interval by a bootstrap over photos (each photo carries its cases from every seed, so the interval
covers the photos' variation for the seeds' average), overall, in each half of the photos and by
whether the word has a concept map; each seed's own figures beside it.

    python scripts/pointing_seeds.py RUN.json [RUN.json ...] [--json OUT]

RUN: ``itm pointing-game --json`` files of the same method, data and grid (they hold their ``cases``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from itm.errors import DataError
from itm.evaluation.pointing import cases_of_run, comparison_groups, photo_bootstrap


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--json", dest="json_out", type=Path)
    args = parser.parse_args(argv)
    try:
        runs = [cases_of_run(path) for path in args.runs]
    except DataError as exc:
        raise SystemExit(f"pointing_seeds.py: {exc}") from None
    keys = [sorted((c.image, c.caption, c.position) for c in run) for run in runs]
    if any(k != keys[0] for k in keys):
        raise SystemExit("pointing_seeds.py: the runs hold different cases (another data set, grid or word table)")
    pooled = [case for run in runs for case in run]
    out = {"runs": [str(p) for p in args.runs]}
    for name, group in comparison_groups(pooled).items():
        boot = photo_bootstrap(group)
        chosen = {id(c) for c in group}
        per_seed = [photo_bootstrap([c for c in run if id(c) in chosen])["hit_minus_centre"] for run in runs]
        out[name] = {"cases_per_seed": len(group) // len(runs), "photos": boot["photos"],
                     "hit_minus_centre": boot["hit_minus_centre"], "interval": boot["hit_minus_centre_interval"],
                     "per_seed": per_seed}
        low, high = boot["hit_minus_centre_interval"]
        print(f"{name:<20} {len(group) // len(runs):>4} cases, {boot['photos']:>3} photos: hit - centre "
              f"{boot['hit_minus_centre']:+.1f} [{low:+.1f}, {high:+.1f}]   seeds: "
              + " / ".join(f"{v:+.1f}" for v in per_seed))
    if args.json_out:
        args.json_out.write_text(json.dumps(out, indent=2), encoding="utf-8")
    return out


if __name__ == "__main__":
    main()
