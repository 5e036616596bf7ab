"""Does a fusing compiler help the per-pair recurrence here? BSSAN's scoring LSTM step, eager (the
model's own in-place ``lstm_step_``) against ``torch.compile`` of the same step with dynamic shapes
(the engine's tiles change the number of pairs), in one run at one thread.

    python benchmarks/fused_step.py [--pairs 192 150 448] [--steps 20] [--repeats 30] [--json OUT]

Each figure is ms for ``--steps`` steps over ``--pairs`` rows (hidden size 64, as the shipped BSSAN),
the median of ``--repeats`` alternating runs; the compiled step must give the eager states within
float tolerance (checked, the largest difference printed).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _report import report

from itm.models.bssan import lstm_step, lstm_step_, step_views

HIDDEN = 64


def run_steps(step, gates: torch.Tensor, w_hh_t: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Seconds for the recurrence over a fresh copy of ``gates`` (L, N, 4H), and its last state; the
    model's in-place step reads each step's views as the model makes them (``step_views``)."""
    gates = gates.clone()
    h = gates.new_zeros(gates.shape[1], HIDDEN)
    c = torch.zeros_like(h)
    started = time.perf_counter()
    for step_gates in step_views(gates) if step is lstm_step_ else gates.unbind(0):
        h, c = step(step_gates, h, c, w_hh_t)
    return time.perf_counter() - started, h


def compare(pairs: int, steps: int, repeats: int, compiled) -> dict:
    gen = torch.Generator().manual_seed(pairs)
    gates = torch.randn(steps, pairs, 4 * HIDDEN, generator=gen)
    w_hh_t = 0.1 * torch.randn(HIDDEN, 4 * HIDDEN, generator=gen)
    for _ in range(3):  # warm-up: the compiler's first calls trace and build
        run_steps(lstm_step_, gates, w_hh_t), run_steps(compiled, gates, w_hh_t)
    eager_ms, compiled_ms = [], []
    for _ in range(repeats):
        seconds, eager_h = run_steps(lstm_step_, gates, w_hh_t)
        eager_ms.append(1e3 * seconds)
        seconds, compiled_h = run_steps(compiled, gates, w_hh_t)
        compiled_ms.append(1e3 * seconds)
    difference = float((eager_h - compiled_h).abs().max())
    assert difference < 1e-4, f"the compiled step computes other states ({difference:.1e})"
    eager, fused = statistics.median(eager_ms), statistics.median(compiled_ms)
    return {"eager_ms": round(eager, 3), "compiled_ms": round(fused, 3), "compiled_over_eager": round(fused / eager, 2),
            "max_difference": difference}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, nargs="+", default=[192, 150, 448])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    compiled = torch.compile(lstm_step, dynamic=True)  # the out-of-place step: inductor fuses its pointwise ops
    with torch.inference_mode():
        figures = {f"{pairs} pairs": compare(pairs, args.steps, args.repeats, compiled) for pairs in args.pairs}
    return report({"torch": torch.__version__, "threads": 1, "steps": args.steps, **figures}, args.json)


if __name__ == "__main__":
    main()
