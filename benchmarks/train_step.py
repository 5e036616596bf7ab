"""Training-step time of each model's CPU configuration, and the full Flickr8k run it implies.

    python benchmarks/train_step.py --threads 2 [--configs caan_cpu mlasm_cpu bssan_cpu_lite2] [--json OUT]
    python benchmarks/train_step.py --threads 2 --configs bssan_cpu_lite2 --set model.w2r_context=64

One step is what ``itm train`` runs per batch, timed inside the trainer itself
(``itm.training.loop.Trainer.fit``): the batch's inputs with the configured augmentation, the model's
``training_loss``, the backward pass, gradient clipping and the configured optimiser's update. The
step time is the time between consecutive optimiser updates (a post-step hook), the median after two
warm-up steps; the epoch's closing validation and checkpoint are not timed. Inputs are random, of the
shapes the cost depends on: Lite2's features (81 x 1280 regions, 10 x 1280 objects), five captions
per image in the epoch's shuffled order, Flickr8k's caption lengths. Projected run = steps per epoch
on Flickr8k train (30,000 captions / batch) x ``train.epochs`` x the median step time; validation and
checkpoints add about a minute. ``--set`` overrides apply to every configuration. Run it alone on
the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _report import measure_each, save_json

import itm.models  # noqa: F401  (registers every model)
from itm.checkpoint import new_model
from itm.config import Config, load_config
from itm.data.synthetic import random_captions
from itm.data.types import Dataset, ImageFeatures
from itm.models.base import InputDims
from itm.pipeline import PreparedSplit
from itm.training.loop import Trainer

FLICKR8K_TRAIN_CAPTIONS = 30_000
CAPTIONS_PER_IMAGE = 5  # Flickr8k's
VOCAB = 7376
WARM_UP = 2


def random_split(n_captions: int, gen: torch.Generator) -> PreparedSplit:
    """Random Lite2-shaped features, ``CAPTIONS_PER_IMAGE`` random captions per image."""
    n_images = -(-n_captions // CAPTIONS_PER_IMAGE)
    features = ImageFeatures(torch.randn(n_images, 81, 1280, generator=gen).half(),  # (N, D, M)
                             torch.randn(n_images, 10, 1280, generator=gen).half())  # (N, P, Q)
    owner = np.arange(n_captions) // CAPTIONS_PER_IMAGE  # (n_captions,)
    return PreparedSplit(Dataset("random", Path("."), []), features, random_captions(n_captions, VOCAB, gen), owner)


def one_epoch_run(config: Config, batches: int):
    """(model, run config, train split, val split) for one epoch of ``batches`` plain steps of ``config``:
    random data, the model and every draw seeded with 0; no time budget and no checkpoint within it."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    run = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=1, max_minutes=None,
                                                                checkpoint_minutes=float("inf")))
    train = random_split(batches * config.train.batch_size, gen)
    val = PreparedSplit(train.dataset, train.features.select(slice(0, 2)), train.captions.select(slice(0, 10)),
                        train.caption_to_image[:10])
    return new_model(run, InputDims(50, 1280, 1280, vocab_size=VOCAB)), run, train, val


def fit_quietly(model, run, train: PreparedSplit, val: PreparedSplit, after_step=None) -> None:
    """``Trainer.fit`` in a scratch run folder, its validation line silenced; ``after_step`` (if given)
    is called after every optimiser update."""
    with tempfile.TemporaryDirectory(prefix="itm-train-step-") as run_dir:
        trainer = Trainer(model, run, Path(run_dir), meta=dict)
        if after_step is not None:
            trainer.optimizer.register_step_post_hook(lambda *_: after_step())
        with contextlib.redirect_stdout(io.StringIO()):  # the epoch's validation line
            trainer.fit(train, val, progress=False)


def step_seconds(config_name: str, steps: int, overrides: list[str] | None = None) -> tuple[float, dict]:
    config = load_config(config_name, overrides or [])
    cfg = config.train
    # one epoch of steps + warm-up + 1 batches (the first update only starts the clock)
    model, run, train, val = one_epoch_run(config, steps + WARM_UP + 1)
    b = cfg.batch_size
    stamps: list[float] = []
    fit_quietly(model, run, train, val, after_step=lambda: stamps.append(time.perf_counter()))
    times = np.diff(stamps)[WARM_UP:]
    median = statistics.median(times)
    per_epoch = FLICKR8K_TRAIN_CAPTIONS // b
    record = {"step_s": round(median, 3), "batch": b, "epochs": cfg.epochs,
              "projected_run_min": round(median * per_epoch * cfg.epochs / 60, 1), "budget_min": cfg.max_minutes}
    if overrides:
        record["overrides"] = list(overrides)
    return median, record


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["bssan_cpu_lite2", "caan_cpu", "mlasm_cpu", "dual_cpu"])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every configuration (repeatable), e.g. model.w2r_context=64")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = measure_each(args.configs, lambda name: step_seconds(name, args.steps, args.overrides)[1], width=18)
    return save_json({"threads": args.threads, "models": models}, args.json)


if __name__ == "__main__":
    main()
