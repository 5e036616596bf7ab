"""Fuzz the config reader: any YAML file and ``--set`` values give a Config or one ConfigError line.

Only the data / features / text / train / eval sections and ``model.name`` are generated (the model
architecture fields belong to each model's own config). Values are of the right type, the wrong
type, out of range, non-finite, too long to convert, or not YAML at all; keys may be unknown.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import yaml
from fuzz_support import assert_user_error, budget, result_or_user_error
from hypothesis import event, given
from hypothesis import strategies as st

from itm.cli import main
from itm.config import Config, load_config, parse_override, save_config
from itm.errors import shown

SECTIONS = ("data", "features", "text", "train", "eval")
FIELDS = {s: [f.name for f in dataclasses.fields(getattr(Config(), s))] for s in SECTIONS}
KEYS = [f"{s}.{k}" for s, keys in FIELDS.items() for k in keys] + ["model.name"]

scalars = (st.none() | st.booleans() | st.integers(-3, 10**6) | st.floats(allow_nan=True, allow_infinity=True)
           | st.sampled_from(["", "abc", "adam", "cosine", "glove", "infonce", "bssan", "nope", "1e-3", "nan",
                              "two\nlines", "1_000"]))
values = scalars | st.lists(scalars, max_size=2) | st.dictionaries(st.sampled_from(["a", "lr"]), scalars, max_size=2)
keys = st.sampled_from(KEYS) | st.sampled_from(["data.nope", "train", "model", "train.lr.x", "zzz", "a\nb"])

# override value texts: YAML of any kind, some of it not parseable or not constructible
value_texts = (values.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("\n...").strip())
               | st.sampled_from(["[1, 2", "{a: ", "!!python/object:os.system", "*alias", "'quoted",
                                  "- a\n- b"])
               | st.text(max_size=10))


def _nested(pairs: list[tuple[str, object]]) -> dict:
    """{"train.lr": 1} -> {"train": {"lr": 1}}; a later pair may replace a section by a value."""
    out: dict = {}
    for key, value in pairs:
        node = out
        *sections, last = key.split(".")
        for part in sections:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[last] = value
    return out


@st.composite
def config_files(draw) -> bytes:
    """A YAML config: known and unknown keys with any values, possibly cut or not UTF-8."""
    document = _nested(draw(st.lists(st.tuples(keys, values), max_size=5)))
    text = yaml.safe_dump(document, allow_unicode=True)
    damage = draw(st.sampled_from(["none"] * 5 + ["truncate", "latin-1", "tab", "list", "deep_int"]))
    if damage == "truncate":
        text = text[: draw(st.integers(0, len(text)))]
    elif damage == "tab":  # YAML forbids tabs in indentation
        text = text.replace("  ", "\t")
    elif damage == "list":
        text = "- " + text.replace("\n", "\n  ")
    elif damage == "deep_int":
        text = "train:\n  epochs: " + "9" * 5000 + "\n"
    return text.encode("latin-1", errors="replace") if damage == "latin-1" else text.encode("utf-8")


# numbers no field can hold: too long for int(), too large for float or int64, not finite
extreme = st.sampled_from(["9" * 5000, "0x" + "f" * 5000, "0x" + "f" * 20, "-0x" + "f" * 300, ".inf", ".nan", "1e400"])
overrides = st.lists(st.tuples(keys, value_texts | extreme).map(lambda kv: f"{kv[0]}={kv[1]}")
                     | st.sampled_from(["noequals", "=5", ".=1", "train..lr=0.1"]), max_size=3)


def _named(message: str, path: Path, texts: list[str]) -> bool:
    """The message names the config file, a key or section of the input, or an override."""
    words = {path.name, *SECTIONS, "model", *(t.split("=")[0].strip() for t in texts), *texts}
    return any(w and shown(w).strip("'\"") in message for w in words)


@budget(4)
@given(file=config_files(), sets=overrides)
def test_any_config_file_and_overrides_load_or_fail_in_one_line(file, sets):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.yaml"
        path.write_bytes(file)
        try:
            config = load_config(path, sets)
        except Exception as exc:  # noqa: BLE001 - the property says which types may come out
            assert_user_error(exc)
            assert _named(str(exc), path, sets), f"names no input: {exc}"
            event("refused")
            return
        event("loaded")
        assert_holds(config, sets, Path(folder))


def assert_holds(config: Config, sets: list[str], folder: Path) -> None:
    """A loaded config is what it says: written out and read back it is the same config (every value
    valid on its own), and each override of a known field holds its value (the last one given wins)."""
    save_config(config, folder / "again.yaml")
    assert load_config(folder / "again.yaml") == config
    last = {tuple(path): value for path, value in map(parse_override, sets) if ".".join(path) in KEYS}
    for (section, key), value in last.items():
        got = getattr(getattr(config, section), key)
        assert got == value or (isinstance(value, str) and got == float(value)), (section, key, value, got)


@budget(0.5)
@given(sets=overrides.filter(bool))
def test_overrides_on_a_named_config_load_or_fail_in_one_line(sets):
    result_or_user_error(lambda: load_config("bssan_cpu", sets))


@budget(0.25)
@given(sets=overrides.filter(bool))
def test_cli_train_prints_one_error_line_and_leaves_the_run_folder_alone(tmp_path_factory, capsys, sets):
    """``itm train --set ...`` into a folder holding a run: exit 2, one ``error:`` line, files untouched
    (a valid config is refused too: the folder already holds a run)."""
    run = tmp_path_factory.mktemp("run")
    before = {"last.pt": b"checkpoint bytes", "config.yaml": b"train: {epochs: 3}\n", "metrics.jsonl": b"{}\n"}
    for name, data in before.items():
        (run / name).write_bytes(data)
    argv = ["train", "--data", str(run / "no_data"), "--out", str(run), "--no-progress"]
    for text in sets:
        argv += ["--set", text]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
