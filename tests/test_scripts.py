"""The experiment scripts: the results table reads every committed results file; the branch-weight
tuner's per-branch matrices recombine into the model's own scores."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import make_captions, make_features, tiny_model

from itm.evaluation.engine import score_all_pairs

REPO = Path(__file__).resolve().parents[1]


def load_script(name: str, folder: str = "scripts"):
    spec = importlib.util.spec_from_file_location(name, REPO / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_keep_training_copies_the_run_summary_into_its_results_file(tmp_path, monkeypatch, capsys):
    (tmp_path / "results").mkdir()
    (tmp_path / "runs/flickr8k/abl").mkdir(parents=True)
    metrics = {d: {"r1": 1.0, "r5": 2.0, "r10": 3.0, "medr": 9.0} for d in ("i2t", "t2i")}
    (tmp_path / "results/abl.json").write_text(json.dumps({**metrics, "rsum": 12.0, "seconds": 5.0}))
    summary = {"train_seconds": 3000.0, "epochs": 10, "best_val_rsum": 300.0}
    (tmp_path / "runs/flickr8k/abl/summary.json").write_text(json.dumps(summary))
    monkeypatch.chdir(tmp_path)
    table = load_script("results_table")
    table.keep_training("abl", "results")
    assert json.loads((tmp_path / "results/abl.json").read_text())["training"] == summary
    (tmp_path / "runs/flickr8k/abl/summary.json").unlink()  # runs/ is not committed: the JSON alone tells
    table.main("results")
    assert "| 50.0 min, 10 ep |" in capsys.readouterr().out.splitlines()[-1]


def test_results_table_reads_every_committed_results_file(monkeypatch, tmp_path, capsys):
    folder = REPO / "results" / "flickr8k"
    evals = [p.stem for p in sorted(folder.glob("*.json")) if "i2t" in json.loads(p.read_text(encoding="utf-8"))]
    monkeypatch.chdir(tmp_path)  # no runs/ here: the training column comes from each JSON alone
    load_script("results_table").main(str(folder))
    rows = capsys.readouterr().out.splitlines()[2:]
    assert [row.split(" | ")[0].removeprefix("| ") for row in rows] == evals  # benchmark files passed over
    # the old dual-encoder baseline's files keep their training record inside the JSON
    assert any(row.startswith("| dual_lite2 |") and "16 ep" in row for row in rows)


@pytest.mark.parametrize("lam", [0.6, 2.0])
def test_branch_matrices_recombine_into_the_models_scores(lam):
    model, _ = tiny_model("bssan_sharp", f"model.o2w_weight={lam}")
    features, captions = make_features(5, half=True), make_captions([4, 1, 7, 3, 7, 2, 5, 3, 6], width=9)
    parts = load_script("tune_branch_weight").branch_matrices(model, SimpleNamespace(features=features, captions=captions))
    full = score_all_pairs(model, features, captions)
    np.testing.assert_allclose(parts["w2r"] + lam * parts["o2w"], full, rtol=1e-5, atol=1e-5)
    assert not np.allclose(parts["o2w"], 0) and not np.allclose(parts["w2r"], full)
    assert set(model.branches) == {"w2r", "o2w"} and model.o2w_weight == lam  # the model is left as it was


def test_rerank_at_k_orders_the_shortlist_by_exact_scores_and_keeps_the_rest_behind():
    bench = load_script("search_quality", "benchmarks")
    short = np.array([[0.9, 0.8, 0.1, 0.0]])
    exact = np.array([[0.0, 1.0, 5.0, 0.5]])
    assert list(np.argsort(-bench.reranked(short, exact, 2)[0])) == [1, 0, 2, 3]  # item 2 is outside the shortlist
    assert list(np.argsort(-bench.reranked(short, exact, 4)[0])) == [2, 1, 3, 0]  # everything re-ranked


def test_train_step_benchmark_times_the_trainers_steps_through_the_models_training_loss(monkeypatch):
    from itm.models.dual import DualEncoder

    bench = load_script("train_step", "benchmarks")
    calls = []
    real = DualEncoder.training_loss

    def counted(self, batch):
        calls.append(len(batch.caps))
        return real(self, batch)

    monkeypatch.setattr(DualEncoder, "training_loss", counted)
    median, record = bench.step_seconds("dual_cpu", steps=2, overrides=["model.embed_dim=16"])
    batch = record["batch"]
    assert calls == [batch] * (2 + bench.WARM_UP + 1)  # every timed step is the model's own training hook
    assert median > 0 and record["overrides"] == ["model.embed_dim=16"]
    assert record["projected_run_min"] == round(median * (bench.FLICKR8K_TRAIN_CAPTIONS // batch) * record["epochs"] / 60, 1)
