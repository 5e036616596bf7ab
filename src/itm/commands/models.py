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
    print(shipped_lines())
    return 0


def shipped_lines() -> str:
    """What ships in the package (used when no checkpoint is given), with its Flickr8k test rsum."""
    from itm.errors import ItmError
    from itm.shipped import shipped_card, shipped_checkpoint

    try:
        models = shipped_card()["models"]
        return "\nshipped (the default of itm index / search / serve and itm.load_model()):\n" + "\n".join(
            f"  {name}: {entry['role']}, {entry['training']['model']}, Flickr8k test rsum "
            f"{entry['flickr8k_test']['rsum']:.1f}  {shipped_checkpoint(name)}" for name, entry in models.items())
    except (ItmError, KeyError) as exc:
        return f"\nshipped models: unavailable ({exc})"
