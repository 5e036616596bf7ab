"""A bounded load test of ``itm serve`` on loopback: N requests from C concurrent clients.

Starts ``itm serve --index INDEX`` on a free 127.0.0.1 port in a subprocess, waits for /health,
sends ``--requests`` POST /search queries (drawn from ``--queries``, one a line, or a built-in list)
from ``--clients`` threads, stops the server, and prints p50 / p95 / max latency and the error count.
Nothing leaves this machine; the loop is bounded in count and time.

    python benchmarks/load_service.py --index runs/photos-index --requests 500 --clients 8
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from _report import report

QUERIES = ["a dog runs on the grass", "two children play in the water", "a man rides a bike", "a red car",
           "people walk down a city street", "a black and white dog jumps", "a girl in a pink dress",
           "a surfer rides a wave", "a group of people sit at a table", "a brown horse in a field"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict, timeout: float) -> float:
    data = json.dumps(body).encode("utf-8")
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=timeout) as response:
        response.read()
        if response.status != 200:
            raise RuntimeError(f"status {response.status}")
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", required=True)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--rerank", type=int, default=50)
    parser.add_argument("--queries", help="a file of queries, one a line")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    parser.add_argument("--threads", type=int, help="itm serve --threads (default: serve's own)")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    queries = QUERIES
    if args.queries:
        queries = [q.strip() for q in open(args.queries, encoding="utf-8") if q.strip()]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    threads = ["--threads", str(args.threads)] if args.threads else []
    server = subprocess.Popen([sys.executable, "-m", "itm.cli", "serve", "--index", args.index, "--port", str(port),
                               *threads],
                              env={**os.environ}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(600):  # up to 60 s to load the models and the index
            try:
                urllib.request.urlopen(base + "/health", timeout=1).read()
                break
            except (urllib.error.URLError, ConnectionError):
                if server.poll() is not None:
                    raise SystemExit(f"itm serve exited: {server.stderr.read().decode()[-500:]}") from None
                time.sleep(0.1)
        post(base + "/search", {"text": queries[0], "k": args.k, "rerank": args.rerank}, args.timeout)  # warm-up
        latencies, errors = [], 0

        def one(n: int):
            return post(base + "/search", {"text": queries[n % len(queries)], "k": args.k, "rerank": args.rerank},
                        args.timeout)

        started = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            for future in [pool.submit(one, n) for n in range(args.requests)]:
                try:
                    latencies.append(future.result())
                except Exception:  # noqa: BLE001  (counted, whatever it was)
                    errors += 1
        wall = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(timeout=30)
    ms = sorted(1000 * x for x in latencies)
    result = {"requests": args.requests, "clients": args.clients, "errors": errors, "wall_s": round(wall, 2),
              "throughput_rps": round(len(ms) / wall, 1),
              "p50_ms": round(statistics.median(ms), 1) if ms else None,
              "p95_ms": round(ms[int(0.95 * (len(ms) - 1))], 1) if ms else None,
              "max_ms": round(ms[-1], 1) if ms else None, "k": args.k, "rerank": args.rerank}
    return report(result, args.json)


if __name__ == "__main__":
    main()
