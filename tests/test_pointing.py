"""The pointing game on cases whose answer is known: a peak inside / outside a box, boxes given in
the annotated photo's pixels and scaled to the shown photo, the two baselines, words with no box."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from itm.errors import DataError
from itm.evaluation.pointing import (
    ImageBoxes,
    PointingCase,
    cell_centres,
    fuse_grids,
    peakedness,
    photo_bootstrap,
    photo_halves,
    point,
    point_at,
    read_coco_boxes,
    read_synonyms,
    summarise,
    word_table,
)

GRID = (3, 4)  # 3 rows, 4 columns: cell centres at x = 12.5, 37.5, 62.5, 87.5 and y = 10, 30, 50 in 100 x 60


def peak_at(cell: int, cells: int = 12) -> np.ndarray:
    row = np.full(cells, 0.01)
    row[cell] = 0.9
    return row


def test_cell_centres_are_row_major_over_the_stretched_photo():
    centres = cell_centres(GRID, 100, 60)
    assert centres.shape == (12, 2)
    np.testing.assert_allclose(centres[0], [12.5, 10])
    np.testing.assert_allclose(centres[5], [37.5, 30])  # row 1, column 1
    np.testing.assert_allclose(centres[11], [87.5, 50])


def test_peak_inside_the_box_is_a_hit_and_outside_a_miss():
    photo = ImageBoxes(100, 60, {"dog": [(30, 20, 45, 40)]})  # holds only the centre of cell 5
    assert point(peak_at(5), GRID, (100, 60), photo, "dog")[:2] == (5, True)
    assert point(peak_at(6), GRID, (100, 60), photo, "dog")[:2] == (6, False)


def test_boxes_are_scaled_from_the_annotated_size_to_the_shown_photo():
    # annotated at 400 x 240 (4x), shown at 100 x 60: the same box in annotated pixels
    photo = ImageBoxes(400, 240, {"dog": [(120, 80, 180, 160)]})
    assert point(peak_at(5), GRID, (100, 60), photo, "dog")[1]
    # read without scaling, the box would hold no cell centre of the shown photo at all
    unscaled = ImageBoxes(100, 60, {"dog": [(120, 80, 180, 160)]})
    assert not point(peak_at(5), GRID, (100, 60), unscaled, "dog")[1]


def test_baselines_random_is_the_share_of_cells_inside_centre_is_the_middle_cell():
    photo = ImageBoxes(100, 60, {"cat": [(0, 0, 50, 60)]})  # the left two columns: 6 of 12 cells
    _, _, random_hit, centre_hit = point(peak_at(0), GRID, (100, 60), photo, "cat")
    assert random_hit == pytest.approx(0.5)
    assert not centre_hit  # the centre cell is (1, 2): x = 62.5, outside
    left = ImageBoxes(100, 60, {"cat": [(50, 20, 75, 40)]})
    assert point(peak_at(0), GRID, (100, 60), left, "cat")[3]


def test_word_table_maps_plurals_synonyms_and_user_words(tmp_path):
    table = word_table(["person", "dog", "dining table", "bus"], {"pooch": "dog"})
    assert table["dogs"] == "dog" and table["buses"] == "bus" and table["man"] == "person"
    assert table["table"] == "dining table" and table["pooch"] == "dog"
    assert "bike" not in table  # bicycle is no category here
    path = tmp_path / "syn.json"
    path.write_text(json.dumps({"Pup": "dog"}))
    assert read_synonyms(path) == {"pup": "dog"}
    path.write_text("[1, 2]")
    with pytest.raises(DataError, match="syn.json: expected an object"):
        read_synonyms(path)


def test_coco_boxes_are_read_as_corner_boxes_without_crowds(tmp_path):
    raw = {"images": [{"id": 1, "file_name": "a.jpg", "width": 200, "height": 100}],
           "categories": [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}],
           "annotations": [{"image_id": 1, "category_id": 18, "bbox": [10, 20, 30, 40], "iscrowd": 0},
                           {"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "iscrowd": 1}]}
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps(raw))
    boxes, categories = read_coco_boxes(path)
    assert categories == ["dog", "person"]
    assert boxes["a.jpg"].boxes == {"dog": [(10.0, 20.0, 40.0, 60.0)]}
    path.write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match="boxes.json: not a COCO instances file") as info:
        read_coco_boxes(path)
    assert "\n" not in str(info.value)


def case(category: str, hit: bool, random_hit: float = 0.25, centre: bool = False, image: str = "a.jpg") -> PointingCase:
    return PointingCase(image, 0, 0, category, category, 0, hit, random_hit, centre)


def test_summary_rates_and_categories_at_zero():
    cases = [case("dog", True), case("dog", False, image="b.jpg"),
             *[case("sink", False, 0.1, True, image=f"{i % 2}.jpg") for i in range(5)]]
    result = summarise(cases, min_cases=5)
    assert result["overall"]["cases"] == 7 and result["overall"]["photos"] == 4
    assert result["per_category"]["dog"]["photos"] == 2
    assert result["photos_at_zero"] == 2  # sink's five cases come from two photos
    assert result["overall"]["hit"] == pytest.approx(100 / 7)
    assert result["per_category"]["dog"]["hit"] == 50.0
    assert result["per_category"]["sink"]["centre_cell"] == 100.0
    assert result["per_category"]["sink"]["random_cell"] == pytest.approx(10.0)
    assert result["categories_at_zero"] == ["sink"]  # dog has fewer than 5 cases
    assert result["per_category"]["sink"]["reachable"] == 100.0 and result["unreachable_at_zero"] == []
    unreachable = summarise([case("kite", False, 0.0) for _ in range(5)])
    assert unreachable["unreachable_at_zero"] == ["kite"] and unreachable["per_category"]["kite"]["reachable"] == 0
    assert result["reachable_at_zero"] == ["sink"] and unreachable["reachable_at_zero"] == []
    # six cases, four of them reachable: at 0%, but short of five reachable cases
    partly = summarise([case("vase", False, 0.2 if k < 4 else 0.0, image=f"{k}.jpg") for k in range(6)])
    assert partly["categories_at_zero"] == ["vase"] and partly["per_category"]["vase"]["reachable_cases"] == 4
    assert partly["reachable_at_zero"] == [] and partly["unreachable_at_zero"] == []
    with pytest.raises(DataError, match="no caption word names a category"):
        summarise([])


def test_miss_pictures_for_the_worst_or_the_named_categories(tmp_path):
    from types import SimpleNamespace

    from PIL import Image

    from itm.viz.pointing import draw_worst_misses

    Image.new("RGB", (100, 60), "white").save(tmp_path / "a.jpg")
    split = SimpleNamespace(dataset=SimpleNamespace(images=[SimpleNamespace(filename="a.jpg", path=tmp_path / "a.jpg")]),
                            features=SimpleNamespace(grid_shape=GRID))
    cases = [*[case("sink", False) for _ in range(5)], *[case("dog", False) for _ in range(5)],
             *[case("cat", True) for _ in range(5)]]
    result = summarise(cases)
    worst = draw_worst_misses(cases, result, split, tmp_path / "worst", categories=1)
    assert [p.name for p in worst] == ["misses_dog.png"]  # dog and sink tie at 0%: by name
    named = draw_worst_misses(cases, result, split, tmp_path / "named", names=["sink", "cat"])
    assert [p.name for p in named] == ["misses_sink.png"] and named[0].stat().st_size > 0  # cat has no miss
    with pytest.raises(DataError, match="--categories: no cases for zebra"):
        draw_worst_misses(cases, result, split, tmp_path / "none", names=["zebra"])
    unreachable = draw_worst_misses([case("kite", False, 0.0)], summarise([case("kite", False, 0.0)], min_cases=1),
                                    split, tmp_path / "kite", categories=1)
    assert [p.name for p in unreachable] == ["misses_kite.png"]


def test_a_miss_no_cell_could_hit_says_so_under_its_panel():
    from itm.viz.pointing import miss_label

    assert miss_label(case("kite", False, 0.0), (13, 13)).endswith("\nno 13 x 13 cell can hit it")
    assert "cell can hit" not in miss_label(case("sink", False, 0.1), (13, 13))


def cases_of(outcomes: dict[str, list[tuple[bool, bool]]]) -> list[PointingCase]:
    """Cases from {photo: [(hit, centre hit), ...]}."""
    return [PointingCase(photo, 0, n, "dog", "dog", 0, hit, 0.3, centre)
            for photo, pairs in outcomes.items() for n, (hit, centre) in enumerate(pairs)]


def test_the_bootstrap_resamples_photos_with_all_their_cases():
    """Every photo alike: every resample gives the same rates, so the intervals collapse on them."""
    same = cases_of({f"p{i}": [(True, False), (False, False)] for i in range(6)})
    boot = photo_bootstrap(same, samples=200)
    assert boot["photos"] == 6 and boot["hit"] == [50.0, 50.0]
    assert boot["hit_minus_centre"] == 50.0 and boot["hit_minus_centre_interval"] == [50.0, 50.0]


def test_one_lucky_photo_gives_a_wide_interval_that_holds_zero():
    """Ten cases of one photo hit, the other nine photos' single cases miss: 10 of 19 hits (52.6%)
    is mostly one photo, and its interval for hit - centre must reach down to zero."""
    lucky = cases_of({"p0": [(True, False)] * 10, **{f"p{i}": [(False, False)] for i in range(1, 10)}})
    boot = photo_bootstrap(lucky)
    low, high = boot["hit_minus_centre_interval"]
    assert boot["hit_minus_centre"] == pytest.approx(100 * 10 / 19) and low == 0.0 and high > 60


def test_halves_split_photos_not_cases_and_summaries_carry_both():
    cases = cases_of({f"p{i}": [(i % 3 == 0, False)] * (i + 1) for i in range(8)})
    halves = photo_halves(cases)
    assert {c.image for c in halves["a"]} == {"p0", "p2", "p4", "p6"} and len(halves["a"]) + len(halves["b"]) == len(cases)
    result = summarise(cases, min_cases=1)
    assert set(result["halves"]) == {"a", "b"} and result["halves"]["a"]["photos"] == 4
    assert result["bootstrap"]["photos"] == 8 and "hit_minus_centre_interval" in result["halves"]["b"]["bootstrap"]


def test_a_spot_is_a_hit_inside_the_box_and_its_cell_is_the_one_holding_it():
    photo = ImageBoxes(100, 60, {"dog": [(30, 20, 45, 40)]})
    assert point_at((40, 30), GRID, (100, 60), photo, "dog") == (5, True, 1 / 12, False)
    assert point_at((99.9, 59.9), GRID, (100, 60), photo, "dog")[:2] == (11, False)  # the last cell


@pytest.mark.parametrize("method", ["attention", "objects", "gradient", "concept", "attention+concept", "zero-shot"])
def test_pointing_methods_end_to_end(tmp_path, monkeypatch, method):
    """BSSAN declares both maps; the box covers the whole photo, so every word case is a hit."""
    from helpers import boxed_photos, index_checkpoint

    from itm.cli import main

    monkeypatch.setenv("ITM_CACHE", str(tmp_path / "cache"))
    data, boxes = boxed_photos(tmp_path)
    checkpoint = index_checkpoint(tmp_path / "bssan.pt", "bssan")
    assert main(["pointing-game", "--checkpoint", str(checkpoint), "--data", str(data), "--boxes", str(boxes),
                 "--json", str(tmp_path / "out.json"), "--min-cases", "1", "--method", method]) == 0
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["method"] == method and result["overall"]["cases"] == 1 and result["overall"]["hit"] == 100.0
    # the concept methods say which map each point came from; the others have no such split
    sources = set(result["by_map"])
    assert (sources <= {"concept", "zero-shot", "attention"} and sum(g["cases"] for g in result["by_map"].values()) == 1) \
        if method in ("concept", "attention+concept", "zero-shot") else sources == set()
    # with the backbone's classifier at hand, every method marks whether the word has a concept map
    assert sum(g["cases"] for g in result["by_concept_map"].values()) == 1


def test_a_method_the_model_cannot_serve_is_one_line(tmp_path, monkeypatch, capsys):
    from helpers import boxed_photos, index_checkpoint

    from itm.cli import main

    monkeypatch.setenv("ITM_CACHE", str(tmp_path / "cache"))
    data, boxes = boxed_photos(tmp_path)
    checkpoint = index_checkpoint(tmp_path / "w2r.pt", "bssan_w2r")  # no map between objects and words
    for method, message in [("objects", "declares no objects over words or words over objects attention"),
                            ("nearest", "pointing method 'nearest': not one of attention, objects, gradient, concept")]:
        assert main(["pointing-game", "--checkpoint", str(checkpoint), "--data", str(data), "--boxes", str(boxes),
                     "--method", method]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1


def test_fused_grids_are_densities_read_at_the_finest_cells():
    """A 2 x 2 map all on its top-left cell and a 4 x 4 map all on cell (1, 1): the fused 4 x 4 map
    holds the coarse density (4) over the top-left quarter and the fine one (16) added at (1, 1)."""
    coarse, fine = np.array([1.0, 0, 0, 0]), np.eye(16)[5]
    fused, grid = fuse_grids([coarse, fine], [(2, 2), (4, 4)])
    assert grid == (4, 4)
    expected = np.zeros((4, 4))
    expected[:2, :2] = 4 / 2
    expected[1, 1] += 16 / 2
    np.testing.assert_allclose(fused.reshape(4, 4), expected)
    assert int(np.argmax(fused)) == 5 and fused.sum() == pytest.approx(16)  # a density over 16 cells


def test_pointing_fuses_the_maps_of_several_sizes_end_to_end(tmp_path, monkeypatch):
    from helpers import boxed_photos, index_checkpoint

    from itm.cli import main

    monkeypatch.setenv("ITM_CACHE", str(tmp_path / "cache"))
    data, boxes = boxed_photos(tmp_path)
    checkpoint = index_checkpoint(tmp_path / "bssan.pt", "bssan")  # trained size 64 px: a 2 x 2 grid
    assert main(["pointing-game", "--checkpoint", str(checkpoint), "--data", str(data), "--boxes", str(boxes),
                 "--json", str(tmp_path / "out.json"), "--min-cases", "1", "--fuse-sizes", "128"]) == 0
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["fuse_sizes"] == [64, 128] and result["overall"]["hit"] == 100.0
    assert main(["pointing-game", "--checkpoint", str(checkpoint), "--data", str(data), "--boxes", str(boxes),
                 "--method", "objects", "--fuse-sizes", "128"]) == 2


def test_the_gradient_map_marks_the_cells_a_word_depends_on():
    """A model whose score reads one cell: the Grad-CAM map of any query is nonzero there only."""
    from helpers import make_features

    from itm.data.types import Captions
    from itm.evaluation.grounding import gradient_rows
    from itm.models.base import Matcher, PairScores

    class OneCell(Matcher):
        image_streams = ("regions",)

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, images, captions, return_attention=False):
            return PairScores(self.w * images["regions"][:, 2].sum(-1) ** 2)  # cell 2, squared: gradient x input >= 0

    class Split:
        features = make_features(1)
        dataset = type("D", (), {"images": [type("R", (), {"tokens": [["a", "dog"], ["dog", "runs", "far"]]})()]})()
        captions = Captions(torch.ones(2, 3, dtype=torch.long), torch.tensor([2, 2]))  # the second cut at 2 words
        caption_to_image = np.array([0, 0])

    rows = gradient_rows(OneCell(), Split(), 0, lambda lists: Captions(torch.ones(len(lists), 2, dtype=torch.long),
                                                                      torch.full((len(lists),), 2)))
    assert [r.shape for r in rows] == [(2, 4), (2, 4)]
    for row in rows:
        assert (row[:, 2] > 0).all() and (np.delete(row, 2, axis=1) == 0).all()


def test_peakedness_and_the_cases_in_thirds_by_it():
    assert peakedness(np.array([0.5, 0.25, 0.25, 0.0])) == pytest.approx(2.0)  # max x D for a distribution
    assert np.isnan(peakedness(np.zeros(4)))
    # the sharpest third always hits, the flattest never: the bands say so
    cases = [PointingCase(f"p{k}", 0, 0, "dog", "dog", 0, k >= 4, 0.3, k % 2 == 0, peak=float(k + 1))
             for k in range(6)]
    bands = summarise([*cases, case("dog", True)])["by_peak"]  # a case without a peak is left out
    assert list(bands) == ["low", "middle", "high"]
    assert [b["cases"] for b in bands.values()] == [2, 2, 2]
    assert bands["low"]["peak"] == [1.0, 2.0] and bands["high"]["peak"] == [5.0, 6.0]
    assert [b["hit"] for b in bands.values()] == [0.0, 0.0, 100.0]
    assert [b["centre_cell"] for b in bands.values()] == [50.0, 50.0, 50.0]
    assert summarise([case("dog", True)])["by_peak"] == {}


def test_cases_split_by_whether_the_model_trained_on_their_word():
    cases = [PointingCase("a.jpg", 0, 0, "dog", "dog", 0, True, 0.3, False),
             PointingCase("b.jpg", 0, 0, "puppy", "dog", 0, False, 0.3, True),
             PointingCase("c.jpg", 0, 0, "puppy", "dog", 0, True, 0.3, True)]
    groups = summarise(cases, seen={"dog", "cat"})["by_vocabulary"]
    assert groups["seen"]["cases"] == 1 and groups["seen"]["hit"] == 100.0
    assert groups["unseen"]["cases"] == 2 and groups["unseen"]["hit"] == 50.0
    assert groups["unseen"]["centre_cell"] == 100.0 and groups["unseen"]["bootstrap"]["photos"] == 2
    assert "unseen" not in summarise(cases[:1], seen={"dog"})["by_vocabulary"]  # an empty group is left out
    assert summarise(cases)["by_vocabulary"] == {}  # no training words given: no split


def test_cases_split_by_the_map_their_point_came_from():
    cases = [PointingCase("a.jpg", 0, 0, "bus", "bus", 0, True, 0.3, False, source="concept"),
             PointingCase("b.jpg", 0, 0, "man", "person", 0, False, 0.3, True, source="attention"),
             PointingCase("c.jpg", 0, 0, "bus", "bus", 0, True, 0.3, True, source="concept")]
    groups = summarise(cases)["by_map"]
    assert list(groups) == ["attention", "concept"]
    assert groups["concept"]["cases"] == 2 and groups["concept"]["hit"] == 100.0
    assert groups["attention"]["hit"] == 0.0 and groups["attention"]["centre_cell"] == 100.0
    assert groups["concept"]["bootstrap"]["photos"] == 2
    assert summarise([case("dog", True)])["by_map"] == {}  # the attention method: one kind of map, no split


def test_cases_split_by_whether_their_word_has_a_concept_map():
    cases = [PointingCase("a.jpg", 0, 0, "dog", "dog", 0, True, 0.3, False, concept_map=True),
             PointingCase("b.jpg", 0, 0, "man", "person", 0, False, 0.3, True, concept_map=False),
             PointingCase("c.jpg", 0, 0, "woman", "person", 0, True, 0.3, False, concept_map=False)]
    groups = summarise(cases)["by_concept_map"]
    assert list(groups) == ["with", "without"]
    assert groups["with"]["cases"] == 1 and groups["with"]["hit"] == 100.0
    assert groups["without"]["cases"] == 2 and groups["without"]["hit"] == 50.0
    assert groups["without"]["centre_cell"] == 50.0 and groups["without"]["bootstrap"]["photos"] == 2
    assert summarise([case("dog", True)])["by_concept_map"] == {}  # not looked up: no split


def test_two_runs_compare_pairwise_by_photo_and_their_cases_survive_the_json():
    from itm.evaluation.pointing import cases_from_record, cases_record, paired_difference

    before = [PointingCase(f"p{i}.jpg", 0, 0, "dog", "dog", 0, i % 2 == 0, 0.3, False, concept_map=True)
              for i in range(6)]
    after = [dataclasses.replace(c, hit=True) for c in before]
    result = paired_difference(before, after)
    assert result["difference"] == pytest.approx(50.0) and result["photos"] == 6
    low, high = result["interval"]
    assert 0 < low <= 50.0 <= high <= 100
    assert paired_difference(before, before)["interval"] == [0.0, 0.0]
    assert cases_from_record(json.loads(json.dumps(cases_record(after)))) == after
    with pytest.raises(DataError, match="cases differ"):
        paired_difference(before, after[:-1])


def test_the_attention_figures_are_recorded_in_the_checkpoint_and_nothing_else_changes(tmp_path, monkeypatch, capsys):
    """``--record`` adds the attention's hit - centre (overall and per concept-map group) to the file;
    the weights and the rest of the payload are untouched; other methods are refused in one line."""
    from helpers import boxed_photos, index_checkpoint

    from itm.checkpoint import read_payload
    from itm.cli import main
    from itm.evaluation.pointing import EVIDENCE_KEY
    from itm.features.cache import content_key

    monkeypatch.setenv("ITM_CACHE", str(tmp_path / "cache"))
    data, boxes = boxed_photos(tmp_path)
    checkpoint = index_checkpoint(tmp_path / "bssan.pt", "bssan")
    before, bytes_before = read_payload(checkpoint), checkpoint.read_bytes()
    assert EVIDENCE_KEY not in before
    args = ["pointing-game", "--checkpoint", str(checkpoint), "--data", str(data), "--boxes", str(boxes),
            "--min-cases", "1"]
    assert main([*args, "--method", "concept", "--record"]) == 2
    err = capsys.readouterr().err
    assert "--record keeps evidence about the model's own attention" in err and len(err.strip().splitlines()) == 1
    assert EVIDENCE_KEY not in read_payload(checkpoint)
    assert main([*args, "--json", str(tmp_path / "out.json"), "--record"]) == 0
    after, result = read_payload(checkpoint), json.loads((tmp_path / "out.json").read_text())
    record = after[EVIDENCE_KEY]
    assert record["method"] == "attention" and record["grid"] == result["grid"] and "--record" in record["command"]
    assert record["overall"]["cases"] == result["overall"]["cases"] == 1
    assert record["overall"]["hit_minus_centre"] == pytest.approx(result["bootstrap"]["hit_minus_centre"], abs=0.01)
    (group, summary), = result["by_concept_map"].items()
    assert record[f"{group}_concept_map"]["interval"] == pytest.approx(
        summary["bootstrap"]["hit_minus_centre_interval"], abs=0.01)
    assert set(after) - {EVIDENCE_KEY, "earlier_sha1s"} == set(before) - {"earlier_sha1s"}
    assert after["earlier_sha1s"][-1] == content_key(bytes_before)  # indexes built with the file still open
    assert all(torch.equal(after["model"][k], v) for k, v in before["model"].items())


@pytest.mark.parametrize("group,grid,label", [
    (None, [3, 4], "attention: a guess"),  # no record: as measured for models trained without the term
    ({"hit_minus_centre": 10.4, "interval": [1.2, 19.0]}, [3, 4], "attention: points (+10 vs centre)"),
    ({"hit_minus_centre": 7.1, "interval": [-7.1, 21.1]}, [3, 4], "attention: +7 vs centre, unsure"),
    ({"hit_minus_centre": -2.0, "interval": [-15.0, 11.1]}, [3, 4], "attention: a guess"),
    ({"hit_minus_centre": 10.4, "interval": [1.2, 19.0]}, [9, 9], "attention: a guess"),  # measured on another grid
])
def test_the_sheet_labels_attention_by_the_checkpoints_own_record(group, grid, label):
    from itm.viz.explain import attention_label

    evidence = None if group is None else {"grid": grid, "without_concept_map": group}
    assert attention_label(evidence, (3, 4)) == label
