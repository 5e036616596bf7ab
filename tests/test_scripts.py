"""The experiment scripts and benchmarks: the results table reads every committed results file; the
branch-weight tuner and the MLASM leak demonstration take the engine's score parts; the training-step
benchmark times the trainer's own steps; the search benchmark measures the searcher users run."""

from __future__ import annotations

import importlib.util
import itertools
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import FEATURES, index_checkpoint, make_captions, make_features, tiny_model, tiny_overrides

from itm.checkpoint import load_checkpoint, model_payload, new_model, save_atomic
from itm.config import load_config
from itm.data.load import load_dataset
from itm.data.synthetic import synthetic_karpathy_dir
from itm.data.vocab import Vocab
from itm.evaluation.engine import score_all_pairs, score_all_parts
from itm.evaluation.evaluate import combine_scores
from itm.evaluation.metrics import retrieval_metrics, summarize_ranks
from itm.models.base import TOTAL, InputDims
from itm.pipeline import prepare_split
from itm.retrieval.search import Searcher

REPO = Path(__file__).resolve().parents[1]


def load_script(name: str, folder: str = "scripts"):
    """``folder/name.py`` as a module, with its folder first on ``sys.path`` while it loads, as
    ``python folder/name.py`` has it (the benchmarks import their shared ``_report``)."""
    spec = importlib.util.spec_from_file_location(name, REPO / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(REPO / folder))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(REPO / folder))
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


