"""How every benchmark ends: its figures printed one a line, and the same figures written as JSON.

A benchmark runs as ``python benchmarks/NAME.py``, so this folder is first on ``sys.path`` and
``from _report import report`` finds this module (the tests load the benchmarks the same way).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any


def line(name: str, value: Any, width: int) -> None:
    """One figure: its name padded to ``width``, then the value (a dict or list as JSON). Flushed, so
    that a long benchmark shows each figure as soon as it is measured."""
    shown = json.dumps(value) if isinstance(value, dict | list) else value
    print(f"{name:<{width}}{shown}", flush=True)


def save_json(figures: dict, json_path: str | Path | None) -> dict:
    """``figures`` written to ``json_path`` (indented JSON; nothing without a path); returns them."""
    if json_path:
        Path(json_path).write_text(json.dumps(figures, indent=2), encoding="utf-8")
    return figures


def report(figures: dict, json_path: str | Path | None, width: int | None = None) -> dict:
    """Print every figure (``line``; the names padded to the longest name + 2 unless ``width`` is
    given), write them all to ``json_path`` when there is one, and return them."""
    width = width or max(map(len, figures), default=0) + 2
    for name, value in figures.items():
        line(name, value, width)
    return save_json(figures, json_path)


def measure_each(names: Iterable[str], measure: Callable[[str], dict], width: int) -> dict[str, dict]:
    """``{name: measure(name)}`` in order, each entry printed (``line``) as soon as it is measured."""
    entries = {}
    for name in names:
        entries[name] = measure(name)
        line(name, entries[name], width)
    return entries
