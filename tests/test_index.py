"""The photo index as rclip users expect it: incremental, rename- and duplicate-aware, bad files
skipped, one model per index, never half-written; and the two-stage search over it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import index_checkpoint as checkpoint
from helpers import kill_switch, photo, photo_folder
from PIL import Image

from itm.cli import main
from itm.errors import ItmError
from itm.retrieval.index import IndexStore, update_index
from itm.retrieval.search import Searcher, SearchModels, build_faiss


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return checkpoint(root / "dual.pt", "dual"), checkpoint(root / "bssan.pt", "bssan")


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv("ITM_CACHE", str(tmp_path / "cache"))
    return photo_folder(tmp_path / "photos")


def index_once(folder: Path, out: Path, models) -> object:
    return update_index(IndexStore(out), folder, SearchModels(*models), progress=False)


def test_first_index_counts_photos_and_reports_bad_files(folder, tmp_path, models):
    report = index_once(folder, tmp_path / "idx", models)
    assert report.images == 5 and report.added == 5
    assert sorted(p for p, _ in report.skipped) == ["cut.jpg", "empty.png", "notes.jpg"]
    assert all("\n" not in reason for _, reason in report.skipped)
    again = index_once(folder, tmp_path / "idx", models)
    assert (again.images, again.unchanged, again.added, again.changed) == (5, 5, 0, 0)
    assert len(again.skipped) == 3  # remembered, not decoded again


def test_rename_duplicate_delete_and_change(folder, tmp_path, models, monkeypatch):
    out = tmp_path / "idx"
    index_once(folder, out, models)
    os.rename(folder / "red.jpg", folder / "renamed_red.jpg")
    shutil.copy(folder / "green.jpg", folder / "nested" / "green_copy.jpg")
    (folder / "blue.jpg").unlink()
    photo(folder / "yellow.webp", "teal")  # same path, new content
    import itm.features.extract as extract

    calls = []
    real = extract.extract_features

    def counting(dataset, *args, **kwargs):
        calls.append(sorted(im.filename for im in dataset.images))
        return real(dataset, *args, **kwargs)

    monkeypatch.setattr(extract, "extract_features", counting)
    report = index_once(folder, out, models)
    assert calls == [["yellow.webp"]]  # the rename and the duplicate cost no extraction
    assert (report.reused, report.deleted, report.changed, report.images) == (2, 2, 1, 4)
    store = IndexStore(out)
    files = store.files()
    assert "renamed_red.jpg" in files and "red.jpg" not in files and "blue.jpg" not in files
    assert files["nested/green_copy.jpg"][2] == files["green.jpg"][2]  # one photo, two paths
    assert len(store.images()) == 4 and store.vectors().shape[0] == 4


def test_an_index_refuses_another_model(folder, tmp_path, models):
    index_once(folder, tmp_path / "idx", models)
    other = checkpoint(tmp_path / "other.pt", "dual", seed=1)
    with pytest.raises(ItmError, match="built with other models.*re-index") as info:
        index_once(folder, tmp_path / "idx", (other, models[1]))
    assert "\n" not in str(info.value)


def test_a_failed_commit_leaves_the_previous_index(folder, tmp_path, models, monkeypatch):
    out = tmp_path / "idx"
    index_once(folder, out, models)
    photo(folder / "new.jpg", "teal")

    class Killed(BaseException):
        pass

    real = IndexStore.write_rows

    def dies_half_way(self, files, images, meta):
        self.db.execute("DELETE FROM files")  # some of the new state is written, then the process dies
        raise Killed

    monkeypatch.setattr(IndexStore, "write_rows", dies_half_way)
    with pytest.raises(Killed):
        index_once(folder, out, models)
    monkeypatch.setattr(IndexStore, "write_rows", real)
    fresh = IndexStore(out)
    assert len(fresh.images()) == 5 and fresh.vectors().shape[0] == 5 and len(fresh.files()) == 8  # old, whole
    assert len(list(out.glob("vectors-*.npy"))) == 2  # the new vectors file, orphaned
    assert index_once(folder, out, models).images == 6
    assert len(list(out.glob("vectors-*.npy"))) == 1  # the orphan is gone


# where the kill lands: after extraction, before anything is written; inside the transaction, its rows
# written but not committed (an orphan vectors file already on disk)
KILL_POINTS = {"after-extraction": "itm.retrieval.search_models:SearchModels.image_vectors",
               "mid-transaction": "itm.retrieval.index:IndexStore.write_rows"}


@pytest.mark.slow
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_kill_9_during_indexing_loses_nothing(tmp_path, models, point):
    photos = tmp_path / "many"
    rng = np.random.default_rng(0)
    for n in range(60):
        path = photos / f"{n:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(path)
    env = {**os.environ, "ITM_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "itm.cli", "index", "--images", str(photos), "--out", str(tmp_path / "idx"),
               "--shortlist", str(models[0]), "--checkpoint", str(models[1]), "--no-progress"]
    killed = subprocess.run(command, env=kill_switch(tmp_path / "kill", KILL_POINTS[point], env=env),
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert len(IndexStore(tmp_path / "idx").images()) == 0  # the killed update left no half state
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    store = IndexStore(tmp_path / "idx")
    assert len(store.images()) == 60 and store.vectors().shape == (60, 8)
    assert len(list((tmp_path / "idx").glob("vectors-*.npy"))) == 1  # an orphan of the kill is removed


def test_search_reranks_the_shortlist_exactly(folder, tmp_path, models, capsys):
    out = tmp_path / "idx"
    index_once(folder, out, models)
    searcher = Searcher(out, normalise="none")  # raw scores: the hub correction has its own test
    hits = searcher.search("a red square", k=5, rerank=50)
    assert len(hits) == 5 and [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    # the re-ranked scores are the matcher's own all-pairs scores of those photos
    from itm.evaluation.engine import score_all_pairs

    sha1s = [searcher.store.files()[h.path][2] for h in hits]
    features = searcher.feature_rows(sha1s)
    ckpt = searcher.models.reranker
    exact = score_all_pairs(ckpt.model, features, searcher.models.query_captions("a red square", ckpt))[:, 0]
    np.testing.assert_allclose([h.score for h in hits], exact, rtol=1e-5, atol=1e-5)
    shortlist_only = searcher.search("a red square", k=5, rerank=0)
    assert [h.score for h in shortlist_only] == [h.shortlist_score for h in shortlist_only]
    assert main(["search", "--index", str(out), "--text", "a red square", "-k", "3", "--json"]) == 0
    assert '"rank": 3' in capsys.readouterr().out
    assert main(["search", "--index", str(out), "--text", "   "]) == 2
    assert "empty text" in capsys.readouterr().err


def test_an_ensemble_of_rerankers_averages_their_z_scored_scores(folder, tmp_path, models, capsys):
    """``--checkpoint A B C``: each candidate's score is the mean of the members' exact scores, each
    z-scored over the candidates; the index records both and reopens with them."""
    from itm.evaluation.engine import score_all_pairs

    caan = checkpoint(tmp_path / "caan.pt", "caan", seed=3)
    mlasm = checkpoint(tmp_path / "mlasm.pt", "mlasm", seed=4)  # reads the whole-image vector too
    captions = tmp_path / "captions.txt"
    captions.write_text("a red square\na green photo\na blue dog\n")
    out = tmp_path / "idx"
    assert main(["index", "--images", str(folder), "--out", str(out), "--shortlist", str(models[0]),
                 "--checkpoint", str(models[1]), str(caan), str(mlasm), "--captions", str(captions), "--no-progress"]) == 0
    capsys.readouterr()
    searcher = Searcher(out, normalise="none")
    assert [c.config.model.name for c in searcher.models.rerankers] == ["bssan", "caan", "mlasm"]
    hits = searcher.search("a red square", k=5, rerank=50)
    sha1s = [searcher.store.files()[h.path][2] for h in hits]
    features = searcher.feature_rows(sha1s)
    exact = [score_all_pairs(c.model, features, searcher.models.query_captions("a red square", c))[:, 0]
             for c in searcher.models.rerankers]
    zscored = [(e - e.mean()) / e.std() for e in exact]
    np.testing.assert_allclose([h.score for h in hits], sum(zscored) / 3, rtol=1e-4, atol=1e-4)
    assert not np.allclose(zscored[0], zscored[1], atol=1e-3)  # two different members: the mean is not either
    by_image = searcher.search_image((folder / "red.jpg").read_bytes(), "red.jpg", k=3)
    assert len(by_image) == 3 and abs(sum(h.score for h in by_image)) < 1e-4  # z-scored over all 3 captions
    fewer = Searcher(out, SearchModels(models[0], models[1]))  # the re-rankers may change: the banks are stale
    assert [c.config.model.name for c in fewer.models.rerankers] == ["bssan"]
    single = tmp_path / "single"
    index_once(folder, single, models)
    assert isinstance(IndexStore(single).meta("checkpoints")["rerank"], str)  # one re-ranker: recorded as before


def test_flat_shortlist_is_exact_and_hnsw_finds_most_neighbours():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(3000, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[:50] + 0.1 * rng.normal(size=(50, 16)).astype(np.float32)
    truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    _, flat = build_faiss(vectors, approximate_above=10_000).search(queries, 10)
    np.testing.assert_array_equal(np.sort(flat, axis=1), np.sort(truth, axis=1))
    _, approx = build_faiss(vectors, approximate_above=1000).search(queries, 10)
    recall = np.mean([len(set(a) & set(t)) / 10 for a, t in zip(approx, truth, strict=True)])
    assert recall > 0.9


def test_captions_file_errors_name_the_line(tmp_path):
    from itm.errors import DataError
    from itm.retrieval.index import read_captions_file

    path = tmp_path / "captions.txt"
    path.write_bytes(b"a dog\n\n  a cat  \n")
    assert read_captions_file(path) == ["a dog", "a cat"]
    path.write_bytes(b"a dog\n\xff\xfe broken\n")
    with pytest.raises(DataError, match="captions.txt, line 2: not UTF-8"):
        read_captions_file(path)
    path.write_bytes(b"\n  \n")
    with pytest.raises(DataError, match="no captions"):
        read_captions_file(path)


def test_cli_index_and_search_by_image(folder, tmp_path, models, capsys):
    (tmp_path / "captions.txt").write_text("a red square\na green photo\n")
    assert main(["index", "--images", str(folder), "--out", str(tmp_path / "idx"), "--shortlist", str(models[0]),
                 "--checkpoint", str(models[1]), "--captions", str(tmp_path / "captions.txt"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "skipped cut.jpg" in out and "5 photos indexed" in out and "2 captions indexed" in out
    assert main(["search", "--index", str(tmp_path / "idx"), "--image", str(folder / "red.jpg"), "-k", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and {line.split(maxsplit=2)[2] for line in lines} == {"a red square", "a green photo"}


def test_an_approximate_index_is_built_once_and_kept_with_its_vectors(tmp_path, monkeypatch):
    import itm.retrieval.index as index_module
    from itm.retrieval.index import IndexStore, update_index
    from itm.retrieval.search import Searcher, SearchModels

    monkeypatch.setenv("ITM_CACHE", str(tmp_path / "cache"))
    models = SearchModels(checkpoint(tmp_path / "dual.pt", "dual"))
    store = IndexStore(tmp_path / "idx")
    update_index(store, photo_folder(tmp_path / "photos"), models, progress=False)
    first = Searcher(tmp_path / "idx", models, approximate_above=2)  # 5 photos: HNSW
    saved = list((tmp_path / "idx").glob("vectors-*.npy.d*.faiss"))
    assert len(saved) == 1
    monkeypatch.setattr(index_module, "build_faiss", lambda *a: (_ for _ in ()).throw(AssertionError("rebuilt")))
    second = Searcher(tmp_path / "idx", models, approximate_above=2)  # read back, not rebuilt
    assert [h.image_id for h in second.search("a red square", 5)] == [h.image_id for h in first.search("a red square", 5)]
    monkeypatch.undo()
    monkeypatch.setenv("ITM_CACHE", str(tmp_path / "cache"))
    photo(tmp_path / "photos" / "teal.png", "teal")
    update_index(store, tmp_path / "photos", models, progress=False)  # a new vectors file: the old graph goes
    assert not saved[0].exists()
    Searcher(tmp_path / "idx", models, approximate_above=2)
    assert len(list((tmp_path / "idx").glob("vectors-*.npy.d*.faiss"))) == 1


def test_an_index_opens_with_its_model_files_re_saved_with_their_earlier_sha1(folder, tmp_path, models):
    """A model file re-saved with its weights untouched (the shipped files got their load-time fields
    so) names the sha1 it had: indexes built with it still open; any other file is still refused."""
    from itm.checkpoint import read_payload, save_atomic
    from itm.features.cache import content_key

    dual, bssan = shutil.copy(models[0], tmp_path / "dual.pt"), shutil.copy(models[1], tmp_path / "bssan.pt")
    out = tmp_path / "idx"
    index_once(folder, out, (dual, bssan))
    before = [h.image_id for h in Searcher(out, SearchModels(dual, bssan)).search("a red square", 3)]
    payload = read_payload(bssan)
    payload["config"]["eval"]["explain_image_size"] = 96
    save_atomic(payload, bssan)  # new bytes, no record of the old ones: another re-ranker, its banks stale
    assert "scored by other re-rankers" in Searcher(out, SearchModels(dual, bssan)).notes[0]
    payload["earlier_sha1s"] = [content_key(Path(models[1]).read_bytes())]
    save_atomic(payload, bssan)
    same = Searcher(out, SearchModels(dual, bssan))
    assert same.notes == [] and [h.image_id for h in same.search("a red square", 3)] == before
    assert index_once(folder, out, (dual, bssan)).unchanged == 5  # and updates as before
    resaved_dual = read_payload(dual)
    resaved_dual["config"]["eval"]["explain_image_size"] = 96
    save_atomic(resaved_dual, dual)  # the shortlist's vectors fill the index: another shortlist is refused
    with pytest.raises(ItmError, match="other models"):
        Searcher(out, SearchModels(dual, bssan))


def test_another_re_ranker_opens_the_index_uncorrected_until_an_update_scores_its_banks(folder, tmp_path, models,
                                                                                       monkeypatch):
    """A newer matcher (the shipped re-ranker replaced, say) reads the features the index already
    holds: the index opens, says its banks are stale and searches uncorrected; the next update scores
    the banks from the feature cache, extracting nothing, exactly as a fresh index does."""
    import itm.features.extract as extract

    other = checkpoint(tmp_path / "caan.pt", "caan")
    out = tmp_path / "idx"
    index_once(folder, out, models)
    stale = Searcher(out, SearchModels(models[0], other))
    assert len(stale.notes) == 1 and "scored by other re-rankers" in stale.notes[0] and "\n" not in stale.notes[0]
    raw = Searcher(out, SearchModels(models[0], other), normalise="none")
    assert [h.score for h in stale.search("a red square", k=5)] == [h.score for h in raw.search("a red square", k=5)]
    calls = []
    monkeypatch.setattr(extract, "extract_features", lambda *a, **k: calls.append(a))
    assert index_once(folder, out, (models[0], other)).unchanged == 5 and calls == []
    monkeypatch.undo()
    fresh = tmp_path / "fresh"
    index_once(folder, fresh, (models[0], other))
    updated = Searcher(out, SearchModels(models[0], other))
    assert updated.notes == []
    (rescored,), (fresh_bank,) = (IndexStore(f).banks(updated.models.bank_identity()) for f in (out, fresh))
    np.testing.assert_allclose(rescored, fresh_bank, atol=2e-3)  # same rows: both indexes list the photos alike
    assert [h.image_id for h in updated.search("a red square", k=5)] == [
        h.image_id for h in Searcher(fresh, SearchModels(models[0], other)).search("a red square", k=5)]


def test_search_corrects_hub_photos_by_the_bank_scores_the_index_holds(folder, tmp_path, models):
    """Each photo is scored against its own bank (its nearest pool captions by the shortlist) at index
    time; search normalises the re-ranker's scores by those statistics (docs/search.md), exactly as the
    library's ``normalise`` does, and --normalise none gives the raw scores."""
    from itm.data.encode import encode_captions
    from itm.evaluation.engine import score_all_pairs
    from itm.evaluation.hubness import SEARCH_DEFAULT, SEARCH_METHODS, normalise, photo_stats
    from itm.pipeline import word_vectors
    from itm.retrieval.search_models import BANK_NEIGHBOURS

    out = tmp_path / "idx"
    index_once(folder, out, models)
    store = IndexStore(out)
    corrected, raw = Searcher(out), Searcher(out, normalise="none")
    assert corrected.notes == [] and corrected.normalisation == SEARCH_METHODS[SEARCH_DEFAULT] != SEARCH_METHODS["none"]
    ckpt = corrected.models.reranker
    by_row = sorted(corrected.images, key=lambda sha1: corrected.images[sha1][1])  # every photo, in index rows
    features = corrected.feature_rows(by_row)
    lists = corrected.models.own_banks(corrected.vectors, by_row)  # (5, m) pool indices
    tokens = corrected.models.pool()[0]
    used = sorted(set(lists.reshape(-1).tolist()))
    part = [tokens[c] for c in used]
    all_pairs = score_all_pairs(ckpt.model, features, encode_captions(part, ckpt.vocab, ckpt.config.data.max_words,
                                                                      word_vectors(part, ckpt.config, False)))
    bank = np.take_along_axis(all_pairs, np.searchsorted(used, lists), 1)  # each photo's own columns
    (stored,) = store.banks(corrected.models.bank_identity())
    assert stored.shape == (5, BANK_NEIGHBOURS) and stored.dtype == np.float16
    np.testing.assert_allclose(stored, bank, rtol=1e-3, atol=2e-3)  # float16 on disk
    query = corrected.models.query_captions("a red square", ckpt)
    exact = score_all_pairs(ckpt.model, features, query)  # (5, 1)
    expected = normalise(exact, photo_stats(stored, corrected.normalisation), corrected.normalisation)[:, 0]
    hits = corrected.search("a red square", k=5)
    np.testing.assert_allclose([h.score for h in hits], [expected[corrected.images[corrected.sha1_of_id[h.image_id]][1]]
                                                         for h in hits], rtol=1e-4, atol=1e-4)
    assert [h.score for h in raw.search("a red square", k=5)] != [h.score for h in hits]
    # the shortlist's own correction: each photo's inner product less its offset from the bank's vectors
    from itm.data.caption_bank import caption_bank
    from itm.evaluation.hubness import SHORTLIST_DEFAULT, rank_offsets

    bank_vectors = corrected.models.caption_vectors([" ".join(t) for t in caption_bank(SHORTLIST_DEFAULT.bank_size)])
    offsets = rank_offsets(photo_stats(corrected.vectors @ bank_vectors.T, SHORTLIST_DEFAULT), SHORTLIST_DEFAULT)
    shortlist = corrected.models.shortlist.model
    query_vector = shortlist.encode_captions(corrected.models.query_captions("a red square", corrected.models.shortlist))
    expected_short = corrected.vectors @ query_vector.detach().numpy()[0] - offsets  # (5,) by index row
    short_hits = corrected.search("a red square", k=5, rerank=0)
    np.testing.assert_allclose([h.shortlist_score for h in short_hits],
                               [expected_short[corrected.images[corrected.sha1_of_id[h.image_id]][1]] for h in short_hits],
                               rtol=1e-4, atol=1e-5)
    assert raw.shortlist_offsets is None


