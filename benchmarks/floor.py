"""How far scoring and training are from what this CPU can do: the floor benchmark.

    python benchmarks/floor.py --threads 1 [--json results/floor.json]

Measured in one run, on one quiet machine:
- the machine's matrix-multiply rate in float32 and bfloat16 (``torch.randn(n, n) @ torch.randn(n, n)``,
  n = 2048, the median of a few products, GFLOP/s at ``--threads``);
- for each registered CPU configuration (random weights and features of its shapes: the cost depends
  on shapes, not values): the matmul FLOPs and the bytes written per pair of ``score_block``
  (``coco5k_estimate.costs_per_pair``), the engine's scoring time per pair
  (``coco5k_estimate.seconds_per_pair``: preparation included, as in a full matrix), and a training
  step's time per in-batch pair (``train_step.step_seconds``: forward and backward of batch x batch
  pairs, the optimizer's update included);
- each as a ratio to its float32 floor: scoring, the pair's FLOPs at the float32 rate; training,
  three times that (a backward pass costs about twice the forward). A ratio of 1 would be a pair
  computed at the rate of one large float32 matrix product; the FLOP count covers matmuls only, so
  the floor is a lower bound and the ratio an upper bound of the waste.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _report import measure_each, save_json
from coco5k_estimate import build, costs_per_pair, seconds_per_pair
from train_step import step_seconds

CONFIGS = ("bssan_cpu_lite2", "caan_cpu", "mlasm_cpu", "dual_cpu")
TRAIN_FLOPS_PER_FORWARD = 3.0  # forward + backward (about twice the forward)


def matmul_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 5, device: str = "cpu") -> float:
    """GFLOP/s of an n x n matrix product in ``dtype`` (median of ``repeats``, after one warm-up) on
    ``device`` (a GPU is synchronised around each product)."""
    a, b = torch.randn(n, n).to(device, dtype), torch.randn(n, n).to(device, dtype)
    a @ b  # warm-up: the kernel's first call
    times = []
    for _ in range(repeats):
        synchronise(device)
        t0 = time.perf_counter()
        a @ b
        synchronise(device)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def synchronise(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def floor_of(config_name: str, fp32_gflops: float, budget_s: float, steps: int, device: str = "cpu") -> dict:
    """One config's figures; on another device than the CPU, scoring only (the training step benchmark
    runs on the CPU), its inputs moved there by the engine."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model, features = build(config_name, gen)
    flops, written = costs_per_pair(model, features, gen)
    scoring = seconds_per_pair(model.to(device), features, gen, budget_s)
    training = float("nan")
    if torch.device(device).type == "cpu":
        step, record = step_seconds(config_name, steps)
        training = step / record["batch"] ** 2  # an in-batch step scores batch x batch pairs
    floor = flops / (fp32_gflops * 1e9)  # seconds a pair would take at the float32 matmul rate
    return {"flop_per_pair": int(flops), "kb_written_per_pair": round(written / 1e3, 1),
            "score_us_per_pair": round(scoring * 1e6, 2), "train_us_per_pair": round(training * 1e6, 2),
            "fp32_floor_us_per_pair": round(floor * 1e6, 3),
            "score_x_floor": round(scoring / floor, 2) if floor else None,
            "train_x_floor": round(training / (TRAIN_FLOPS_PER_FORWARD * floor), 2) if floor and training == training
            else None}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--budget", type=float, default=10.0, help="seconds of timed scoring per model (about)")
    parser.add_argument("--steps", type=int, default=8, help="timed training steps per model")
    parser.add_argument("--device", default="cpu", help="where the matmuls and the scoring run (cuda: a GPU check; "
                                                          "training is then not measured)")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    n = 2048 if args.device == "cpu" else 8192  # a GPU needs a larger product to reach its rate
    rates = {"fp32_gflops": round(matmul_gflops(torch.float32, n=n, device=args.device), 1),
             "bf16_gflops": round(matmul_gflops(torch.bfloat16, n=n, device=args.device), 1)}
    print(f"matmul {n} x {n} on {args.device} at {args.threads} thread(s): float32 {rates['fp32_gflops']} GFLOP/s, "
          f"bfloat16 {rates['bf16_gflops']} GFLOP/s", flush=True)
    models = measure_each(args.configs, lambda name: floor_of(name, rates["fp32_gflops"], args.budget, args.steps,
                                                              args.device), width=16)
    return save_json({"threads": args.threads, "device": args.device, **rates, "models": models}, args.json)


if __name__ == "__main__":
    main()
