"""The experiment scripts: the dual-encoder yardstick runs end to end and writes `itm eval --json` keys;
the branch-weight tuner's per-branch matrices recombine into the model's own scores."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import make_captions, make_features, tiny_model

from itm.data.synthetic import synthetic_karpathy_dir
from itm.evaluation.engine import score_all_pairs

REPO = Path(__file__).resolve().parents[1]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dual_baseline_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ITM_CACHE", str(tmp_path / "cache"))
    data = synthetic_karpathy_dir(tmp_path / "synth", n_train=24, n_val=8, n_test=8, size=64, seed=0)
    out = tmp_path / "dual.json"
    metrics = load_script("dual_baseline").main(
        ["--data", str(data), "--backbone", "efficientnet_lite0", "--image-size", "64", "--minutes", "0.01",
         "--batch-size", "16", "--json", str(out)])
    record = json.loads(out.read_text())
    assert record["rsum"] == pytest.approx(metrics["rsum"])
    recalls = [record[d][f"r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)]
    assert record["rsum"] == pytest.approx(sum(recalls))  # rsum is the sum of the six recalls it reports
    assert all(0 <= r <= 100 for r in recalls) and recalls[0] <= recalls[1] <= recalls[2]
    assert (record["n_images"], record["n_captions"]) == (8, 40)
    assert record["training"]["epochs"] >= 1 and len(record["training"]["history"]) == record["training"]["epochs"]
    # the results table reads it like an itm eval file, training time from the record itself
    table = load_script("results_table")
    monkeypatch.chdir(tmp_path)
    table.main(str(tmp_path))
    row = capsys.readouterr().out.splitlines()[-1]
    assert row.startswith("| dual |") and f"{record['rsum']:.1f}" in row and " ep |" in row


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
    spec = importlib.util.spec_from_file_location("search_quality", REPO / "benchmarks" / "search_quality.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    short = np.array([[0.9, 0.8, 0.1, 0.0]])
    exact = np.array([[0.0, 1.0, 5.0, 0.5]])
    assert list(np.argsort(-bench.reranked(short, exact, 2)[0])) == [1, 0, 2, 3]  # item 2 is outside the shortlist
    assert list(np.argsort(-bench.reranked(short, exact, 4)[0])) == [2, 1, 3, 0]  # everything re-ranked
