"""One training run end to end: data -> vocabulary -> model -> epochs -> ``RUN_DIR``.

``RUN_DIR`` holds config.yaml (the resolved config), run.json (the data folder and where the config
came from: its name, the overrides, the code's commit), metrics.jsonl (one line per epoch), best.pt
(best validation rsum), last.pt (resume point) and summary.json (what ran: ``PROVENANCE_KEYS``).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch

from itm.checkpoint import load_initial_weights, model_payload, new_model, read_payload
from itm.config import Config, apply_overrides, save_config
from itm.data.load import load_dataset
from itm.devices import as_device
from itm.distributed import is_main, setup, world_size
from itm.errors import ItmError
from itm.pipeline import (
    PreparedSplit,
    at_image_size,
    build_vocab,
    initial_word_table,
    input_dims,
    prepare_split,
    word_table_record,
)
from itm.training.loop import Trainer, seed_everything

# what every run's summary.json records, so that a reported figure says what produced it
PROVENANCE_KEYS = ("config", "overrides", "seed", "epochs_planned", "epochs", "train_seconds", "time_limit_hit",
                   "commit")


def code_commit() -> str | None:
    """The git commit of the itm source being run (``+dirty`` with uncommitted changes), or None for an
    installed copy outside a checkout."""
    import subprocess

    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode:
            return None
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty else "")


def _start(config: Config, data_dir: Path, run_dir: Path, source: dict[str, Any]) -> None:
    if (run_dir / "last.pt").exists():
        raise ItmError(f"run folder {run_dir} already holds a run: resume it with --resume {run_dir} "
                       "or choose another --out")
    if world_size() > 1 and config.train.batch_size % world_size():
        raise ItmError(f"train.batch_size {config.train.batch_size} must be a multiple of the "
                       f"{world_size()} processes (the global batch is split evenly)")
    run_dir.mkdir(parents=True, exist_ok=True)
    if is_main():
        save_config(config, run_dir / "config.yaml")
        record = {"data": str(Path(data_dir).resolve()), **source, "commit": code_commit()}
        (run_dir / "run.json").write_text(json.dumps(record, indent=2), encoding="utf-8")


def resume_inputs(run_dir: Path, overrides: list[str] | None = None) -> tuple[Config, Path, dict[str, Any]]:
    """The config, data folder and last checkpoint of an interrupted run. ``overrides`` may change
    train.* values only (e.g. a longer budget); anything else would not match the saved weights."""
    payload = read_payload(run_dir / "last.pt")
    if not isinstance(payload.get("loop"), dict) or not isinstance(payload.get("optimizer"), dict):
        raise ItmError(f"checkpoint {run_dir / 'last.pt'}: no training state to resume from "
                       "(weights only, like a best.pt)")
    config = Config.from_dict(payload["config"], f"run {run_dir}")
    for text in overrides or []:
        if not text.strip().startswith("train."):
            raise ItmError(f"--resume: only train.* values can change in a resumed run, not '{text}'")
    record = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    if overrides:
        config = apply_overrides(config, overrides)
        payload["config"] = config.to_dict()
        if is_main():
            save_config(config, run_dir / "config.yaml")
            record["overrides"] = [*record.get("overrides", []), *overrides]  # the last value of a key wins
            (run_dir / "run.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    return config, Path(record["data"]), payload


def with_views(train: PreparedSplit, train_set, config: Config, vocab, progress: bool, device) -> PreparedSplit:
    """The training split with its photos also extracted at each of train.image_sizes (``views``)."""
    views = []
    for size in config.train.image_sizes:
        view = prepare_split(train_set, at_image_size(config, size), vocab, progress=progress, device=device)
        if [r.filename for r in view.dataset.images] != [r.filename for r in train.dataset.images]:
            raise ItmError(f"train.image_sizes: at {size} px the readable training photos differ from those at "
                           f"{config.features.image_size} px")
        views.append(view.features)
    return dataclasses.replace(train, views=tuple(views))


def train_run(config: Config | None, data_dir: str | Path | None, run_dir: str | Path, resume: bool = False,
              progress: bool = True, log=print, resume_overrides: list[str] | None = None,
              device: torch.device | str | None = None, source: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train (or resume) a run on ``device`` (None: the CPU); returns the summary also written to
    RUN_DIR/summary.json. A run may be resumed on another device than the one it started on.
    ``source``: where the config came from, {"config": name or file, "overrides": [...]}, kept in
    run.json and the summary."""
    run_dir = Path(run_dir)
    device = as_device(device)
    payload = None
    setup(device)  # under torchrun: join the process group (each process trains on its share of every batch)
    log = log if is_main() else (lambda *args, **kwargs: None)
    if resume:
        config, data_dir, payload = resume_inputs(run_dir, resume_overrides)
        log(f"resuming {run_dir} at epoch {payload['loop']['epoch'] + 1}, step {payload['loop']['step']}")
    else:
        _start(config, Path(data_dir), run_dir, source or {"config": None, "overrides": []})
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    t0 = time.time()
    dataset = load_dataset(data_dir)
    train_set, val_set = dataset.split("train"), dataset.split("val")
    if not len(train_set) or not len(val_set):
        raise ItmError(f"dataset {data_dir}: needs train and val images (found {len(train_set)}, {len(val_set)})")
    vocab = build_vocab(train_set, config)
    table, word_dim, coverage = initial_word_table(vocab, config)
    log(f"vocabulary: {len(vocab)} words from the train split; {coverage}")
    train = prepare_split(train_set, config, vocab, progress=progress, device=device)
    if config.train.image_sizes:
        train = with_views(train, train_set, config, vocab, progress, device)
    val = prepare_split(val_set, config, vocab, progress=progress, device=device).head(config.train.val_images)
    dims = input_dims(train, vocab, word_dim)
    log(f"data ready in {time.time() - t0:.0f} s: {len(train.dataset)} train images, "
        f"{len(train.captions)} captions; validation on {len(val.dataset)} images")
    seed_everything(config.train.seed)
    model = new_model(config, dims, table)
    if config.train.init_from and payload is None:  # a resumed run's weights come from its last.pt
        load_initial_weights(model, config.train.init_from, vocab)
        log(f"starting from the weights of {config.train.init_from}")
    model = model.to(device)  # before the Trainer builds its optimiser
    settings = train.features.settings or {}
    word_table = word_table_record(config)
    trainer = Trainer(model, config, run_dir, lambda: model_payload(model, config, vocab, dims, settings, word_table))
    if config.train.distill_from:
        from itm.training.distill import load_teachers

        trainer.teacher = load_teachers(config.train.distill_from, vocab, settings, config.train.distill_temperature,
                                        device)
        log(f"distilling from {len(trainer.teacher.members)} teachers: {', '.join(config.train.distill_from)}")
    if config.train.concept_weight:
        from itm.training.grounding import concept_grounding

        trainer.grounding = concept_grounding(model, config.features, vocab.to_list(), config.train.concept_weight,
                                              config.train.concept_stand_in_weight)
        targets = trainer.grounding.targets
        log(f"concept-guided attention: weight {config.train.concept_weight} on '{trainer.grounding.attention}', "
            f"{int(targets.named.sum())} of {len(vocab)} words name ImageNet classes, "
            f"{int(((targets.target_weight > 0) & ~targets.named).sum())} more take the garments' map")
    if payload is not None:
        trainer.restore(payload)
    result = trainer.fit(train, val, progress=progress)
    run_record = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    summary = {"best_val_rsum": result["best_rsum"], "epochs": result["epochs"],
               "train_seconds": round(result["seconds"], 1), "model": config.model.name,
               "parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
               "processes": world_size(), "config": run_record.get("config"),
               "overrides": run_record.get("overrides", []), "seed": config.train.seed,
               "epochs_planned": config.train.epochs, "time_limit_hit": result["time_limit_hit"],
               "commit": run_record.get("commit")}
    if is_main():
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    log(f"done: best validation rsum {summary['best_val_rsum']:.1f} after {summary['epochs']} epochs, "
        f"{summary['train_seconds']:.0f} s of training; best checkpoint {run_dir / 'best.pt'}")
    return summary
