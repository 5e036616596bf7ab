"""Checkpoints: atomic writes, plain-data payloads (never a pickled argparse object).

A checkpoint holds the model weights, the resolved config as a dict, the vocabulary, the input
dimensions and the feature-extractor settings — everything needed to rebuild the model and to
extract matching features for a new dataset. ``last.pt`` adds the optimiser and loop state.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from itm.config import Config, apply_overrides, parse_override
from itm.data.vocab import Vocab
from itm.devices import as_device
from itm.errors import ConfigError, ItmError
from itm.models.base import InputDims, Matcher, WordEmbedder
from itm.models.registry import build_model
from itm.pipeline import explanation_features, feature_config

FORMAT_VERSION = 1


def save_atomic(payload: dict[str, Any], path: str | Path) -> None:
    """Write to a temporary file in the same folder, flush to disk, then rename over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:  # a failed write (disk full, Ctrl-C) leaves the old file and no temp file
        tmp.unlink(missing_ok=True)
        raise


def new_model(config: Config, dims: InputDims, word_init: torch.Tensor | None = None) -> Matcher:
    """Build the configured matcher with its word embedder (GloVe table or precomputed vectors)."""
    words = WordEmbedder(dims.vocab_size, dims.word_dim, init=word_init, trainable=config.text.trainable,
                         anchor_weight=config.text.anchor_weight,
                         precomputed=config.text.source == "minilm")
    return build_model(config.model, dims, words)


def model_payload(model: Matcher, config: Config, vocab: Vocab, dims: InputDims,
                  feature_settings: dict[str, Any], word_table: dict[str, Any] | None = None) -> dict[str, Any]:
    """``word_table``: which word-vector table the model reads (``itm.data.glove.table_record``), kept
    instead of the table: the open vocabulary looks words up in it again at inference."""
    payload = {
        "format_version": FORMAT_VERSION,
        "model": {k: v.cpu() for k, v in model.state_dict().items()},  # readable without a GPU
        "config": config.to_dict(),
        "vocab": vocab.to_list(),
        "dims": dataclasses.asdict(dims),
        "feature_settings": feature_settings,
    }
    if word_table is not None:
        payload["word_table"] = word_table
    return payload


@dataclass
class LoadedCheckpoint:
    model: Matcher
    config: Config
    vocab: Vocab
    dims: InputDims
    feature_settings: dict[str, Any]
    payload: dict[str, Any]


def read_payload(path: str | Path) -> dict[str, Any]:
    """The checkpoint's payload with its parts checked; one ItmError line naming the file otherwise."""
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt"
    if not path.is_file():
        raise ItmError(f"checkpoint {path}: no such file")
    try:
        with warnings.catch_warnings():  # torch warns about a foreign pickle before refusing it: we say it
            warnings.simplefilter("ignore", UserWarning)
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a truncated or foreign file
        raise ItmError(f"checkpoint {path}: not a readable itm checkpoint ({exc.__class__.__name__})") from None
    version = payload.get("format_version") if isinstance(payload, dict) else None
    if type(version) is not int or version != FORMAT_VERSION:  # a tensor here: '!=' would not be a bool
        raise ItmError(f"checkpoint {path}: not an itm checkpoint (format {FORMAT_VERSION} expected)")
    problem = _payload_problem(payload)
    if problem:
        raise ItmError(f"checkpoint {path}: damaged or not an itm checkpoint ({problem})")
    return payload


_PARTS = {"model": dict, "config": dict, "vocab": list, "dims": dict, "feature_settings": dict}


def _payload_problem(payload: dict[str, Any]) -> str | None:
    """What makes an unpickled payload unusable (a key missing or of the wrong type), else None."""
    for key, kind in _PARTS.items():
        if not isinstance(payload.get(key), kind):
            return f"'{key}' missing or not a {kind.__name__}"
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in payload["model"].items()):
        return "'model' is not a table of weights"
    dims, fields = payload["dims"], [f.name for f in dataclasses.fields(InputDims)]
    if sorted(dims) != sorted(fields) or not all(type(dims[f]) is int and dims[f] > 0 for f in fields):
        return f"'dims' should hold the positive integers {', '.join(fields)}"
    vocab = payload["vocab"]
    if not all(isinstance(w, str) for w in vocab) or len(vocab) != dims["vocab_size"]:
        return f"'vocab' should be {dims['vocab_size']} words"
    return None


# Feature settings that may differ from training: the weights see the same backbone channels, only more
# (or fewer) grid cells. A finer test-time grid is a pointing-game lever (docs/explain.md).
TEST_TIME_FEATURES = ("image_size",)


def feature_overrides_at_test_time(overrides: list[str]) -> dict[str, Any]:
    """The ``features.*`` overrides as {key: value}; a one-line error for one the weights cannot follow."""
    chosen = {}
    for text in overrides:
        keys, value = parse_override(text)
        if keys[0] != "features":
            continue
        if len(keys) != 2 or keys[1] not in TEST_TIME_FEATURES:
            raise ItmError(f"override '{text}': the model was trained on its feature settings; only "
                           f"{', '.join('features.' + k for k in TEST_TIME_FEATURES)} can change at test time")
        chosen[keys[1]] = value
    return chosen


