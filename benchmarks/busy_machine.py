"""Search latency on a busy machine: queries alone, then while an ``itm index`` job extracts photos.

    python benchmarks/busy_machine.py --index runs/coco-library/index --queries ../shared/data/coco_boxes_dev \\
        --load ../shared/data/flickr8k/images --load-photos 120 [--json results/busy_machine.json]

For each thread setting (``--settings``: search threads / index threads / OpenMP wait policy, each
process started with them), a search process answers the ``--queries`` dataset's captions against
``--index`` (one warm-up pass, then timed: median and p95 ms a query), first alone, then while an
``itm index`` process extracts ``--load-photos`` photos of the ``--load`` folder into a fresh cache
and index (so it really extracts); reported: both latencies, their ratio, and the index job's
seconds a photo. The settings whose busy latency stays within 2x of alone with the least cost to
the index job are the defaults of ``itm serve`` and ``itm index`` (docs/results/speed.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _report import report

DEFAULT_SETTINGS = ("2/2/active", "2/2/passive", "1/1/active", "1/1/passive", "1/2/passive", "2/1/passive")

SEARCH_WORKER = r"""
import json, sys, time
from itm.api import open_index
from itm.data.load import load_dataset
index, data, seconds, out = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
searcher = open_index(index)
texts = [" ".join(t) for im in load_dataset(data).images for t in im.tokens]
for text in texts[:20]:
    searcher.search(text, k=10)  # warm-up: models, states
millis, start, n = [], time.perf_counter(), 0
while time.perf_counter() - start < seconds:
    t0 = time.perf_counter()
    searcher.search(texts[n % len(texts)], k=10)
    millis.append(1000 * (time.perf_counter() - t0))
    n += 1
json.dump(millis, open(out, "w"))
"""


def environment(threads: int, policy: str, cache: str | None = None) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": policy.upper(), "HF_HUB_OFFLINE": "1"}
    if cache:
        env["ITM_CACHE"] = cache
    return env


def search_latency(index: str, data: str, seconds: float, threads: int, policy: str, scratch: Path) -> dict:
    out = scratch / "millis.json"
    subprocess.run([sys.executable, "-c", SEARCH_WORKER, index, data, str(seconds), str(out)],
                   env=environment(threads, policy), check=True)
    millis = np.asarray(json.loads(out.read_text()))
    return {"median_ms": round(float(np.median(millis)), 1), "p95_ms": round(float(np.percentile(millis, 95)), 1),
            "queries": int(len(millis))}


def load_folder(source: Path, n: int, folder: Path) -> Path:
    """Links to the first ``n`` photos of ``source``: the index job's work."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted(p for p in source.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:n]:
        (folder / path.name).symlink_to(path.resolve())
    return folder


def measure(setting: str, args, scratch: Path) -> dict:
    search_threads, index_threads, policy = setting.split("/")
    alone = search_latency(args.index, args.queries, args.seconds, int(search_threads), policy, scratch)
    with tempfile.TemporaryDirectory(dir=scratch) as job:
        photos = load_folder(Path(args.load), args.load_photos, Path(job) / "photos")
        started = time.perf_counter()
        indexer = subprocess.Popen([sys.executable, "-m", "itm", "index", "--images", str(photos), "--out",
                                    str(Path(job) / "index"), "--no-progress", "--threads", index_threads],
                                   env=environment(int(index_threads), policy, str(Path(job) / "cache")),
                                   stdout=subprocess.DEVNULL)
        time.sleep(args.index_start)  # the index job's models loaded, extraction under way
        busy = search_latency(args.index, args.queries, args.seconds, int(search_threads), policy, scratch)
        indexer.wait()
        index_seconds = time.perf_counter() - started
    return {"alone": alone, "busy": busy, "busy_over_alone": round(busy["median_ms"] / alone["median_ms"], 2),
            "busy_over_alone_p95": round(busy["p95_ms"] / alone["p95_ms"], 2),
            "index_s_per_photo": round(index_seconds / args.load_photos, 3)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", required=True, help="a built index (the search side)")
    parser.add_argument("--queries", required=True, help="a dataset whose captions are the queries")
    parser.add_argument("--load", required=True, help="a photo folder the index job extracts")
    parser.add_argument("--load-photos", type=int, default=120)
    parser.add_argument("--seconds", type=float, default=20.0, help="timed queries per measurement")
    parser.add_argument("--index-start", type=float, default=8.0, help="seconds the index job runs before timing")
    parser.add_argument("--settings", nargs="+", default=list(DEFAULT_SETTINGS),
                        help="search threads / index threads / OpenMP wait policy")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="itm-busy-") as scratch:
        rows = {}
        for setting in args.settings:
            rows[setting] = measure(setting, args, Path(scratch))
            print(setting, json.dumps(rows[setting]), flush=True)
    return report({"settings": rows}, args.json)


if __name__ == "__main__":
    main()
