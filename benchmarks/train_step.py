"""Training-step time of each model's CPU configuration, and the full Flickr8k run it implies.

    python benchmarks/train_step.py --threads 2 [--configs caan_cpu mlasm_cpu bssan_cpu_lite2] [--json OUT]

One step = the model's training hook on a batch of ``train.batch_size`` captions of distinct images
(random features of Lite2's shapes, 81 x 1280 regions and 10 objects; Flickr8k's caption lengths),
the backward pass and the Adam update, as ``itm train`` runs it. Projected run = steps per epoch on
Flickr8k train (30,000 captions / batch) x ``train.epochs`` x the median step time; validation and
checkpoints add about a minute. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import itm.models  # noqa: F401  (registers every model)
from itm.checkpoint import new_model
from itm.config import load_config
from itm.data.synthetic import random_captions
from itm.data.types import ImageFeatures
from itm.models.base import InputDims
from itm.models.objectives import TrainingBatch

FLICKR8K_TRAIN_CAPTIONS = 30_000


def step_seconds(config_name: str, steps: int) -> tuple[float, dict]:
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    config = load_config(config_name)
    cfg = config.train
    model = new_model(config, InputDims(50, 1280, 1280, vocab_size=7376)).train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    b = cfg.batch_size
    features = ImageFeatures(torch.randn(b, 81, 1280, generator=gen).half(), torch.randn(b, 10, 1280, generator=gen).half())
    captions = random_captions(b, 7376, gen)

    def inputs(images: torch.Tensor, caps: torch.Tensor):
        return features.streams(model.image_streams, images), captions.select(caps)

    times = []
    for _ in range(steps + 2):  # two warm-up steps
        t0 = time.perf_counter()
        batch = TrainingBatch(torch.arange(b), torch.arange(b), cfg, gen, inputs)
        loss = model.training_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - t0)
    median = statistics.median(times[2:])
    per_epoch = FLICKR8K_TRAIN_CAPTIONS // b
    return median, {"step_s": round(median, 3), "batch": b, "epochs": cfg.epochs,
                    "projected_run_min": round(median * per_epoch * cfg.epochs / 60, 1),
                    "budget_min": cfg.max_minutes}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["bssan_cpu_lite2", "caan_cpu", "mlasm_cpu", "dual_cpu"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = {"threads": args.threads, "models": {}}
    for name in args.configs:
        _, result["models"][name] = step_seconds(name, args.steps)
        print(f"{name:<18}{json.dumps(result['models'][name])}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