def load_checkpoint(path: str | Path, overrides: list[str] | None = None,
                    device: torch.device | str | None = None, *, explaining: bool = False) -> LoadedCheckpoint:
    """Rebuild the model (eval mode, on ``device``; None: the CPU) and its metadata from a checkpoint
    file or run folder: the one loader for inference. ``config.features`` are the extractor settings
    the model was trained on. The file is read onto the CPU and the model moved after, so a checkpoint
    written on any device loads on any other.

    ``overrides`` (``model.global_context=pairwise``, ...) change the saved config before the model
    is built: switches that leave the weights' shapes alone; anything else fails to load in one line.
    ``explaining``: features at ``eval.explain_image_size`` when the config sets it and no override
    names ``features.image_size`` (attention pictures and the pointing game, not scores)."""
    payload = read_payload(path)
    config = Config.from_dict(payload["config"], f"checkpoint {path}")
    feature_overrides = feature_overrides_at_test_time(overrides or [])
    if overrides:
        config = apply_overrides(config, overrides)
    dims = InputDims(**payload["dims"])
    model = new_model(config, dims)
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as exc:  # missing / unexpected keys or shapes: another model or version
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise ItmError(f"checkpoint {path}: its weights do not fit model '{config.model.name}' as configured "
                       f"({first}); retrain, or load it with the itm version that wrote it") from None
    model.to(as_device(device)).eval()
    # new images must be extracted exactly as the model's training images were
    saved = dataclasses.asdict(config.features)
    config.features = feature_config({**saved, **payload["feature_settings"], "cache_dir": saved["cache_dir"],
                                      **feature_overrides})
    if explaining:
        if "image_size" not in feature_overrides:
            config.features = explanation_features(config)
        config.eval.explain_image_size = config.features.image_size  # the grid chosen: explanation_features keeps it
    opened = any(parse_override(text)[0] == ["text", "vocabulary"] for text in overrides or [])
    word_table = payload.get("word_table")
    vocab = reading_vocabulary(Vocab.from_list(payload["vocab"]), model, config, word_table, opened, path)
    return LoadedCheckpoint(model, config, vocab, dims, payload["feature_settings"], payload)


def record_in_checkpoint(path: str | Path, key: str, record: dict[str, Any]) -> Path:
    """Add ``record`` under ``key`` to a checkpoint file (a run folder: its best.pt), atomically; the
    weights and everything else stay as they were, and the file keeps its sha1 before the change among
    ``earlier_sha1s``, so indexes built with it still open. Returns the file written."""
    from itm.features.cache import content_key

    path = Path(path)
    path = path / "best.pt" if path.is_dir() else path
    payload = read_payload(path)
    payload["earlier_sha1s"] = [*payload.get("earlier_sha1s", []), content_key(path.read_bytes())]
    payload[key] = record
    save_atomic(payload, path)
    return path


def load_initial_weights(model: Matcher, path: str | Path, vocab: Vocab) -> None:
    """Start a run from a trained checkpoint's weights (``train.init_from``: fine-tuning). The file must
    hold the same model, as configured, over the same training vocabulary (its word ids index the
    word table); a one-line ConfigError says which does not."""
    payload = read_payload(path)
    if list(payload["vocab"]) != vocab.to_list():
        raise ConfigError(f"train.init_from: {path} has another training vocabulary ({len(payload['vocab'])} words, "
                          f"this run {len(vocab)}): its word ids would not read this run's captions")
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as exc:
        lines = str(exc).splitlines()
        first = lines[1].strip() if len(lines) > 1 else str(exc)
        raise ConfigError(f"train.init_from: {path}: its weights do not fit this run's model as configured "
                          f"({first})") from None


def reading_vocabulary(vocab: Vocab, model: Matcher, config: Config, word_table: Any, opened: bool,
                       path: str | Path) -> Vocab:
    """The vocabulary a loaded model reads text with. A checkpoint that names its word-vector table
    reads any word (``itm.data.open_vocab``) unless ``text.vocabulary`` is closed; one written before
    the open vocabulary stays closed, as it was, unless ``--set text.vocabulary=open`` asks."""
    from itm.data.glove import GloveTable
    from itm.data.open_vocab import ContextualVocabulary, OpenVocabulary

    if config.text.source == "minilm":
        return ContextualVocabulary(vocab.to_list())
    if word_table is None and not opened:
        config.text.vocabulary = "closed"
    if config.text.vocabulary == "closed":
        return vocab
    if isinstance(word_table, dict) and word_table.get("source") == "file":
        given = None if config.text.glove_path is None else Path(config.text.glove_path).expanduser()
        if given is None or given.name != word_table.get("name") or not given.is_file() \
                or given.stat().st_size != word_table.get("bytes"):
            raise ItmError(f"checkpoint {path}: reads words through the GloVe file {word_table.get('name')} "
                           f"({word_table.get('bytes')} bytes); give it with --set text.glove_path=FILE, or "
                           "--set text.vocabulary=closed")
    return OpenVocabulary(vocab, model.words, GloveTable(config.text.glove_path))
