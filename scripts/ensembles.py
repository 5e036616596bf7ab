"""Ensembles measured from saved score matrices: each model is scored once, every combination after.

    itm eval --checkpoint RUN --data ../shared/data/flickr8k --split test --scores OUT/NAME.npy --json OUT/NAME.json
    python scripts/ensembles.py --data ../shared/data/flickr8k --split test --dir OUT \
        --ensemble bssan_s0,bssan_s1,bssan_s2 --ensemble bssan_s0,caan_s0,mlasm_s0 [--json OUT/ensembles.json]

Each NAME stands for OUT/NAME.npy (the flickr protocol's whole matrix, ``itm eval --scores``) and
OUT/NAME.json (its ``itm eval --json``: the rsum alone and the seconds its scoring took). An ensemble's
matrix is ``itm.evaluation.evaluate.combine_scores`` of its members', so the figures are those
``itm eval --checkpoint A B C --ensemble-norm ...`` prints; its cost is the sum of the members' times.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from itm.config import ENSEMBLE_NORMS
from itm.data.load import load_dataset
from itm.evaluation.evaluate import combine_scores
from itm.evaluation.metrics import retrieval_metrics


def measure(names: list[str], folder: Path, owner: np.ndarray) -> dict:
    """One ensemble's rsum under each normalisation, beside its members' own rsum and scoring time."""
    missing = [str(folder / f"{n}{ext}") for n in names for ext in (".json", ".npy") if not (folder / f"{n}{ext}").is_file()]
    if missing:  # each member needs both files (the module docstring says how to make them)
        raise SystemExit(f"ensembles.py: missing {', '.join(missing)}")
    runs = {name: json.loads((folder / f"{name}.json").read_text(encoding="utf-8")) for name in names}
    matrices = [np.load(folder / f"{name}.npy") for name in names]
    result = {"members": names, "member_rsum": {n: round(runs[n]["rsum"], 2) for n in names},
              "scoring_seconds": round(sum(runs[n]["seconds"] for n in names), 1)}
    for norm in ENSEMBLE_NORMS:
        result[f"rsum_{norm}"] = round(retrieval_metrics(combine_scores(matrices, norm), owner)["rsum"], 2)
    return result


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--dir", required=True, type=Path, help="folder of NAME.npy + NAME.json")
    parser.add_argument("--ensemble", action="append", required=True, help="comma-separated NAMEs")
    parser.add_argument("--json", dest="json_out", type=Path)
    args = parser.parse_args(argv)
    _, owner = load_dataset(args.data, args.split).split(args.split).caption_tokens()
    results = [measure(group.split(","), args.dir, owner) for group in args.ensemble]
    for r in results:
        members = ", ".join(f"{n} {v}" for n, v in r["member_rsum"].items())
        print(f"{' + '.join(r['members'])}: rsum {r['rsum_zscore']} (z-scored), {r['rsum_none']} (raw); "
              f"members {members}; scoring {r['scoring_seconds']} s")
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return results


if __name__ == "__main__":
    main()
