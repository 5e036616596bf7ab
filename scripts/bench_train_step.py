"""Milliseconds per training step (all-pairs scores of a B x B block, symmetric InfoNCE, Adam) of
configs/bssan_cpu_lite2.yaml on random Lite2-shaped inputs, for each W2R query width given.

    python scripts/bench_train_step.py --threads 2 --w2r-context 0 64
"""

from __future__ import annotations

import argparse
import time

import torch

from itm.checkpoint import new_model
from itm.config import load_config
from itm.data.types import Captions
from itm.losses import infonce
from itm.models.base import InputDims

VOCAB, WORDS, REGIONS, OBJECTS, WIDTH = 5000, 30, 81, 10, 1280  # Lite2 260 px: 9 x 9 grid, 1280-d


def step_ms(context: int, batch: int, steps: int) -> float:
    config = load_config("configs/bssan_cpu_lite2.yaml", [f"model.w2r_context={context}"])
    torch.manual_seed(0)
    model = new_model(config, InputDims(word_dim=50, region_dim=WIDTH, object_dim=WIDTH, vocab_size=VOCAB))
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), config.train.lr)
    lengths = torch.randint(8, 20, (batch,))
    ids = torch.randint(1, VOCAB, (batch, WORDS))
    ids[torch.arange(WORDS)[None] >= lengths[:, None]] = 0
    captions = Captions(ids, lengths)
    regions, objects = torch.randn(batch, REGIONS, WIDTH), torch.randn(batch, OBJECTS, WIDTH)
    positives = torch.eye(batch, dtype=torch.bool)  # one caption per image in this block

    def step() -> None:
        images = {"regions": regions, "objects": objects}
        scores = model.score_block(model.prepare_images(images), model.prepare_captions(captions))
        loss = infonce(scores, positives, config.train.temperature)  # scores (B, B)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for _ in range(3):  # warm-up
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - started) / steps * 1000


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--w2r-context", type=int, nargs="+", default=[0, 64])
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for context in args.w2r_context:
        print(f"w2r_context={context}: {step_ms(context, args.batch, args.steps):.0f} ms/step")


if __name__ == "__main__":
    main()