def test_a_photos_own_bank_is_its_nearest_pool_captions_never_its_own(models):
    """``own_banks`` against brute force over the whole pool; a photo whose sha1 is a pool caption's
    photo (a Flickr8k train photo in a library) never gets its own captions in its bank."""
    from itm.retrieval.search_models import BANK_NEIGHBOURS

    search = SearchModels(*models)
    _, photos, pool_vectors = search.pool()
    rng = np.random.default_rng(0)
    vectors = pool_vectors[[3, 500, 20000]] + 0.01 * rng.standard_normal((3, pool_vectors.shape[1])).astype(np.float32)
    sha1s = ["f" * 40, photos[500] + "0" * 24, "e" * 40]  # the second is pool caption 500's photo
    lists = search.own_banks(vectors, sha1s)
    assert lists.shape == (3, BANK_NEIGHBOURS)
    sims = vectors @ pool_vectors.T
    own = np.flatnonzero(photos == photos[500])
    assert len(own) == 5 and not set(own) & set(lists[1].tolist())
    sims[1, own] = -np.inf
    for i in range(3):  # the m best similarities, best first (a tied caption may stand in for another)
        chosen = sims[i, lists[i]]
        assert len(set(lists[i].tolist())) == BANK_NEIGHBOURS and (np.diff(chosen) <= 0).all()
        np.testing.assert_array_equal(chosen, -np.sort(-sims[i])[:BANK_NEIGHBOURS])