def test_branch_weight_tuner_reports_the_models_own_score_at_the_trained_lambda(tmp_path, monkeypatch):
    monkeypatch.setenv("ITM_CACHE", str(tmp_path / "cache"))
    data = synthetic_karpathy_dir(tmp_path / "synth", n_train=4, n_val=6, n_test=6, size=64, seed=0)
    lam = 1.5  # alpha = 1 / (1 + lambda) = 0.4 is on the grid: the same ranking as the trained weights
    ckpt = index_checkpoint(tmp_path / "bssan.pt", "bssan", overrides=(f"model.o2w_weight={lam}",))
    out = tmp_path / "tuned.json"
    tuner = load_script("tune_branch_weight")
    record = tuner.main(["--checkpoint", str(ckpt), "--data", str(data), "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(record))
    assert record["trained_lambda"] == lam and len(record["test"]["rsum_by_alpha"]) == len(tuner.ALPHAS)
    loaded = load_checkpoint(ckpt)
    test = prepare_split(load_dataset(data, "test"), loaded.config, loaded.vocab, progress=False)
    own = retrieval_metrics(score_all_pairs(loaded.model, test.features, test.captions), test.caption_to_image)
    assert record["test_at_trained_lambda"] == own  # the model's own scores, not a re-weighted copy
    assert record["test"]["rsum_by_alpha"][tuner.ALPHAS.index(0.4)] == pytest.approx(own["rsum"], abs=0.01)
    chosen = record["chosen_alpha"]
    assert record["test_at_chosen_lambda"]["rsum"] == pytest.approx(
        record["test"]["rsum_by_alpha"][tuner.ALPHAS.index(chosen)], abs=0.01)


def test_leak_demo_takes_the_engines_parts_and_leaks_only_through_the_diagonal_vectors():
    model, _ = tiny_model("mlasm", "model.local_weight=0.7")
    features, captions = make_features(4), make_captions([4, 1, 3, 2, 4, 2, 3, 1], width=5)
    owner = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    demo = load_script("mlasm_leak_demo")
    result = demo.leaky_and_honest(model, features, captions, owner)
    parts = score_all_parts(model, features, captions)
    assert result["honest"] == retrieval_metrics(parts[TOTAL], owner)
    assert result["honest_global_only"] == retrieval_metrics(parts["global"], owner)
    leaky = demo.leaky_global_scores(model, features, captions, owner)
    firsts = [0, 2, 4, 6]  # each image's first caption: there both rules condition on the same pair
    np.testing.assert_allclose(leaky[np.arange(4), firsts], parts["global"][np.arange(4), firsts], rtol=1e-5, atol=1e-6)
    assert not np.allclose(leaky, parts["global"], atol=1e-4)  # elsewhere the code's vectors differ
    assert result["leaky"] == retrieval_metrics(0.7 * parts["local"] + 0.3 * leaky, owner)


def test_rank_of_puts_the_reranked_items_first_and_counts_what_each_item_stands_for():
    bench = load_script("search_quality", "benchmarks")
    rest = ["a", "b", "c", "d", "e"]  # the shortlist's order
    assert bench.rank_of(["c", "a"], rest, {"c"}) == 0
    assert bench.rank_of(["c", "a"], rest, {"b"}) == 2  # after the re-ranked two
    assert bench.rank_of(["c", "a"], rest, {"d", "e"}) == 3
    assert bench.rank_of(["c", "a"], rest, {"d"}, {"a": 1, "b": 2, "c": 1, "d": 1, "e": 1}) == 4  # b: two images


def synthetic_checkpoint(path: Path, name: str, words: list[str]) -> Path:
    """A tiny untrained ``name`` on the search tests' Lite0 64 px features, with the vocabulary ``words``."""
    config = load_config(None, [*tiny_overrides(name), *FEATURES])
    torch.manual_seed(0)
    dims = InputDims(word_dim=50, region_dim=1280, object_dim=1280, vocab_size=len(words) + 2)
    settings = {"backbone": "efficientnet_lite0", "image_size": 64, "num_objects": 3, "proposals": "activation",
                "weights": None}
    save_atomic(model_payload(new_model(config, dims), config, Vocab.build([words]), dims, settings), path)
    return path


def two_stage_ranks(short: np.ndarray, exact: np.ndarray, owner: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference: 0-based (i2t, t2i) ranks when each query's top k by ``short`` are ordered by
    ``exact`` and the rest follow in ``short``'s order; (images, captions) matrices without ties."""
    def ranked(short_row, exact_row):
        order = list(np.argsort(-short_row, kind="stable"))
        return sorted(order[:k], key=lambda j: -exact_row[j]) + order[k:]

    i2t = [min(ranked(short[i], exact[i]).index(c) for c in np.flatnonzero(owner == i)) for i in range(len(short))]
    t2i = [ranked(short[:, c], exact[:, c]).index(owner[c]) for c in range(len(owner))]
    return np.array(i2t), np.array(t2i)


def test_search_quality_measures_what_the_searcher_returns(tmp_path, monkeypatch):
    monkeypatch.setenv("ITM_CACHE", str(tmp_path / "cache"))
    data = synthetic_karpathy_dir(tmp_path / "synth", n_train=1, n_val=1, n_test=5, size=64, seed=0,
                                  captions_per_image=2)
    test = load_dataset(data, "test")
    words = sorted({w for im in test.images for tokens in im.tokens for w in tokens})
    assert len({tuple(t) for im in test.images for t in im.tokens}) == 10  # no two captions alike: no ties
    shortlist = synthetic_checkpoint(tmp_path / "dual.pt", "dual", words)
    matcher = synthetic_checkpoint(tmp_path / "bssan.pt", "bssan", words)
    bench = load_script("search_quality", "benchmarks")
    assert bench.KS == (10, 20, 50, 100)
    monkeypatch.setattr(bench, "KS", (2, 3, 10))  # K = 10 covers both collections (5 photos, 10 captions)
    calls = {"search": 0, "search_image": 0}
    for method in calls:
        real = getattr(Searcher, method)

        def counted(self, *args, method=method, real=real, **kwargs):
            calls[method] += 1
            return real(self, *args, **kwargs)

        monkeypatch.setattr(Searcher, method, counted)
    out = tmp_path / "search.json"
    result = bench.main(["--shortlist", str(shortlist), "--checkpoint", str(matcher), "--data", str(data),
                         "--queries", "3", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert set(result) == {"shortlist", "matcher", "exact_all_pairs_seconds", "dual_alone", "exact",
                           "exact_query_ms_1k", "exact_query_ms_8k", "exact_query_ms_1k_cached",
                           "exact_query_ms_8k_cached", "two_stage_1k", "rerank_k2", "rerank_k3", "rerank_k10"}
    assert set(result["two_stage_1k"]["k2"]) == {"median_ms", "p95_ms", "shortlist_median_ms", "rerank_median_ms",
                                                 "fraction_of_exact", "fraction_of_exact_cached"}
    # recall comes from the searcher's own answers, both ways: per query, one search without re-ranking + one per K
    assert calls["search_image"] == 5 * (1 + len(bench.KS)) and calls["search"] >= 10 * (1 + len(bench.KS))
    splits = {}
    for name, path in (("short", shortlist), ("exact", matcher)):
        loaded = load_checkpoint(path)
        split = prepare_split(test, loaded.config, loaded.vocab, progress=False)
        splits[name] = score_all_pairs(loaded.model, split.features, split.captions)
    owner = split.caption_to_image
    assert result["dual_alone"] == retrieval_metrics(splits["short"], owner)
    assert result["exact"] == retrieval_metrics(splits["exact"], owner)
    assert result["rerank_k10"] == result["exact"]  # everything re-ranked
    for k in (2, 3):
        i2t, t2i = two_stage_ranks(splits["short"], splits["exact"], owner, k)
        assert result[f"rerank_k{k}"]["i2t"] == summarize_ranks(i2t) and result[f"rerank_k{k}"]["t2i"] == summarize_ranks(t2i)
    # an ensemble of re-rankers: exact is itm eval's ensemble (each member's matrix z-scored, then averaged)
    other = synthetic_checkpoint(tmp_path / "caan.pt", "caan", words)
    loaded = load_checkpoint(other)
    split = prepare_split(test, loaded.config, loaded.vocab, progress=False)
    both = combine_scores([splits["exact"], score_all_pairs(loaded.model, split.features, split.captions)])
    result = bench.main(["--shortlist", str(shortlist), "--checkpoint", str(matcher), str(other), "--data", str(data),
                         "--queries", "3"])
    assert result["matcher"] == [str(matcher), str(other)] and result["exact"] == retrieval_metrics(both, owner)


def test_train_step_benchmark_times_the_trainers_steps_through_the_models_training_loss(monkeypatch):
    from itm.models.dual import DualEncoder

    bench = load_script("train_step", "benchmarks")
    calls = []
    real = DualEncoder.training_loss

    def counted(self, batch):
        calls.append(len(batch.caps))
        return real(self, batch)

    monkeypatch.setattr(DualEncoder, "training_loss", counted)
    # the benchmark's clock, read once per optimiser update: update k comes k * k "seconds" after
    # update k - 1, whatever this machine's speed
    stamps = itertools.accumulate(k * k for k in itertools.count(1))
    monkeypatch.setattr(bench, "time", SimpleNamespace(perf_counter=lambda: float(next(stamps))))
    median, record = bench.step_seconds("dual_cpu", steps=3, overrides=["model.embed_dim=16"])
    train = load_config("dual_cpu", ["model.embed_dim=16"]).train
    batch = record["batch"]
    assert batch == train.batch_size and record["epochs"] == train.epochs and record["budget_min"] == train.max_minutes
    assert calls == [batch] * (3 + bench.WARM_UP + 1)  # every timed step is the model's own training hook
    # 6 updates, 5 steps between them (4, 9, 16, 25, 36 s); the 2 warm-up steps dropped: the median of
    # 16, 25 and 36 (their mean would be 25.7)
    assert bench.WARM_UP == 2 and median == 25.0 and record["step_s"] == 25.0
    assert record["overrides"] == ["model.embed_dim=16"]
    assert record["projected_run_min"] == round(25.0 * (bench.FLICKR8K_TRAIN_CAPTIONS // batch) * train.epochs / 60, 1)


def test_ensembles_from_saved_matrices_are_the_combined_matrices(tmp_path, capsys):
    """Each member's saved matrix, z-scored or raw, meaned: the rsum ``itm eval`` gives the ensemble;
    the cost is the sum of the members' scoring times."""
    data = synthetic_karpathy_dir(tmp_path / "synth", n_train=2, n_val=2, n_test=6, size=32, seed=0)
    _, owner = load_dataset(data, "test").split("test").caption_tokens()
    gen = np.random.default_rng(0)
    matrices = {"a": gen.normal(size=(6, len(owner))), "b": 1000 * gen.normal(size=(6, len(owner)))}
    for name, matrix in matrices.items():
        np.save(tmp_path / f"{name}.npy", matrix.astype(np.float32))
        rsum = retrieval_metrics(matrix, owner)["rsum"]
        (tmp_path / f"{name}.json").write_text(json.dumps({"rsum": rsum, "seconds": 2.5}))
    [result] = load_script("ensembles").main(["--data", str(data), "--dir", str(tmp_path), "--ensemble", "a,b"])
    z = [(m - m.mean()) / m.std() for m in matrices.values()]
    assert result["rsum_zscore"] == pytest.approx(retrieval_metrics((z[0] + z[1]) / 2, owner)["rsum"], abs=0.01)
    assert result["rsum_none"] == pytest.approx(retrieval_metrics(matrices["b"], owner)["rsum"], abs=0.01)
    assert result["scoring_seconds"] == 5.0 and "a + b: rsum" in capsys.readouterr().out
    (tmp_path / "b.json").unlink()
    with pytest.raises(SystemExit, match=r"ensembles.py: missing .*b\.json$"):
        load_script("ensembles").main(["--data", str(data), "--dir", str(tmp_path), "--ensemble", "a,b"])


def ship_models_setting(tmp_path, monkeypatch):
    """ship_models.py loaded with its shipped folder, ROOT and runs/ in ``tmp_path``; a 4-photo test
    split: (the script, the data folder, the captions' owners, the shipped folder)."""
    ship = load_script("ship_models")
    data = synthetic_karpathy_dir(tmp_path / "synth", n_train=1, n_val=1, n_test=4, size=32, captions_per_image=2)
    _, owner = load_dataset(data, "test").split("test").caption_tokens()
    shipped = tmp_path / "models"
    shipped.mkdir()
    (tmp_path / "runs").mkdir()
    monkeypatch.setattr(ship, "shipped_folder", lambda: shipped)
    monkeypatch.setattr(ship, "ROOT", tmp_path)
    return ship, data, owner, shipped


def test_ship_models_adds_rerankers_beside_the_shipped_files(tmp_path, monkeypatch):
    """--add-rerank writes the run in float16 as <model>.pt, leaves the shipped files' bytes alone, and
    the card's ensemble metrics are the members' saved matrices combined as itm eval combines them."""
    ship, data, owner, shipped = ship_models_setting(tmp_path, monkeypatch)
    rng = np.random.default_rng(0)
    (shipped / "bssan.pt").write_bytes(b"the shipped file")
    np.save(tmp_path / "bssan.npy", rng.normal(size=(4, 8)).astype(np.float32))
    (shipped / "card.json").write_text(json.dumps({"models": {"bssan": {"role": "rerank"}, "dual": {"role": "shortlist"}}}))
    run = tmp_path / "caan_run"
    run.mkdir()
    index_checkpoint(run / "best.pt", "caan")
    (run / "summary.json").write_text(json.dumps({"model": "caan", "epochs": 1}))
    caan_scores = rng.normal(size=(4, 8)).astype(np.float32)

    def evaluate(path, data, name, scores):
        assert load_checkpoint(path).config.model.name == name == "caan"
        np.save(scores, caan_scores)
        return retrieval_metrics(caan_scores, owner)

    monkeypatch.setattr(ship, "evaluate", evaluate)
    monkeypatch.setattr(ship, "shipped_role", lambda role: ["bssan"])
    ship.main(["--add-rerank", str(run), "--add-command", "bash train caan", "--data", str(data),
               "--scores", f"bssan={tmp_path / 'bssan.npy'}"])
    card = json.loads((shipped / "card.json").read_text())
    assert (shipped / "bssan.pt").read_bytes() == b"the shipped file"
    assert card["models"]["caan"]["role"] == "rerank" and card["models"]["caan"]["trained_by"] == "bash train caan"
    assert all(v.dtype == torch.float16 for v in torch.load(shipped / "caan.pt", weights_only=False)["model"].values()
               if v.is_floating_point())
    expected = retrieval_metrics(combine_scores([np.load(tmp_path / "bssan.npy"), caan_scores]), owner)
    assert card["rerank_ensemble"]["members"] == ["bssan", "caan"]
    assert card["rerank_ensemble"]["flickr8k_test"]["rsum"] == expected["rsum"]


def test_ship_models_replaces_a_shipped_reranker_and_measures_it_on_search_grid(tmp_path, monkeypatch):
    """--replace-rerank writes the newer run over the shipped file (same name, the old pictures' grid
    kept), records what it replaced, and the ensemble's figures combine its one-grid matrix (search's)
    with the other members' matrices, as itm eval combines them."""
    ship, data, owner, shipped = ship_models_setting(tmp_path, monkeypatch)
    rng = np.random.default_rng(1)
    index_checkpoint(shipped / "caan.pt", "caan", overrides=("eval.explain_image_size=96",))
    old = {"role": "rerank", "file": "caan.pt", "sha1": "old", "trained_by": "bash old", "flickr8k_test": {"rsum": 1.0}}
    card = {"models": {"bssan": {"role": "rerank", "file": "bssan.pt"}, "caan": old},
            "rerank_ensemble": {"members": ["bssan", "caan"], "norm": "zscore"}}
    (shipped / "card.json").write_text(json.dumps(card))
    np.save(tmp_path / "bssan.npy", rng.normal(size=(4, 8)).astype(np.float32))
    run = tmp_path / "caan_run"
    run.mkdir()
    index_checkpoint(run / "best.pt", "caan", seed=3, overrides=("eval.score_sizes=[96]",))
    (run / "summary.json").write_text(json.dumps({"model": "caan", "epochs": 1}))
    matrices = {(): rng.normal(size=(4, 8)).astype(np.float32), ("eval.score_sizes=[]",): rng.normal(size=(4, 8))}
    calls = []

    def evaluate(path, data, name, scores, overrides=()):
        calls.append((name, overrides))
        if scores is not None:
            np.save(scores, matrices[overrides])
        return retrieval_metrics(matrices[overrides], owner)

    monkeypatch.setattr(ship, "evaluate", evaluate)
    ship.main(["--replace-rerank", "caan", str(run), "--replace-command", "bash train caan", "--data", str(data),
               "--scores", f"bssan={tmp_path / 'bssan.npy'}"])
    card = json.loads((shipped / "card.json").read_text())
    entry = card["models"]["caan"]
    assert calls == [("caan", ()), ("caan_search_grid", ("eval.score_sizes=[]",))]  # bssan's matrix was given
    assert entry["replaces"] == {"sha1": "old", "trained_by": "bash old", "flickr8k_test": {"rsum": 1.0}}
    assert entry["trained_by"] == "bash train caan" and entry["score_sizes"] == [64, 96]
    assert entry["flickr8k_test"]["rsum"] == retrieval_metrics(matrices[()], owner)["rsum"]
    one_grid = matrices[("eval.score_sizes=[]",)]
    assert entry["flickr8k_test_search_grid"]["rsum"] == retrieval_metrics(one_grid, owner)["rsum"]
    saved = load_checkpoint(shipped / "caan.pt")
    assert saved.config.eval.explain_image_size == 96 and saved.config.eval.score_sizes == [96]
    expected = retrieval_metrics(combine_scores([np.load(tmp_path / "bssan.npy"), one_grid]), owner)
    assert card["rerank_ensemble"]["flickr8k_test"]["rsum"] == expected["rsum"]
    bssan_now = retrieval_metrics(np.load(tmp_path / "bssan.npy"), owner)
    assert card["models"]["bssan"]["flickr8k_test"]["rsum"] == bssan_now["rsum"]  # re-measured from its matrix
    with pytest.raises(SystemExit, match="no shipped re-ranker"):
        ship.main(["--replace-rerank", "dual", str(run), "--replace-command", "x", "--data", str(data)])


def test_library_search_measures_the_product_path_with_and_without_the_hub_correction(tmp_path, monkeypatch):
    """benchmarks/library_search.py: every photo of the dataset indexed, the split's captions searched;
    its figures are those of the searcher's own answers, recomputed here."""
    from itm.evaluation.hubness import SEARCH_DEFAULT

    monkeypatch.setenv("ITM_CACHE", str(tmp_path / "cache"))
    data = synthetic_karpathy_dir(tmp_path / "synth", n_train=2, n_val=1, n_test=3, size=64, seed=0,
                                  captions_per_image=2)
    dataset = load_dataset(data)
    words = sorted({w for im in dataset.images for tokens in im.tokens for w in tokens})
    shortlist = synthetic_checkpoint(tmp_path / "dual.pt", "dual", words)
    matcher = synthetic_checkpoint(tmp_path / "bssan.pt", "bssan", words)
    bench = load_script("library_search", "benchmarks")
    out = tmp_path / "library.json"
    result = bench.main(["--data", str(data), "--index", str(tmp_path / "lib"), "--shortlist", str(shortlist),
                         "--checkpoint", str(matcher), "--cost-photos", "2", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert (result["photos"], result["index_added"]) == (6, 6)  # every split's photos, not only the queries'
    assert set(result["index_cost_per_photo"]) == {"extraction_ms", "vector_ms", "bank_ms", "bank_increase", "photos",
                                                   "pool_encoding_s_per_run"}
    queries = [(" ".join(t), im.filename) for im in dataset.split("test").images for t in im.tokens]
    for method in (SEARCH_DEFAULT, "none"):
        searcher = Searcher(tmp_path / "lib" / "index", normalise=method)
        ids = {p: i for s, (i, _) in searcher.images.items() for p in searcher.paths[s]}
        tops = [[h.image_id for h in searcher.search(text, k=10)] for text, _ in queries]
        first = np.mean([top[0] == ids[name] for top, (_, name) in zip(tops, queries, strict=True)])
        assert result[method]["t2i"]["r1"] == pytest.approx(100 * first, abs=0.01)
        assert result[method]["t2i"]["r10"] == 100.0  # six photos: every query's photo is in its top 10
        assert result[method]["hubness"]["queries"] == 6 and result[method]["hubness"]["photos"] == 6
    change = result[SEARCH_DEFAULT]["t2i"]["r1"] - result["none"]["t2i"]["r1"]
    assert result["r1_change"] == pytest.approx(change, abs=0.02)
    low, high = result["r1_change_interval"]
    assert low <= result["r1_change"] <= high


def test_floor_benchmark_reports_each_config_against_the_matmul_floor(monkeypatch):
    """benchmarks/floor.py: the ratios are the measured times over the FLOP count at the measured rate."""
    bench = load_script("floor", "benchmarks")
    monkeypatch.setattr(bench, "matmul_gflops", lambda dtype, **_: {torch.float32: 100.0, torch.bfloat16: 800.0}[dtype])
    result = bench.main(["--configs", "dual_cpu", "--budget", "0.05", "--steps", "1"])
    assert (result["fp32_gflops"], result["bf16_gflops"]) == (100.0, 800.0)
    entry = result["models"]["dual_cpu"]
    floor_us = entry["flop_per_pair"] / 100e9 * 1e6
    assert entry["flop_per_pair"] == 2 * load_config("dual_cpu").model.embed_dim  # an inner product per pair
    assert entry["fp32_floor_us_per_pair"] == pytest.approx(floor_us, rel=1e-2, abs=1e-3)
    assert entry["score_x_floor"] == pytest.approx(entry["score_us_per_pair"] / floor_us, rel=2e-2)
    assert entry["train_x_floor"] == pytest.approx(entry["train_us_per_pair"] / (3 * floor_us), rel=2e-2)


def test_the_flop_count_includes_products_accumulated_in_place():
    """A model that accumulates a product into a tensor it owns (``baddbmm_``, ``addmm_``) is charged the
    same FLOPs as the out-of-place product: torch's counter alone drops them, and the floor with them."""
    from torch.utils.flop_counter import FlopCounterMode

    bench = load_script("coco5k_estimate", "benchmarks")
    a, b, acc = torch.randn(3, 5, 7), torch.randn(3, 7, 2), torch.zeros(3, 5, 2)
    with FlopCounterMode(display=False, custom_mapping=bench.IN_PLACE_PRODUCTS) as counter:
        acc.baddbmm_(a, b)
        acc[0].addmm_(a[0], b[0])
    assert counter.get_total_flops() == 2 * 3 * 5 * 7 * 2 + 2 * 5 * 7 * 2
    with FlopCounterMode(display=False, custom_mapping=bench.IN_PLACE_PRODUCTS) as counter:
        torch.baddbmm(acc, a, b)
    assert counter.get_total_flops() == 2 * 3 * 5 * 7 * 2


def test_matmul_rate_counts_two_flops_per_multiply_add(monkeypatch):
    bench = load_script("floor", "benchmarks")
    clock = iter(range(100))
    monkeypatch.setattr(bench.time, "perf_counter", lambda: float(next(clock)))  # each product: 1 "second"
    assert bench.matmul_gflops(torch.float32, n=64, repeats=3) == pytest.approx(2 * 64**3 / 1e9)


def test_tile_benchmark_times_each_tiling_and_puts_the_engines_tile_back(monkeypatch):
    """benchmarks/tiles.py: one figure per config, grid and tile; the tilings are the ones asked
    for (the engine saw each), and the engine's own tile is restored afterwards."""
    import itm.evaluation.engine as engine

    bench = load_script("tiles", "benchmarks")
    seen, real = [], engine.score_all_pairs

    def spying(*args, **kwargs):
        seen.append(engine.CACHE_TILE_BYTES)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "score_all_pairs", spying)
    before = engine.CACHE_TILE_BYTES
    result = bench.main(["--configs", "caan_cpu", "--tiles", "2", "0.5", "--grids", "9", "--images", "2",
                         "--captions", "16", "--repeats", "2"])
    assert set(result["us_per_pair"]) == {"caan_cpu@9"} and set(result["us_per_pair"]["caan_cpu@9"]) == {"2", "0.5"}
    assert seen == [2 * 2**20, 2**19] * 2 and engine.CACHE_TILE_BYTES == before


def test_speedup_is_the_reference_time_over_the_current_one_per_config():
    bench = load_script("speedup", "benchmarks")

    def floor(score, train):
        return {"models": {"m": {"score_us_per_pair": score, "train_us_per_pair": train, "score_x_floor": score / 10,
                                 "train_x_floor": train / 30}}}

    out = bench.speedups(floor(90.0, 300.0), floor(30.0, 200.0))
    assert out == {"m": {"score": 3.0, "train": 1.5, "score_x_floor_now": 3.0, "train_x_floor_now": 200 / 30}}
    assert bench.speedups(floor(90.0, 300.0), {"models": {}}) == {}  # a config the current tree lacks


def test_repeated_floor_runs_alternate_the_trees_and_report_medians(monkeypatch, tmp_path):
    """``--repeats``: reference and current floor.py runs alternate; every figure is its runs' median."""
    bench = load_script("speedup", "benchmarks")
    calls = []

    def fake_floor(tree, threads, out):
        calls.append(tree)
        score = {0: 90.0, 1: 30.0, 2: 120.0, 3: 10.0, 4: 60.0, 5: 20.0}[len(calls) - 1]
        return {"threads": threads, "fp32_gflops": 100.0 + len(calls), "bf16_gflops": 700.0,
                "models": {"m": {"score_us_per_pair": score, "train_us_per_pair": 2 * score, "score_x_floor": 1.0,
                                 "train_x_floor": 2.0}}}

    monkeypatch.setattr(bench, "floor", fake_floor)
    ref, now = bench.alternating_floors(Path("ref"), 1, 3, tmp_path)
    assert calls == [Path("ref"), bench.REPO] * 3
    assert ref["models"]["m"]["score_us_per_pair"] == 90.0  # median of 90, 120, 60
    assert now["models"]["m"]["score_us_per_pair"] == 20.0  # median of 30, 10, 20
    assert now["models"]["m"]["runs"]["train_us_per_pair"] == [60.0, 20.0, 40.0]
    assert (ref["fp32_gflops"], now["fp32_gflops"], ref["repeats"]) == (103.0, 104.0, 3)
    assert bench.speedups(ref, now)["m"]["score"] == 4.5


def test_repeated_evaluations_alternate_the_trees_and_report_medians(monkeypatch, tmp_path):
    """``--eval`` with ``--repeats``: the trees' ``itm eval`` runs alternate; seconds are medians, the
    speed-up their ratio, and every distinct rsum is kept (a tree whose runs disagree shows two)."""
    bench = load_script("speedup", "benchmarks")
    calls = []

    def fake_eval(tree, eval_args, threads, out):
        calls.append(tree)
        seconds = [600.0, 200.0, 900.0, 300.0, 700.0, 250.0][len(calls) - 1]
        return {"seconds": seconds, "eval_seconds": seconds - 10, "rsum": 299.0 if len(calls) != 5 else 298.9}

    monkeypatch.setattr(bench, "timed_eval", fake_eval)
    out = bench.alternating_evals(Path("ref"), ["--data", "d"], 2, 3, tmp_path)
    assert calls == [Path("ref"), bench.REPO] * 3
    assert (out["reference"]["seconds"], out["current"]["seconds"], out["speedup"]) == (700.0, 250.0, 2.8)
    assert out["current"]["eval_seconds"] == 240.0
    assert out["reference"]["rsum"] == [298.9, 299.0] and out["current"]["rsum"] == [299.0]
    assert len(out["reference"]["runs"]) == 3


def test_pointing_seeds_pool_each_photos_cases_over_the_seeds(tmp_path):
    """The pooled hit - centre is the seeds' mean; a photo keeps all its seeds' cases in one draw;
    runs over different cases are refused."""
    import dataclasses as dc

    from itm.evaluation.pointing import PointingCase, cases_record

    seeds = load_script("pointing_seeds")
    base = [PointingCase(f"p{i}.jpg", 0, 0, "dog", "dog", 0, False, 0.3, False, concept_map=i % 2 == 0)
            for i in range(8)]
    runs = [[dc.replace(c, hit=n < hits) for n, c in enumerate(base)] for hits in (2, 4, 6)]  # 25 / 50 / 75 %
    paths = []
    for k, run in enumerate(runs):
        paths.append(tmp_path / f"run{k}.json")
        paths[-1].write_text(json.dumps({"cases": cases_record(run)}))
    out = seeds.main([str(p) for p in paths])
    assert out["overall"]["per_seed"] == pytest.approx([25.0, 50.0, 75.0])
    assert out["overall"]["hit_minus_centre"] == pytest.approx(50.0) and out["overall"]["photos"] == 8
    low, high = out["overall"]["interval"]
    assert low < 50.0 < high
    assert out["without"]["cases_per_seed"] == 4
    paths.append(tmp_path / "other.json")
    paths[-1].write_text(json.dumps({"cases": cases_record(base[:-1])}))
    with pytest.raises(SystemExit, match="different cases"):
        seeds.main([str(p) for p in paths])


def test_train_weights_are_reproducible_so_two_trees_can_be_compared_bitwise():
    """``speedup.py --same-weights`` compares two trees' weights bitwise: one tree twice must agree, and a
    step more must not."""
    bench = load_script("train_weights", "benchmarks")
    first, second = bench.trained_weights("dual_cpu", 2), bench.trained_weights("dual_cpu", 2)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    more = bench.trained_weights("dual_cpu", 3)  # one step more: other weights
    assert any(not torch.equal(first[k], more[k]) for k in first if first[k].is_floating_point())


def test_a_subset_dataset_holds_the_first_images_of_its_split(tmp_path):
    from itm.data.load import load_dataset

    bench = load_script("subset_data", "benchmarks")
    mini = Path(__file__).resolve().parent.parent / "src" / "itm" / "assets" / "flickr8k_mini"
    full = load_dataset(str(mini), "test").split("test").images
    assert bench.write_subset(mini, 2, tmp_path / "sub") == 2
    subset = load_dataset(str(tmp_path / "sub"), "test").split("test").images
    assert [image.tokens for image in subset] == [image.tokens for image in full[:2]]
    assert all(Path(image.path).read_bytes() == Path(ref.path).read_bytes() for image, ref in zip(subset, full[:2], strict=True))


def test_the_fused_step_benchmark_refuses_a_step_that_computes_other_states():
    from itm.models.bssan import lstm_step

    bench = load_script("fused_step", "benchmarks")
    with torch.inference_mode():
        figures = bench.compare(6, 3, 2, lstm_step)  # the out-of-place step, uncompiled: the same states
        assert figures["max_difference"] < 1e-6 and figures["eager_ms"] > 0

        def wrong(gates, h, c, w_hh_t):
            h, c = lstm_step(gates, h, c, w_hh_t)
            return h + 1e-3, c

        with pytest.raises(AssertionError, match="other states"):
            bench.compare(6, 3, 2, wrong)
