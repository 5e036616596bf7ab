"""Print the markdown table of results/flickr8k/*.json (the `itm eval --json` files; a benchmark's or
a demonstration's file there is passed over), with the training wall time from
runs/flickr8k/NAME/summary.json when the run folder is present, else from the JSON's own "training"
entry, which ``--keep-training NAME`` copies there (runs/ is not committed).

    python scripts/results_table.py [results/flickr8k]
    python scripts/results_table.py --keep-training NAME     # scripts/experiment.sh calls it
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def row(name: str, metrics: dict, train_seconds: float | None, epochs: int | None) -> str:
    cells = [f"{metrics[d][k]:.1f}" for d in ("i2t", "t2i") for k in ("r1", "r5", "r10")]
    medr = f"{metrics['i2t']['medr']:.0f} / {metrics['t2i']['medr']:.0f}"
    train = f"{train_seconds / 60:.1f} min, {epochs} ep" if train_seconds is not None else "-"
    if "ensemble" in metrics:  # `itm eval` with several checkpoints: the members' rows give their training
        train = f"ensemble of {len(metrics['ensemble'])} runs"
    elif str(metrics.get("checkpoint", "")).endswith("last.pt"):  # the run's last epoch, not its best.pt
        train = f"{Path(metrics['checkpoint']).parent.name}: weights of the last epoch"
    return (f"| {name} | {' / '.join(cells[:3])} | {' / '.join(cells[3:])} | {medr} | {metrics['rsum']:.1f} "
            f"| {train} | {metrics['seconds']:.0f} s |")


def keep_training(name: str, folder: str = "results/flickr8k") -> None:
    """Copy runs/flickr8k/NAME/summary.json into results/flickr8k/NAME.json under "training"."""
    path = Path(folder) / f"{name}.json"
    metrics = json.loads(path.read_text(encoding="utf-8"))
    metrics["training"] = json.loads((Path("runs/flickr8k") / name / "summary.json").read_text(encoding="utf-8"))
    path.write_text(json.dumps(metrics, indent=2), encoding="utf-8")


def main(folder: str = "results/flickr8k") -> None:
    print("| run | i2t R@1 / 5 / 10 | t2i R@1 / 5 / 10 | medr i2t / t2i | rsum | training | test scoring |")
    print("|---|---|---|---|---|---|---|")
    for path in sorted(Path(folder).glob("*.json")):
        metrics = json.loads(path.read_text(encoding="utf-8"))
        if "i2t" not in metrics:  # a benchmark's or a demonstration's file, not an itm eval one
            continue
        summary_path = Path("runs/flickr8k") / path.stem / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        summary = summary or metrics.get("training", {})  # kept in the JSON (runs/ is not committed)
        print(row(path.stem, metrics, summary.get("train_seconds"), summary.get("epochs")))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--keep-training"]:
        keep_training(*sys.argv[2:])
    else:
        main(*sys.argv[1:])
