"""``itm models``: the registered matchers and their variants."""

from __future__ import annotations

import argparse

HELP = "list the registered models and their variants"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    from itm.models.registry import MODELS, model_presets

    width = max(len(n) for n in MODELS.names())
    for name in MODELS.names():
        presets = ", ".join(f"{k}={v}" for k, v in model_presets(name).items()) or "defaults"
        print(f"{name:<{width}}  {MODELS.help(name)}  [{presets}]")
    return 0
