"""Run configuration: named YAML files, dotted overrides, variant presets, validation, round trip."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from itm import cli
from itm.config import CONFIG_DIR, Config, apply_overrides, load_config, parse_override, save_config
from itm.errors import ConfigError

NAMED = ["bssan_cpu", "bssan_paper"]
ALL_NAMED = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))  # every shipped config, new ones included


def leaves(raw: dict, prefix: str = ""):
    for key, value in raw.items():
        if isinstance(value, dict):
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def lookup(config: Config, dotted: str):
    node = config
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def test_the_two_reference_configs_ship():
    assert set(NAMED) <= set(ALL_NAMED)


@pytest.mark.parametrize("name", ALL_NAMED)
def test_named_config_loads_and_every_yaml_value_lands(name):
    config = load_config(name)
    raw = yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text(encoding="utf-8"))
    for dotted, value in leaves(raw):
        assert lookup(config, dotted) == value, dotted
    assert load_config(CONFIG_DIR / f"{name}.yaml") == config  # by path too


def test_paper_config_has_the_papers_settings():
    config = load_config("bssan_paper")  # Table I and section V-B
    assert (config.model.w2r_hidden, config.model.w2r_mlp) == (1024, [512, 128])
    assert (config.model.o2w_hidden, config.model.o2w_mlp) == (512, [512, 256, 64])
    assert (config.features.backbone, config.features.num_objects, config.data.max_words) == ("vgg19", 10, 30)
    assert (config.train.optimizer, config.train.lr, config.train.momentum) == ("sgd", 0.01, 0.9)


@pytest.mark.parametrize("name", NAMED)
def test_reference_configs_keep_the_papers_objective(name):
    config = load_config(name)
    assert (config.model.o2w_weight, config.model.reg_weight) == (0.6, 0.01)  # lambda, delta
    assert config.model.negative_attention == "uniform" and config.train.loss == "pairwise_hinge"
    assert config.model.name == "bssan" and config.model.branches == ["w2r", "o2w"]
    assert config.model.w2r_hidden <= 1024 and config.model.o2w_hidden <= 512


@pytest.mark.parametrize("text,key,value", [
    ("model.w2r_hidden=256", "model.w2r_hidden", 256),
    ("model.w2r_mlp=[32, 8]", "model.w2r_mlp", [32, 8]),
    ("model.o2w_mlp=[]", "model.o2w_mlp", []),
    ("model.branches=[o2w]", "model.branches", ["o2w"]),
    ("train.lr=0.5", "train.lr", 0.5),
    ("train.lr=1", "train.lr", 1.0),
    ("train.lr=1e-3", "train.lr", 0.001),  # YAML 1.1 reads this as a string
    ("train.margin=0", "train.margin", 0.0),
    ("text.trainable=true", "text.trainable", True),
    ("features.weights=null", "features.weights", None),
    ("features.weights=/tmp/vgg.pth", "features.weights", "/tmp/vgg.pth"),
    ("train.max_minutes=2.5", "train.max_minutes", 2.5),
    ("train.checkpoint_minutes=0", "train.checkpoint_minutes", 0.0),
])
def test_dotted_override(text, key, value):
    config = load_config("bssan_cpu", [text])
    got = lookup(config, key)
    assert got == value and type(got) is type(value)


def test_later_overrides_win_and_file_values_survive():
    config = load_config("bssan_cpu", ["model.w2r_hidden=64", "model.w2r_hidden=32"])
    assert config.model.w2r_hidden == 32
    assert config.model.o2w_hidden == 128  # from the file


def test_parse_override_splits_key_and_yaml_value():
    assert parse_override("model.w2r_mlp=[1, 2]") == (["model", "w2r_mlp"], [1, 2])
    assert parse_override("train.seed = 3") == (["train", "seed"], 3)
    assert parse_override("features.weights=a=b.pth") == (["features", "weights"], "a=b.pth")


@pytest.mark.parametrize("name,field,expected", [
    ("bssan_w2r", "branches", ["w2r"]),
    ("bssan_o2w", "branches", ["o2w"]),
    ("bssan_no_reg", "reg_weight", 0.0),
    ("bssan", "branches", ["w2r", "o2w"]),
])
@pytest.mark.parametrize("file", NAMED)
def test_variant_presets(file, name, field, expected):
    # both files set model.reg_weight: 0.01 explicitly; choosing bssan_no_reg must still give 0
    config = load_config(file, [f"model.name={name}"])
    assert getattr(config.model, field) == expected
    assert config.model.w2r_hidden == load_config(file).model.w2r_hidden  # the file's other values stay


def test_user_values_beat_variant_presets_in_either_order():
    for overrides in (["model.name=bssan_w2r", "model.branches=[w2r, o2w]"],
                      ["model.branches=[w2r, o2w]", "model.name=bssan_w2r"]):
        assert load_config(None, overrides).model.branches == ["w2r", "o2w"]
    assert load_config(None, ["model.name=bssan_no_reg", "model.reg_weight=0.05"]).model.reg_weight == 0.05


def test_variant_named_in_a_yaml_file_gets_its_presets(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("model:\n  name: bssan_o2w\n  o2w_hidden: 16\n", encoding="utf-8")
    config = load_config(path)
    assert config.model.branches == ["o2w"] and config.model.o2w_hidden == 16


def test_values_beside_the_variant_in_the_same_file_win(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("model:\n  name: bssan_no_reg\n  reg_weight: 0.05\n", encoding="utf-8")
    assert load_config(path).model.reg_weight == 0.05
    assert load_config(path, ["model.reg_weight=0.2"]).model.reg_weight == 0.2


def test_apply_overrides_keeps_the_resolved_presets():
    config = load_config(None, ["model.name=bssan_w2r"])
    changed = apply_overrides(config, ["train.lr=0.1"])
    assert changed.model.branches == ["w2r"] and changed.train.lr == 0.1
    with pytest.raises(ConfigError, match="train.lr"):
        apply_overrides(config, ["train.lr=-1"])


BAD = [
    # unknown keys
    ("foo.bar=1", "foo"),
    ("model.foo=1", "foo"),
    ("train.learning_rate=0.1", "learning_rate"),
    ("model.w2r_hidden.x=1", "w2r_hidden"),
    # bad types
    ("model.w2r_hidden=abc", "model.w2r_hidden"),
    ("model.w2r_hidden=2.5", "model.w2r_hidden"),
    ("model.w2r_hidden=true", "model.w2r_hidden"),
    ("model.w2r_mlp=5", "model.w2r_mlp"),
    ("model.w2r_mlp=[8, x]", "model.w2r_mlp"),
    ("text.trainable=maybe", "text.trainable"),
    ("train.lr=fast", "train.lr"),
    ("train.lr=.inf", "train.lr"),
    ("model=3", "model"),
    # bad choices
    ("model.negative_attention=sometimes", "model.negative_attention"),
    ("train.optimizer=rmsprop", "train.optimizer"),
    ("train.lr_schedule=linear", "train.lr_schedule"),
    ("model.attention_scale=0", "model.attention_scale"),
    ("model.match_input=1", "model.match_input"),
    ("model.dropout=1", "model.dropout"),
    ("model.dropout=-0.1", "model.dropout"),
    ("train.region_drop=1", "train.region_drop"),
    ("train.word_drop=-0.1", "train.word_drop"),
    ("train.ema_decay=1", "train.ema_decay"),
    ("text.source=bert", "text.source"),
    ("model.name=resnet", "model.name"),
    ("train.loss=triplet", "train.loss"),
    ("model.branches=[w2r, r2w]", "model.branches"),
    ("model.branches=[]", "model.branches"),
    # negative / zero sizes
    ("model.w2r_hidden=-1", "model.w2r_hidden"),
    ("model.o2w_hidden=0", "model.o2w_hidden"),
    ("model.w2r_mlp=[8, -2]", "model.w2r_mlp"),
    ("train.batch_size=0", "train.batch_size"),
    ("train.epochs=-3", "train.epochs"),
    ("train.lr=-0.1", "train.lr"),
    ("train.temperature=0", "train.temperature"),
    ("train.patience=0", "train.patience"),
    ("train.margin=-1", "train.margin"),
    ("train.checkpoint_minutes=-1", "train.checkpoint_minutes"),
    ("train.threads=0", "train.threads"),
    ("data.max_words=0", "data.max_words"),
    ("features.num_objects=-5", "features.num_objects"),
    ("eval.memory_budget_mb=0", "eval.memory_budget_mb"),
    ("eval.score_sizes=[0]", "eval.score_sizes"),
    ("eval.score_sizes=[224]", "eval.score_sizes"),  # bssan_cpu's trained size: that view is scored anyway
    ("eval.score_sizes=[320, 320]", "eval.score_sizes"),
    ("eval.score_sizes=big", "eval.score_sizes"),
]


@pytest.mark.parametrize("override,key", BAD, ids=[o for o, _ in BAD])
def test_bad_override_is_a_one_line_config_error_naming_the_key(override, key):
    with pytest.raises(ConfigError) as info:
        load_config("bssan_cpu", [override])
    message = str(info.value)
    assert key in message
    assert "\n" not in message


@pytest.mark.parametrize("text", ["model.w2r_hidden", "=5", "...=5"])
def test_malformed_override(text):
    with pytest.raises(ConfigError, match="override"):
        load_config(None, [text])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="no_such_config"):
        load_config("no_such_config")
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="broken.yaml"):
        load_config(broken)
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listed)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("train:\n  lr: 0.1\n  warmup: 3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="warmup"):
        load_config(unknown)


@pytest.mark.parametrize("name", ["bssan_cpu", "bssan_paper"])
@pytest.mark.parametrize("variant", ["bssan", "bssan_w2r", "bssan_no_reg"])
def test_save_config_round_trip(tmp_path, name, variant):
    config = load_config(name, [f"model.name={variant}", "model.w2r_mlp=[7, 3]", "train.lr=1e-3",
                                "features.weights=/x/y.pth", "train.max_minutes=null"])
    path = tmp_path / "config.yaml"
    save_config(config, path)
    again = load_config(path)
    assert again == config
    assert Config.from_dict(config.to_dict()) == config
    assert dataclasses.asdict(again) == yaml.safe_load(path.read_text(encoding="utf-8"))


def test_cli_train_with_a_bad_set_prints_one_error_line_and_exits_2(tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(["train", "--data", str(tmp_path), "--out", str(out), "--set", "model.w2r_hidden=abc"])
    assert code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "model.w2r_hidden" in lines[0]
    assert not out.exists()  # nothing was started


@pytest.mark.parametrize("argv", [
    ["--set", "model.bogus=1"],
    ["--set", "no_equals_sign"],
    ["--config", "no_such_config"],
    ["--set", "train.loss=triplet"],
])
def test_cli_train_config_errors_exit_2(tmp_path, capsys, argv):
    code = cli.main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), *argv])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
