"""The main job, end to end: features -> training -> test evaluation -> a report with pictures.

Runs on the Flickr8k subset bundled in the package (``itm/assets/flickr8k_mini``) unless given a
Karpathy-format folder. Features are cached, so a second run skips extraction.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from itm.checkpoint import load_checkpoint
from itm.config import RECOMMENDED_CONFIG, apply_overrides, load_config
from itm.data.load import load_dataset
from itm.evaluation.engine import score_all_pairs
from itm.evaluation.metrics import chance_metrics, format_table, retrieval_metrics
from itm.pipeline import prepare_split
from itm.report import Report, metrics_table, save_pictures, training_curve, write_report
from itm.training.run import train_run
from itm.viz.explain import (
    LazyImages,
    explain_pair,
    image_array,
    pair_figures,
    top_captions_figure,
    top_images_figure,
)

BUNDLED_DATA = Path(__file__).resolve().parent / "assets" / "flickr8k_mini"
# the bundled subset has 1,000 training images: a shorter budget keeps the demo within 15 minutes
DEMO_DEFAULTS = ["train.max_minutes=7", "train.val_images=100"]

PUBLISHED = "Published Flickr8k test rsum (full 1K test, not this subset): DVSA 199.9, m-CNN 275.2, FV-HGLMM 300.0."


def run_demo(data_dir: str | Path | None = None, out_dir: str | Path = "itm-demo", config: str | None = None,
             overrides: list[str] | None = None, progress: bool = True, log=print) -> Path:
    """Train and evaluate the recommended BSSAN configuration; returns the report's path."""
    started = time.time()
    data_dir = Path(data_dir) if data_dir else BUNDLED_DATA
    out_dir = Path(out_dir)
    run_dir = out_dir / "run"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # the demo's own folder: each demo trains afresh, features stay cached
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = load_config(config or RECOMMENDED_CONFIG, DEMO_DEFAULTS if data_dir == BUNDLED_DATA else [])
    cfg = apply_overrides(cfg, overrides or [])
    log(f"itm demo: {cfg.model.name} ({config or RECOMMENDED_CONFIG}) on {data_dir}; output in {out_dir}")
    source = {"config": config or RECOMMENDED_CONFIG,
              "overrides": [*(DEMO_DEFAULTS if data_dir == BUNDLED_DATA else []), *(overrides or [])]}
    summary = train_run(cfg, data_dir, run_dir, progress=progress, log=log, source=source)

    ckpt = load_checkpoint(run_dir / "best.pt")
    test_set = load_dataset(data_dir).split("test")
    test = prepare_split(test_set, ckpt.config, ckpt.vocab, progress=progress)
    t0 = time.time()
    scores = score_all_pairs(ckpt.model, test.features, test.captions, ckpt.config.eval.memory_budget_mb,
                             ckpt.config.eval.caption_tile, progress=progress)
    metrics = retrieval_metrics(scores, test.caption_to_image)
    metrics["seconds"] = round(time.time() - t0, 1)
    per_image = max(1, round(len(test.captions) / len(test.dataset)))
    chance = chance_metrics(len(test.dataset), per_image)
    log(format_table(metrics, f"test: {len(test.dataset)} images, {len(test.captions)} captions"))

    report = build_report(cfg.model.name, data_dir, summary, metrics, chance, test, scores, ckpt, out_dir)
    path = write_report(report, out_dir)
    log(f"report: {path.resolve()}  ({time.time() - started:.0f} s in all)")
    return path


def build_report(model_name: str, data_dir: Path, summary: dict[str, Any], metrics: dict, chance: dict,
                 test, scores: np.ndarray, ckpt, out_dir: Path) -> Report:
    history = read_history(out_dir / "run")
    texts = [" ".join(tokens) for im in test.dataset.images for tokens in im.tokens]
    owner = test.caption_to_image
    paths = [im.path for im in test.dataset.images]
    figures = {"training_curve.png": training_curve(history)}
    examples: list[tuple[str, str]] = []
    for n, image_index in enumerate((0, 1)):
        figures[f"image_query_{n}.png"] = top_captions_figure(scores[image_index], image_array(paths[image_index]),
                                                              texts, owner == image_index,
                                                              title=f"test image {image_index}")
        examples.append((f"image_query_{n}.png", f"Top-5 captions for test image {image_index} (correct ones marked)."))
    first_captions = [int(np.flatnonzero(owner == i)[0]) for i in (2, 3)]
    for n, c in enumerate(first_captions):
        figures[f"caption_query_{n}.png"] = top_images_figure(scores[:, c], texts[c], LazyImages(paths), int(owner[c]))
        examples.append((f"caption_query_{n}.png", f"Top-5 images for test caption {c} (the correct one framed green)."))
    attention: list[tuple[str, str]] = []
    for image_index in (0, 1):
        c = int(np.flatnonzero(owner == image_index)[0])
        tokens = test.dataset.images[image_index].tokens[0]
        explanation = explain_pair(ckpt.model, test.features, image_index, test.captions, c, tokens)
        for branch, fig in pair_figures(explanation, image_array(paths[image_index]), test.features,
                                        image_index, title=" ".join(explanation.words)).figures.items():
            name = f"attention_{image_index}_{branch}.png"
            figures[name] = fig
            what = explanation.specs[branch].title
            attention.append((name, f"{what}: test image {image_index} and its first caption"))
    save_pictures(figures, out_dir)

    report = Report(f"itm demo: {model_name} on {data_dir.name}")
    report.intro.append(f"Trained {summary['epochs']} epochs in {summary['train_seconds']:.0f} s "
                        f"(best validation rsum {summary['best_val_rsum']:.1f}); test set: "
                        f"{len(test.dataset)} images, {len(test.captions)} captions; "
                        f"scoring all pairs took {metrics['seconds']:.1f} s.")
    report.add("Retrieval on the test split", [metrics_table({model_name: metrics, "chance": chance}), PUBLISHED])
    report.add("Training", [], [("training_curve.png", "Validation rsum and training loss per epoch.")])
    report.add("Retrieval examples", [], examples)
    report.add("What the model attends to", [
        "The attention maps the model declares: maps over the region grid are upsampled and smoothed over "
        "the image (alpha 0.7); maps over the words are drawn as curves or bars."], attention)
    return report


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]