def test_search_refuses_a_fixed_bank_correction_in_one_line(folder, tmp_path, models):
    out = tmp_path / "idx"
    index_once(folder, out, models)
    for method in ("is", "dis", "qb"):
        with pytest.raises(ItmError, match="csls") as caught:
            Searcher(out, normalise=method)
        assert "\n" not in str(caught.value)


def test_an_index_built_before_bank_scores_searches_raw_says_so_and_gets_them_on_update(folder, tmp_path, models):
    out = tmp_path / "idx"
    index_once(folder, out, models)
    store = IndexStore(out)
    with store.db:  # as an index written before bank scores: no bank entry in its meta
        store.db.execute("DELETE FROM meta WHERE key IN ('bank', 'bank_files')")
    old = Searcher(out)
    assert old.bank_stats is None and "itm index" in old.notes[0] and "\n" not in old.notes[0]
    before = [(h.image_id, h.score) for h in Searcher(out, normalise="none").search("a red square", k=5)]
    assert [(h.image_id, h.score) for h in old.search("a red square", k=5)] == before  # raw, not refused
    report = index_once(folder, out, models)  # nothing new to extract: only the bank is scored
    assert (report.added, report.unchanged) == (0, 5)
    updated = Searcher(out)
    assert updated.notes == [] and updated.bank_stats is not None


def test_index_threads_are_set_and_a_bad_count_is_one_line(folder, tmp_path, models, capsys):
    import torch

    from itm.cli import main

    saved = torch.get_num_threads()
    base = ["index", "--images", str(folder), "--out", str(tmp_path / "idx"), "--shortlist", str(models[0]),
            "--checkpoint", str(models[1]), "--no-progress"]
    try:
        assert main([*base, "--threads", "0"]) == 2
        assert "--threads: must be at least 1, got 0" in capsys.readouterr().err
        assert not (tmp_path / "idx").exists()  # refused before any work
        assert main([*base, "--threads", "1"]) == 0 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(saved)
