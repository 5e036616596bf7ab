"""Train a CPU config for a few steps on random Lite2-shaped data and save its weights: run under two
code trees by ``speedup.py --same-weights``, it tells whether a faster step still learns the same
weights (bitwise, or how far apart).

    python benchmarks/train_weights.py CONFIG STEPS OUT.pt [--threads 1]

The data, the model's initialisation and every random draw of the trainer (shuffling, augmentation,
dropout) come from seed 0, as in ``train_step.py``; one epoch of STEPS batches, no time budget.
"""

from __future__ import annotations

import argparse

import torch
from train_step import fit_quietly, one_epoch_run

from itm.config import load_config


def trained_weights(config_name: str, steps: int) -> dict[str, torch.Tensor]:
    model, run, train, val = one_epoch_run(load_config(config_name), steps)
    fit_quietly(model, run, train, val)
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
