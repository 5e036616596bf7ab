"""One process against two (torchrun, gloo) on this machine, for all-pairs evaluation and feature
extraction, measured in one run: the ratio is what adding a process buys on the same cores.

    python benchmarks/processes.py [--data src/itm/assets/flickr8k_mini] [--checkpoint CKPT] [--json OUT]

Three ways each, every process at one torch thread unless said: 1 process x 1 thread (the
reference), 1 process x 2 threads, 2 processes x 1 thread (``torchrun --standalone``). Evaluation
reads a warm feature cache and reports the engine's own scoring seconds beside the command's wall
time (which adds start-up and loading); extraction writes a fresh cache each time, in chunks small
enough that every process gets several (processes share a cache by chunks). Run it on an idle
machine: anything else on the cores distorts the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _report import line, save_json

BUNDLED = Path(__file__).resolve().parent.parent / "src" / "itm" / "assets" / "flickr8k_mini"
WAYS = {"1 process x 1 thread": (1, 1), "1 process x 2 threads": (1, 2), "2 processes x 1 thread": (2, 1)}


def command(processes: int, args: list[str]) -> list[str]:
    if processes == 1:
        return [sys.executable, "-m", "itm", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
            "-m", "itm", *args]


def timed(cmd: list[str], threads: int, env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env={**env, "OMP_NUM_THREADS": str(threads)}, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def evaluation(checkpoint: str, data: str, work: Path, env: dict) -> dict:
    base = ["eval", "--checkpoint", checkpoint, "--data", data, "--split", "test", "--no-progress"]
    subprocess.run(command(1, base), check=True, env=env, stdout=subprocess.DEVNULL)  # warm the feature cache
    out = {}
    for name, (processes, threads) in WAYS.items():
        report = work / f"eval-{processes}-{threads}.json"
        wall = timed(command(processes, [*base, "--json", str(report)]), threads, env)
        result = json.loads(report.read_text(encoding="utf-8"))
        out[name] = {"scoring_s": result["seconds"], "wall_s": round(wall, 1), "rsum": round(result["rsum"], 2)}
    return out


def extraction(data: str, backbone: str, size: int, chunk: int, work: Path, env: dict) -> dict:
    out = {}
    for name, (processes, threads) in WAYS.items():
        cache = work / f"features-{processes}-{threads}"
        args = ["features", "--data", data, "--split", "test", "--out", str(cache), "--backbone", backbone,
                "--image-size", str(size), "--threads", str(threads), "--chunk-size", str(chunk), "--no-progress"]
        out[name] = {"wall_s": round(timed(command(processes, args), threads, env), 1)}
        shutil.rmtree(cache)
    return out


def with_ratios(results: dict) -> dict:
    key = "scoring_s" if "scoring_s" in next(iter(results.values())) else "wall_s"
    reference = results["1 process x 1 thread"][key]
    for entry in results.values():
        entry["speedup"] = round(reference / entry[key], 2)
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(BUNDLED), help="a Karpathy-format folder (its test split is used)")
    parser.add_argument("--checkpoint", default=None, help="the model to evaluate (default: the shipped BSSAN)")
    parser.add_argument("--backbone", default="efficientnet_lite2")
    parser.add_argument("--image-size", type=int, default=260)
    parser.add_argument("--chunk-size", type=int, default=25, help="images per cache chunk: the unit processes "
                        "share, so it must leave several chunks per process (the bundled test split has 200 images)")
    parser.add_argument("--only", choices=["evaluation", "extraction"], help="measure one of the two")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if args.checkpoint is None:
        from itm.shipped import shipped_checkpoint

        args.checkpoint = str(shipped_checkpoint("bssan"))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    with tempfile.TemporaryDirectory(prefix="itm-processes-") as folder:
        work = Path(folder)
        result = {"cores": os.cpu_count(), "data": args.data, "checkpoint": args.checkpoint}
        if args.only != "extraction":
            result["evaluation"] = with_ratios(evaluation(args.checkpoint, args.data, work, env))
        if args.only != "evaluation":
            result["chunk_size"] = args.chunk_size
            result["extraction"] = with_ratios(extraction(args.data, args.backbone, args.image_size, args.chunk_size,
                                                          work, env))
    for part in ("evaluation", "extraction"):
        for name, entry in result.get(part, {}).items():
            line(f"{part:<11} {name}", entry, width=37)  # the name in a 24-wide column, then a space
    return save_json(result, args.json)


if __name__ == "__main__":
    main()
