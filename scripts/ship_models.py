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

    python scripts/ship_models.py --add-rerank runs/flickr8k/caan_open_seed0 runs/flickr8k/mlasm_open_seed0 \
        --add-command "bash scripts/experiment.sh caan_open_seed0 ..." "bash scripts/experiment.sh mlasm_open_seed0 ..." \
        --data ../shared/data/flickr8k [--scores bssan=OUT/bssan_s0.npy]

    python scripts/ship_models.py --self-describe

moves what loading a shipped file needs (its word table, its explanation grid), which the first
shipped files left to the card, into the files themselves, weights untouched; each rewritten file
records the sha1 it had (``earlier_sha1s``), so indexes built with it still open, and the card's
bytes and sha1 follow.

    python scripts/ship_models.py --replace-rerank caan runs/flickr8k/caan_ms_distill_seed0 \
        --replace-command "bash scripts/experiment.sh caan_ms_distill_seed0 ..." --data ../shared/data/flickr8k

``--replace-rerank NAME RUN`` puts a newer run in place of the shipped re-ranker NAME (the file keeps
its name, so indexes that name it open; their banks are re-scored by the next ``itm index``). It is
measured as ``itm eval`` measures it (all its grids, ``eval.score_sizes``) and on its trained grid
alone, the one search scores (``flickr8k_test_search_grid``; that matrix is the one the ensemble's
figures combine); the card keeps what it replaced (``replaces``). The other members' test matrices
are scored again unless ``--scores NAME=NPY`` gives them, and their card figures follow them (the
code scores a file differently as it changes: the open vocabulary, for one).

``--add-rerank`` adds re-rankers to what ships, leaving the shipped files as they are (indexes record their
checkpoints' bytes): each is written and measured as above, and the card's ``rerank_ensemble``
lists the shipped re-rankers in order, with the ensemble's Flickr8k test metrics computed from the
members' saved matrices exactly as ``itm eval --checkpoint A B C`` computes them (``--scores``: the
matrix of a shipped re-ranker, when not at ``runs/shipped_<name>_scores.npy``).
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
from itm.shipped import shipped_folder, shipped_role

ROOT = Path(__file__).resolve().parent.parent


def half_payload(run: Path) -> dict:
    """The run's best checkpoint with its floating-point weights in float16."""
    payload = read_payload(run)
    payload["model"] = {k: v.half() if v.is_floating_point() else v for k, v in payload["model"].items()}
    return payload


def evaluate(path: Path, data: str, name: str, scores: Path | None, overrides: tuple[str, ...] = ()) -> dict:
    out = ROOT / "results" / "flickr8k" / f"shipped_{name}.json"
    command = [sys.executable, "-m", "itm", "eval", "--checkpoint", str(path), "--data", data, "--split", "test",
               "--json", str(out), "--no-progress"] + (["--scores", str(scores)] if scores else [])
    for override in overrides:
        command += ["--set", override]
    subprocess.run(command, check=True)
    return json.loads(out.read_text(encoding="utf-8"))


def training_summary(run: Path) -> dict:
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    return {k: summary[k] for k in ("model", "epochs", "train_seconds", "best_val_rsum", "parameters") if k in summary}


def card_entry(role: str, path: Path, run: Path, command: str, metrics: dict) -> dict:
    return {"role": role, "file": path.name, "bytes": path.stat().st_size, "sha1": content_key(path.read_bytes()),
            "trained_by": command, "run": str(run), "training": training_summary(run),
            "flickr8k_test": {k: metrics[k] for k in ("i2t", "t2i", "rsum")},
            "weights": "float16 on disk, float32 when loaded; the test metrics are the shipped file's"}


def ensemble_metrics(matrices: list[Path], data: str) -> dict:
    """The Flickr8k test metrics of the members' saved matrices, combined as itm eval combines them."""
    import numpy as np

    from itm.data.load import load_dataset
    from itm.evaluation.evaluate import combine_scores
    from itm.evaluation.metrics import retrieval_metrics

    _, owner = load_dataset(data, "test").split("test").caption_tokens()
    metrics = retrieval_metrics(combine_scores([np.load(m) for m in matrices]), np.asarray(owner))
    return {k: metrics[k] for k in ("i2t", "t2i", "rsum")}


