"""Speed-ups against a reference commit, measured in one run: the same benchmarks on both trees.

    python benchmarks/speedup.py --reference facf45c [--threads 1] [--json results/speedup.json]
    python benchmarks/speedup.py --reference bcfe252 --skip-floor --same-weights 12
    python benchmarks/speedup.py --reference facf45c --repeats 3   # alternating runs, median figures
    python benchmarks/speedup.py --reference facf45c --skip-floor --eval-threads 2 \\
        --eval "--checkpoint src/itm/assets/models/bssan.pt src/itm/assets/models/caan.pt \\
                src/itm/assets/models/mlasm.pt --data ../shared/data/flickr8k --split test"

The reference commit is checked out into a temporary git worktree. ``benchmarks/floor.py`` (scoring
and training time per pair of every CPU config, the matmul rates) runs under the reference tree,
then under this one, one after the other on the same machine; reported: each tree's figures and the
speed-up (reference time / current time) per config. With ``--eval``, ``itm eval ARGS --json`` runs
under each tree at ``--eval-threads`` (after one untimed warm-up run under this tree that fills the
feature cache), timed wall-clock (alternating ``--repeats`` times, medians), with both trees' rsum
beside it: the same model, so the rankings should agree to float tolerance. With ``--search-index``,
the same ``--search-queries`` test captions are searched under each tree with raw scores (the
shortlist and the exact re-rank, the same work in both), median and p95 ms a query.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _report import report

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def run_tree(tree: Path, argv: list[str], threads: int, cwd: Path) -> float:
    """Run ``python argv`` with ``tree``'s ``src`` first on the path; its wall-clock seconds."""
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    subprocess.run([sys.executable, *argv], cwd=cwd, env=env, check=True)
    return time.perf_counter() - started


def same_weights(tree: Path, config: str, steps: int, scratch: Path) -> dict:
    """Train ``config`` ``steps`` steps under the reference tree and under this one (one thread each, the
    same seed); whether the weights are bitwise equal, and else their largest relative difference."""
    import torch

    weights = []
    for label, root in (("reference", tree), ("current", REPO)):
        out = scratch / f"{config}_{label}.pt"
        run_tree(root, [str(HERE / "train_weights.py"), config, str(steps), str(out)], 1, HERE)
        weights.append(torch.load(out, weights_only=True))
    ref, now = weights
    relative = max(float((ref[k].float() - now[k].float()).abs().max() / ref[k].float().abs().max().clamp_min(1e-12))
                   for k in ref)
    return {"bitwise_equal": all(torch.equal(ref[k], now[k]) for k in ref), "max_relative_difference": relative}


def floor(tree: Path, threads: int, out: Path) -> dict:
    run_tree(tree, [str(tree / "benchmarks" / "floor.py"), "--threads", str(threads), "--json", str(out)], threads,
             tree / "benchmarks")
    return json.loads(out.read_text(encoding="utf-8"))


def median_floor(runs: list[dict]) -> dict:
    """One floor.py result from several runs of it: every figure the median of the runs' (a busy shared
    machine moves single runs by 10-15 %); the runs' scoring and training times kept per config."""
    first = runs[0]
    merged = {k: v for k, v in first.items() if k != "models"}
    for key in ("fp32_gflops", "bf16_gflops"):
        merged[key] = statistics.median(run[key] for run in runs)
    merged["models"] = {}
    for name, entry in first["models"].items():
        merged["models"][name] = {k: statistics.median(run["models"][name][k] for run in runs) for k in entry}
        merged["models"][name]["runs"] = {k: [run["models"][name][k] for run in runs]
                                          for k in ("score_us_per_pair", "train_us_per_pair")}
    merged["repeats"] = len(runs)
    return merged


def alternating_floors(tree: Path, threads: int, repeats: int, scratch: Path) -> tuple[dict, dict]:
    """floor.py under the reference tree and this one, alternately ``repeats`` times each (so a slow spell
    of the machine falls on both); each tree's median figures."""
    ref_runs, now_runs = [], []
    for i in range(repeats):
        ref_runs.append(floor(tree, threads, scratch / f"ref_floor_{i}.json"))
        now_runs.append(floor(REPO, threads, scratch / f"now_floor_{i}.json"))
    return median_floor(ref_runs), median_floor(now_runs)


def timed_eval(tree: Path, eval_args: list[str], threads: int, out: Path) -> dict:
    seconds = run_tree(tree, ["-m", "itm", "eval", *eval_args, "--json", str(out)], threads, REPO)
    result = json.loads(out.read_text(encoding="utf-8"))
    return {"seconds": round(seconds, 1), "eval_seconds": result.get("seconds"), "rsum": result.get("rsum")}


def median_eval(runs: list[dict]) -> dict:
    """One tree's evaluation from several runs: median seconds (wall and the engine's), every run's rsum
    (the same code on the same data: they should agree), the runs themselves."""
    return {"seconds": statistics.median(run["seconds"] for run in runs),
            "eval_seconds": statistics.median(run["eval_seconds"] for run in runs),
            "rsum": sorted({run["rsum"] for run in runs}), "runs": runs}


