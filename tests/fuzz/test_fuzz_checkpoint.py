"""Fuzz the checkpoint reader: any file given as a checkpoint loads a model or fails as one ItmError
line naming it, and the file itself is never changed.

Files: a real (tiny) checkpoint cut at any offset or with flipped bytes, another program's pickle,
and torch.save payloads with a key missing or of the wrong type, another model's weights or
input sizes, another format version.
"""

from __future__ import annotations

import functools
import io
import pickle
import tempfile
from argparse import Namespace
from collections import OrderedDict
from pathlib import Path

import torch
from fuzz_support import budget, cut, flip, result_or_user_error
from hypothesis import event, given
from hypothesis import strategies as st

from itm.config import load_config
from itm.data.vocab import Vocab
from itm.models.registry import InputDims
from itm.training.checkpoint import load_checkpoint, model_payload, new_model

# a small matcher, as tests/test_training.py builds (the defaults' 1024-wide LSTM is a 17 MB file)
TINY = ["model.w2r_hidden=8", "model.w2r_mlp=[8]", "model.o2w_hidden=8", "model.o2w_mlp=[8]"]
DIMS = InputDims(word_dim=6, region_dim=5, object_dim=5, vocab_size=7)


@functools.cache
def payload(model_name: str = "bssan") -> dict:
    """A real checkpoint payload of a tiny model (weights seeded: the same file every run)."""
    torch.manual_seed(0)
    config = load_config(None, [*TINY, f"model.name={model_name}"])
    vocab = Vocab.from_list(["<pad>", "<unk>", "a", "dog", "runs", "two", "cats"])
    settings = {"backbone": "efficientnet_lite0", "image_size": 224, "num_objects": 10}
    return model_payload(new_model(config, DIMS), config, vocab, DIMS, settings)


def _saved(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


junk = st.none() | st.integers(-2, 2) | st.text(max_size=4) | st.lists(st.integers(), max_size=2) \
    | st.just(torch.zeros(2)) | st.dictionaries(st.sampled_from(["a", "name"]), st.integers(), max_size=1)


@st.composite
def altered_payloads(draw) -> dict:
    """The real payload with one part missing, replaced, or taken from another model or setting."""
    data = dict(payload(draw(st.sampled_from(["bssan", "bssan_w2r"]))))
    part = draw(st.sampled_from(sorted(data)))
    change = draw(st.sampled_from(["drop", "junk", "other_model", "other_dims", "dims_junk", "config_junk",
                                   "weights_junk", "format"]))
    if change == "drop":
        del data[part]
    elif change == "junk":
        data[part] = draw(junk)
    elif change == "other_model":  # the weights of another variant under this config
        data["model"] = payload("bssan_w2r" if data["config"]["model"]["name"] == "bssan" else "bssan")["model"]
    elif change == "other_dims":  # input sizes of another feature setting than the weights were built for
        data["dims"] = {**data["dims"], draw(st.sampled_from(sorted(data["dims"]))): draw(st.integers(1, 12))}
    elif change == "dims_junk":
        data["dims"] = {**data["dims"], draw(st.sampled_from([*sorted(data["dims"]), "extra"])): draw(junk)}
    elif change == "config_junk":
        section = draw(st.sampled_from(["model", "train", "features", "data"]))
        data["config"] = {**data["config"], section: draw(junk)}
    elif change == "weights_junk":
        weights = OrderedDict(data["model"])
        key = draw(st.sampled_from(sorted(weights)))
        weights[key] = draw(st.just(None) | st.just(torch.zeros(3)) | st.just(weights[key].double()) | st.just("w"))
        data["model"] = weights
    else:
        data["format_version"] = draw(st.sampled_from([0, 2, "1", None]))
    return data


@st.composite
def checkpoint_files(draw) -> bytes:
    kind = draw(st.sampled_from(["truncate", "flip", "pickle", "payload", "payload", "whole"]))
    if kind == "pickle":  # another program's pickle (one object allowlisted by weights_only, some not)
        obj = draw(st.sampled_from([{"a": 1}, [1, 2], Namespace(lr=0.1), OrderedDict(x=1), "text", 3.5]))
        return pickle.dumps(obj, protocol=draw(st.integers(0, pickle.HIGHEST_PROTOCOL)))
    if kind == "payload":
        return _saved(draw(altered_payloads()))
    data = _saved(payload())
    if kind == "truncate":
        return cut(draw, data[:-1])
    if kind == "flip":
        return flip(draw, data, most=4)
    return data


@budget(3)
@given(data=checkpoint_files())
def test_any_checkpoint_file_loads_or_fails_in_one_line(data):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "best.pt"
        path.write_bytes(data)
        ckpt = result_or_user_error(lambda: load_checkpoint(path), str(path))
        event("refused" if ckpt is None else "loaded")
        if ckpt is not None:
            assert isinstance(ckpt.feature_settings, dict) and len(ckpt.vocab) == ckpt.dims.vocab_size
            assert not ckpt.model.training
        assert path.read_bytes() == data  # reading never writes