def add_rerankers(args) -> None:
    """``--add-rerank``: ship more re-rankers beside the shipped files, and the ensemble's card entry."""
    folder = shipped_folder()
    card = json.loads((folder / "card.json").read_text(encoding="utf-8"))
    if len(args.add_command) != len(args.add_rerank):
        raise SystemExit(f"--add-command: {len(args.add_command)} commands for {len(args.add_rerank)} runs")
    given = dict(item.split("=", 1) for item in args.scores)
    members = shipped_role("rerank")
    matrices = [Path(given.get(name, ROOT / "runs" / f"shipped_{name}_scores.npy")) for name in members]
    for run, command in zip(args.add_rerank, args.add_command, strict=True):
        payload = half_payload(run)
        name = payload["config"]["model"]["name"]
        if name in card["models"]:
            raise SystemExit(f"{run}: a shipped model '{name}' exists already")
        path = folder / f"{name}.pt"
        save_atomic(payload, path)
        scores = ROOT / "runs" / f"shipped_{name}_scores.npy"
        metrics = evaluate(path, args.data, name, scores)
        card["models"][name] = card_entry("rerank", path, run, command, metrics)
        members.append(name)
        matrices.append(scores)
        print(f"{name}: {path.stat().st_size / 1e6:.1f} MB, Flickr8k test rsum {metrics['rsum']:.1f}")
    missing = [str(m) for m in matrices if not m.is_file()]
    if missing:
        raise SystemExit(f"no saved test matrix {missing[0]}: pass --scores NAME=NPY")
    card["rerank_ensemble"] = {"members": members, "norm": "zscore",
                               "flickr8k_test": ensemble_metrics(matrices, args.data),
                               "search": "each member's scores of a query's K candidates z-scored, then averaged"}
    print(f"ensemble {' + '.join(members)}: Flickr8k test rsum {card['rerank_ensemble']['flickr8k_test']['rsum']:.1f}")
    (folder / "card.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")


def replace_reranker(args) -> None:
    """``--replace-rerank NAME RUN``: a newer run in place of the shipped re-ranker NAME, and the card."""
    folder = shipped_folder()
    card = json.loads((folder / "card.json").read_text(encoding="utf-8"))
    name, run = args.replace_rerank[0], Path(args.replace_rerank[1])
    entry = card["models"].get(name)
    if entry is None or entry["role"] != "rerank":
        raise SystemExit(f"--replace-rerank {name}: no shipped re-ranker of that name ({', '.join(card['models'])})")
    if not args.replace_command:
        raise SystemExit("--replace-command: the command that trained the run")
    path = folder / entry["file"]
    payload = half_payload(run)
    explain = read_payload(path)["config"].get("eval", {}).get("explain_image_size")
    payload["config"].setdefault("eval", {})["explain_image_size"] = explain  # the shipped pictures' grid
    save_atomic(payload, path)
    metrics = evaluate(path, args.data, name, None)  # as itm eval scores it: every grid it declares
    one_grid, scores = search_grid(path, args.data, name)
    new_entry = card_entry("rerank", path, run, args.replace_command, metrics)
    new_entry["flickr8k_test_search_grid"] = {k: one_grid[k] for k in ("i2t", "t2i", "rsum")}
    new_entry["score_sizes"] = [payload["config"]["features"]["image_size"],
                                *payload["config"].get("eval", {}).get("score_sizes", [])]
    new_entry["replaces"] = {k: entry[k] for k in ("sha1", "trained_by", "flickr8k_test")}
    card["models"][name] = new_entry
    print(f"{name}: {path.stat().st_size / 1e6:.1f} MB, Flickr8k test rsum {metrics['rsum']:.1f} "
          f"({one_grid['rsum']:.1f} on search's one grid), replacing {entry['flickr8k_test']['rsum']:.1f}")
    members = card.get("rerank_ensemble", {}).get("members", [])
    if len(members) > 1:
        given = dict(item.split("=", 1) for item in args.scores)
        matrices = [scores if member == name else Path(given[member]) if member in given
                    else search_grid(folder / card["models"][member]["file"], args.data, member)[1]
                    for member in members]
        for member, matrix in zip(members, matrices, strict=True):
            if member != name:  # the other files re-measured as this code scores them (their matrices)
                card["models"][member]["flickr8k_test"] = ensemble_metrics([matrix], args.data)
        card["rerank_ensemble"]["flickr8k_test"] = ensemble_metrics(matrices, args.data)
        print(f"ensemble {' + '.join(members)}: Flickr8k test rsum {card['rerank_ensemble']['flickr8k_test']['rsum']:.1f}")
    (folder / "card.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")


