"""Put two trained runs into the package as its shipped models, and measure the shipped files.

    python scripts/ship_models.py --rerank runs/flickr8k/bssan_align05 --shortlist runs/flickr8k/dual_seed0 \\
        --data ../shared/data/flickr8k \\
        --rerank-command "bash scripts/experiment.sh bssan_align05 configs/bssan_cpu_lite2.yaml --set train.seed=0 ..." \\
        --shortlist-command "bash scripts/experiment.sh dual_seed0 configs/dual_cpu.yaml ..."

Each run's ``best.pt`` is rewritten with float16 weights (half the bytes; they load into float32
models) to ``src/itm/assets/models/{bssan,dual}.pt``. The shipped files themselves, not the runs,
are then evaluated on the Flickr8k 1K test split with ``itm eval`` (JSON in
``results/flickr8k/shipped_*.json``; the re-ranker's score matrix in ``runs/shipped_bssan_scores.npy``
for ``benchmarks/search_quality.py --exact-scores``), and ``card.json`` records the runs, the
commands, the training summaries and those metrics.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from itm import __version__
from itm.checkpoint import read_payload, save_atomic
from itm.features.cache import content_key
from itm.shipped import ROLES, shipped_folder

ROOT = Path(__file__).resolve().parent.parent


def half_payload(run: Path) -> dict:
    """The run's best checkpoint with its floating-point weights in float16."""
    payload = read_payload(run)
    payload["model"] = {k: v.half() if v.is_floating_point() else v for k, v in payload["model"].items()}
    return payload


def evaluate(path: Path, data: str, name: str, scores: Path | None) -> dict:
    out = ROOT / "results" / "flickr8k" / f"shipped_{name}.json"
    command = [sys.executable, "-m", "itm", "eval", "--checkpoint", str(path), "--data", data, "--split", "test",
               "--json", str(out), "--no-progress"] + (["--scores", str(scores)] if scores else [])
    subprocess.run(command, check=True)
    return json.loads(out.read_text(encoding="utf-8"))


def training_summary(run: Path) -> dict:
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    return {k: summary[k] for k in ("model", "epochs", "train_seconds", "best_val_rsum", "parameters") if k in summary}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rerank", required=True, type=Path, help="run folder of the cross-attention matcher")
    parser.add_argument("--shortlist", required=True, type=Path, help="run folder of the dual encoder")
    parser.add_argument("--data", required=True)
    parser.add_argument("--rerank-command", required=True, help="the command that trained --rerank")
    parser.add_argument("--shortlist-command", required=True, help="the command that trained --shortlist")
    parser.add_argument("--explain-image-size", type=int, default=416,
                        help="the re-ranker's eval.explain_image_size (its pictures' grid; docs/explain.md)")
    args = parser.parse_args(argv)
    folder = shipped_folder()
    folder.mkdir(parents=True, exist_ok=True)
    card = {"itm_version": __version__, "data": "Flickr8k (Karpathy split): trained on train, "
            "best epoch chosen on val, measured on the 1K test split", "models": {}}
    for role, run, command in (("rerank", args.rerank, args.rerank_command),
                               ("shortlist", args.shortlist, args.shortlist_command)):
        name = ROLES[role]
        path = folder / f"{name}.pt"
        payload = half_payload(run)
        if role == "rerank":
            payload["config"].setdefault("eval", {})["explain_image_size"] = args.explain_image_size
        save_atomic(payload, path)
        scores = ROOT / "runs" / f"shipped_{name}_scores.npy" if role == "rerank" else None
        metrics = evaluate(path, args.data, name, scores)
        card["models"][name] = {
            "role": role, "file": path.name, "bytes": path.stat().st_size, "sha1": content_key(path.read_bytes()),
            "trained_by": command, "run": str(run), "training": training_summary(run),
            "flickr8k_test": {k: metrics[k] for k in ("i2t", "t2i", "rsum")},
            "weights": "float16 on disk, float32 when loaded; the test metrics are the shipped file's",
        }
        print(f"{name}: {path.stat().st_size / 1e6:.1f} MB, Flickr8k test rsum {metrics['rsum']:.1f}")
    (folder / "card.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
