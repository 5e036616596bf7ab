"""``itm models``: the registered matchers and their variants."""

from __future__ import annotations

import argparse

HELP = "list the registered models and their variants"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    from itm.models.registry import MODELS, _load_all

    _load_all()
    width = max(len(n) for n in MODELS.names())
    for name in MODELS.names():
        spec = MODELS.get(name)
        presets = ", ".join(f"{k}={v}" for k, v in spec.presets.items()) or "defaults"
        print(f"{name:<{width}}  {spec.help}  [{presets}]")
    return 0