def search_grid(path: Path, data: str, name: str) -> tuple[dict, Path]:
    """A shipped re-ranker's test metrics and saved matrix on its trained grid alone, the one search
    scores, scored now (a matrix saved earlier may be an older file's)."""
    scores = ROOT / "runs" / f"shipped_{name}_scores.npy"
    return evaluate(path, data, f"{name}_search_grid", scores, ("eval.score_sizes=[]",)), scores


LOAD_FIELDS = ("word_table", "explain_image_size")  # what the first card held for its files' loading


def self_describe() -> None:
    """``--self-describe``: the card's load-time fields into the shipped files (weights untouched)."""
    folder = shipped_folder()
    card = json.loads((folder / "card.json").read_text(encoding="utf-8"))
    for name, entry in card["models"].items():
        fields = {key: entry.pop(key) for key in LOAD_FIELDS if key in entry}
        path = folder / entry["file"]
        payload = read_payload(path)
        if "word_table" in fields:
            payload.setdefault("word_table", fields["word_table"])
        if "explain_image_size" in fields:
            payload["config"].setdefault("eval", {})["explain_image_size"] = fields["explain_image_size"]
        if fields:
            payload["earlier_sha1s"] = [*payload.get("earlier_sha1s", []), entry["sha1"]]
            save_atomic(payload, path)
        entry.update(bytes=path.stat().st_size, sha1=content_key(path.read_bytes()))
        print(f"{name}: {', '.join(fields) or 'nothing to move'}")
    (folder / "card.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rerank", type=Path, help="run folder of the cross-attention matcher")
    parser.add_argument("--shortlist", type=Path, help="run folder of the dual encoder")
    parser.add_argument("--data", help="the Flickr8k folder the shipped files are measured on")
    parser.add_argument("--rerank-command", help="the command that trained --rerank")
    parser.add_argument("--shortlist-command", help="the command that trained --shortlist")
    parser.add_argument("--add-rerank", nargs="+", type=Path, default=[],
                        help="run folders of more re-rankers to ship beside the shipped files (an ensemble)")
    parser.add_argument("--add-command", nargs="+", default=[], help="the commands that trained --add-rerank")
    parser.add_argument("--replace-rerank", nargs=2, metavar=("NAME", "RUN"),
                        help="a newer run in place of the shipped re-ranker NAME (e.g. caan)")
    parser.add_argument("--replace-command", help="the command that trained --replace-rerank's run")
    parser.add_argument("--scores", nargs="+", default=[], metavar="NAME=NPY",
                        help="a shipped re-ranker's saved test matrix (default runs/shipped_NAME_scores.npy)")
    parser.add_argument("--explain-image-size", type=int, default=416,
                        help="the re-ranker's eval.explain_image_size (its pictures' grid; docs/explain.md)")
    parser.add_argument("--self-describe", action="store_true",
                        help="move the card's load-time fields into the shipped files (weights untouched)")
    args = parser.parse_args(argv)
    if args.self_describe:
        return self_describe()
    if not args.data:
        parser.error("--data: the Flickr8k folder the shipped files are measured on")
    if args.add_rerank:
        return add_rerankers(args)
    if args.replace_rerank:
        return replace_reranker(args)
    if not (args.rerank and args.shortlist and args.rerank_command and args.shortlist_command):
        parser.error("--rerank, --shortlist and their commands (or --add-rerank, or --self-describe)")
    folder = shipped_folder()
    folder.mkdir(parents=True, exist_ok=True)
    card = {"itm_version": __version__, "data": "Flickr8k (Karpathy split): trained on train, "
            "best epoch chosen on val, measured on the 1K test split", "models": {}}
    for role, run, command, name in (("rerank", args.rerank, args.rerank_command, "bssan"),
                                     ("shortlist", args.shortlist, args.shortlist_command, "dual")):
        path = folder / f"{name}.pt"
        payload = half_payload(run)
        if role == "rerank":
            payload["config"].setdefault("eval", {})["explain_image_size"] = args.explain_image_size
        save_atomic(payload, path)
        scores = ROOT / "runs" / f"shipped_{name}_scores.npy" if role == "rerank" else None
        metrics = evaluate(path, args.data, name, scores)
        card["models"][name] = card_entry(role, path, run, command, metrics)
        print(f"{name}: {path.stat().st_size / 1e6:.1f} MB, Flickr8k test rsum {metrics['rsum']:.1f}")
    (folder / "card.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
