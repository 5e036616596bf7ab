"""Train a CPU config for a few steps on random Lite2-shaped data and save its weights: run under two
code trees by ``speedup.py --same-weights``, it tells whether a faster step still learns the same
weights (bitwise, or how far apart).

    python benchmarks/train_weights.py CONFIG STEPS OUT.pt [--threads 1]

The data, the model's initialisation and every random draw of the trainer (shuffling, augmentation,
dropout) come from seed 0, as in ``train_step.py``; one epoch of STEPS batches, no time budget.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import tempfile
from pathlib import Path

import torch
from train_step import VOCAB, random_split

import itm.models  # noqa: F401  (registers every model)
from itm.checkpoint import new_model
from itm.config import load_config
from itm.models.base import InputDims
from itm.pipeline import PreparedSplit
from itm.training.loop import Trainer


def trained_weights(config_name: str, steps: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    config = load_config(config_name)
    run = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=1, max_minutes=None,
                                                                checkpoint_minutes=float("inf")))
    train = random_split(steps * config.train.batch_size, gen)
    val = PreparedSplit(train.dataset, train.features.select(slice(0, 2)), train.captions.select(slice(0, 10)),
                        train.caption_to_image[:10])
    model = new_model(run, InputDims(50, 1280, 1280, vocab_size=VOCAB))
    with tempfile.TemporaryDirectory(prefix="itm-train-weights-") as run_dir, \
            contextlib.redirect_stdout(io.StringIO()):  # the epoch's validation line
        Trainer(model, run, Path(run_dir), meta=dict).fit(train, val, progress=False)
    return model.state_dict()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("steps", type=int)
    parser.add_argument("out")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.save(trained_weights(args.config, args.steps), args.out)


if __name__ == "__main__":
    main()