def alternating_evals(tree: Path, eval_args: list[str], threads: int, repeats: int, scratch: Path) -> dict:
    """``itm eval`` under the reference tree and this one, alternately ``repeats`` times each; medians."""
    runs: dict[str, list[dict]] = {"reference": [], "current": []}
    for i in range(repeats):
        for name, where in (("reference", tree), ("current", REPO)):
            runs[name].append(timed_eval(where, eval_args, threads, scratch / f"{name}_eval_{i}.json"))
    result = {name: median_eval(name_runs) for name, name_runs in runs.items()}
    result["speedup"] = round(result["reference"]["seconds"] / result["current"]["seconds"], 2)
    return result


SEARCH_WORKER = r"""
import json, sys, time
import numpy as np
from itm.api import open_index
from itm.data.load import load_dataset
index, data, split, n, out = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
searcher = open_index(index, normalise="none")  # the same work under both trees: shortlist + exact re-rank
texts = [" ".join(t) for im in load_dataset(data).split(split).images for t in im.tokens][:n]
for text in texts[:20]:
    searcher.search(text, k=10)  # warm-up
millis = []
for text in texts:
    t0 = time.perf_counter()
    searcher.search(text, k=10)
    millis.append(1000 * (time.perf_counter() - t0))
json.dump({"median_ms": round(float(np.median(millis)), 1), "p95_ms": round(float(np.percentile(millis, 95)), 1),
           "queries": len(millis)}, open(out, "w"))
"""


def timed_search(tree: Path, index: str, data: str, queries: int, threads: int, out: Path) -> dict:
    run_tree(tree, ["-c", SEARCH_WORKER, index, data, "test", str(queries), str(out)], threads, REPO)
    return json.loads(out.read_text(encoding="utf-8"))


def speedups(reference: dict, current: dict) -> dict:
    """Per config: reference / current time per pair, scoring and training."""
    out = {}
    for name, ref in reference["models"].items():
        now = current["models"].get(name)
        if now:
            out[name] = {"score": round(ref["score_us_per_pair"] / now["score_us_per_pair"], 2),
                         "train": round(ref["train_us_per_pair"] / now["train_us_per_pair"], 2),
                         "score_x_floor_now": now["score_x_floor"], "train_x_floor_now": now["train_x_floor"]}
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", required=True, help="the commit measured against")
    parser.add_argument("--threads", type=int, default=1, help="floor.py's threads")
    parser.add_argument("--skip-floor", action="store_true")
    parser.add_argument("--eval", help="itm eval's arguments, one string: timed under each tree")
    parser.add_argument("--eval-threads", type=int, default=2)
    parser.add_argument("--search-index", help="an index: its search latency (raw scores) timed under each tree")
    parser.add_argument("--search-data", help="the dataset whose test captions are the queries")
    parser.add_argument("--search-queries", type=int, default=500)
    parser.add_argument("--configs", nargs="+", default=["bssan_cpu_lite2", "caan_cpu", "mlasm_cpu", "dual_cpu"],
                        help="the configs --same-weights trains")
    parser.add_argument("--same-weights", type=int, metavar="STEPS", default=0,
                        help="also train each config STEPS steps under both trees (train_weights.py) and compare "
                             "the weights: bitwise equal, or their largest difference relative to the tensor's scale")
    parser.add_argument("--repeats", type=int, default=1,
                        help="floor.py (and --eval) runs per tree, alternating; each figure the median of its runs")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    commit = subprocess.run(["git", "rev-parse", args.reference], cwd=REPO, check=True, capture_output=True,
                            text=True).stdout.strip()
    result = {"reference": commit, "threads": args.threads}
    with tempfile.TemporaryDirectory(prefix="itm-reference-") as scratch:
        tree = Path(scratch) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), commit], cwd=REPO, check=True,
                       capture_output=True)
        try:
            if not args.skip_floor:
                ref, now = alternating_floors(tree, args.threads, args.repeats, Path(scratch))
                result.update({"reference_floor": ref, "current_floor": now, "speedup": speedups(ref, now)})
            if args.same_weights:
                result["same_weights"] = {"steps": args.same_weights, **{
                    name: same_weights(tree, name, args.same_weights, Path(scratch)) for name in args.configs}}
            if args.eval:
                eval_args = shlex.split(args.eval)
                run_tree(REPO, ["-m", "itm", "eval", *eval_args], args.eval_threads, REPO)  # warm-up: the cache
                result["eval"] = {"args": args.eval, "threads": args.eval_threads, **alternating_evals(
                    tree, eval_args, args.eval_threads, args.repeats, Path(scratch))}
            if args.search_index:
                result["search"] = {"index": args.search_index, "threads": args.threads, **{
                    name: timed_search(where, args.search_index, args.search_data, args.search_queries, args.threads,
                                       Path(scratch) / f"{name}_search.json")
                    for name, where in (("reference", tree), ("current", REPO))}}
                result["search"]["speedup_median"] = round(result["search"]["reference"]["median_ms"] /
                                                           result["search"]["current"]["median_ms"], 2)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, check=False,
                           capture_output=True)
    return report(result, args.json)


if __name__ == "__main__":
    main()
