"""Fuzz the Karpathy JSON reader: any dataset file loads sanely or fails as one DataError line.

Documents are built from the schema with any field replaced by a value of another type, file names
drawn from a few names (so duplicates happen) and odd characters, captions that tokenize to nothing;
the serialised text is then used whole, cut, byte-flipped, re-encoded, or replaced by deep nesting.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from fuzz_support import budget, cut, flip, result_or_user_error
from hypothesis import event, given
from hypothesis import strategies as st

from itm.data.load import load_dataset
from itm.errors import shown
from itm.features.extract import read_image_bytes

JSON_NAME = "dataset_fuzz.json"

junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def maybe(valid: st.SearchStrategy) -> st.SearchStrategy:
    """A valid value 9 times in 10, else junk of any type or the key left out (None)."""
    return st.integers(0, 19).flatmap(lambda k: junk if k == 0 else st.none() if k == 1 else valid)


names = st.sampled_from(["a.jpg", "b.jpg", "a.jpg", "b.jpg", "c d.jpg", "", "sub/e.jpg", "../f.jpg", "g\x00.jpg", "h\n.jpg",
                         "\u00e9t\u00e9.jpg", "x" * 300 + ".jpg"])
raws = st.sampled_from(["A dog runs .", "A dog runs .", "", " . , ! ", "two\nlines", "\u2028", "caf\u00e9 au lait"]) | st.text(max_size=20)
sentences = st.fixed_dictionaries({"raw": maybe(raws)},
                                  optional={"tokens": maybe(st.lists(st.text(max_size=5), max_size=4))})
entries = st.fixed_dictionaries(
    {"filename": maybe(names), "split": maybe(st.sampled_from(["train", "val", "test", "restval", ""])),
     "sentences": maybe(st.lists(maybe(sentences), min_size=1, max_size=3))},
    optional={"filepath": maybe(st.sampled_from(["", "images", "train2014", "/abs", "a\x00b"]))},
)


def _drop_none(value):
    """A None from ``maybe`` means "key absent" inside dicts (null itself is also tried via junk)."""
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


documents = st.builds(_drop_none, st.fixed_dictionaries(
    {"images": maybe(st.lists(maybe(entries), min_size=1, max_size=4))}, optional={"dataset": junk}) | junk)


@st.composite
def dataset_files(draw) -> bytes:
    """The bytes of a dataset_*.json: a document, possibly cut, flipped or in another encoding."""
    text = json.dumps(draw(documents), ensure_ascii=draw(st.booleans()))
    damage = draw(st.sampled_from(["none"] * 6 + ["truncate", "flip", "latin-1", "deep", "long_number", "bom"]))
    data = text.encode("utf-8")
    if damage == "truncate":
        return cut(draw, data)
    if damage == "flip":
        return flip(draw, data)
    if damage == "latin-1":
        return text.encode("latin-1", errors="replace") + b"\xe9"
    if damage == "deep":  # nesting deeper than Python's recursion limit
        depth = draw(st.integers(1000, 50_000))
        return b'{"images": ' + b"[" * depth + b"]" * depth + b"}"
    if damage == "long_number":  # more digits than Python converts to int by default
        return b'{"images": [{"filename": "a.jpg", "split": ' + b"9" * draw(st.integers(4000, 6000)) + b"}]}"
    if damage == "bom":
        return b"\xef\xbb\xbf" + data
    return data


def _check_dataset(dataset, root: Path) -> None:
    """A loaded dataset is usable: captions tokenized, image paths that read or fail cleanly."""
    assert len(dataset) > 0 and len({record.path for record in dataset.images}) == len(dataset)  # no file twice
    for record in dataset.images:
        assert isinstance(record.filename, str) and isinstance(record.split, str)
        assert record.captions and len(record.captions) == len(record.tokens)
        assert all(tokens and all(isinstance(t, str) and t for t in tokens) for tokens in record.tokens)
        result_or_user_error(lambda r=record: read_image_bytes(r), shown(record.filename).strip("'\""))


@budget(3)
@given(data=dataset_files(), split=st.sampled_from([None, None, "train", "nosuchsplit"]),
       image=st.sampled_from([None, "a.jpg", "b.jpg"]))
def test_any_dataset_file_loads_or_fails_in_one_line(data, split, image):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder).resolve()
        (root / JSON_NAME).write_bytes(data)
        if image:  # one image present, so that the folder lookup has something to find
            (root / "images").mkdir()
            (root / "images" / image).write_bytes(b"\xff\xd8 not really a jpeg")
        dataset = result_or_user_error(lambda: load_dataset(root, split), str(root))
        event("loaded" if dataset is not None else "refused")
        if dataset is not None:
            _check_dataset(dataset, root)
