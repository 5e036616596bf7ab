"""The trained models that ship inside the package, used when no checkpoint is given.

``itm/assets/models/`` holds itm checkpoints written by ``scripts/ship_models.py`` (weights in
float16 to keep the wheel small; they load into float32 models; like any checkpoint, each carries
what loading it needs: its word table, its explanation grid) and ``card.json``, which names them,
their roles, how they were trained and what they measure on Flickr8k test:

- role ``rerank``: the cross-attention matchers that re-rank search's shortlist, in order (the card's
  ``rerank_ensemble`` when there are several; the first also explains and is ``load_model()``'s default);
- role ``shortlist``: the dual encoder on the same features, the search shortlist.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from pathlib import Path

from itm.errors import ItmError


def shipped_folder() -> Path:
    return Path(str(resources.files("itm") / "assets" / "models"))


def shipped_names() -> list[str]:
    """The shipped models' names, as the card lists them (``bssan``, ``dual``, ...)."""
    return list(shipped_card()["models"])


def shipped_role(role: str) -> list[str]:
    """The shipped models of a role in their order: ``rerank`` (the card's ensemble when it has one,
    else its re-ranker) or ``shortlist``."""
    card = shipped_card()
    if role == "rerank" and card.get("rerank_ensemble"):
        return list(card["rerank_ensemble"]["members"])
    return [name for name, entry in card["models"].items() if entry["role"] == role]


def shipped_checkpoint(name: str) -> Path:
    """The shipped checkpoint file ``name`` (``bssan``, ``dual``, ...); a one-line error if this install lacks it."""
    if name not in shipped_names():
        raise ItmError(f"shipped model '{name}': none such (shipped: {', '.join(shipped_names())})")
    path = shipped_folder() / f"{name}.pt"
    if not path.is_file():
        raise ItmError(f"shipped model {path}: missing from this install; pass a checkpoint instead "
                       "(or reinstall itm)")
    return path


@functools.lru_cache(maxsize=1)
def shipped_card() -> dict:
    """How the shipped models were trained and their measured Flickr8k test metrics (read once per process)."""
    path = shipped_folder() / "card.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ItmError(f"shipped model card {path}: unreadable ({exc.__class__.__name__})") from None


def search_checkpoints(shortlist: str | None, checkpoint: str | list[str] | None,
                       rerank: bool = True) -> tuple[str, str | list[str] | None]:
    """(shortlist, re-ranker or re-rankers) paths for an index: the shipped models for each role not
    given (the shipped re-rankers: one path, or the ensemble's list); no re-ranker when ``rerank`` is False."""
    short = shortlist if shortlist is not None else str(shipped_checkpoint(shipped_role("shortlist")[0]))
    if not rerank:
        return short, None
    if checkpoint is not None:
        return short, checkpoint
    shipped = [str(shipped_checkpoint(name)) for name in shipped_role("rerank")]
    return short, shipped[0] if len(shipped) == 1 else shipped


def portable_path(path: str | Path) -> str:
    """How an index records a checkpoint: ``shipped:<name>`` for a file of the package's shipped folder
    (so the index still opens after itm is reinstalled elsewhere), else the absolute path."""
    resolved = Path(path).resolve()
    if resolved.suffix == ".pt" and resolved.parent == shipped_folder().resolve():
        return f"shipped:{resolved.stem}"
    return str(resolved)


def resolve_path(recorded: str) -> str:
    """The checkpoint file an index's record names (the inverse of ``portable_path``)."""
    if not recorded.startswith("shipped:"):
        return recorded
    path = shipped_folder() / f"{recorded.split(':', 1)[1]}.pt"
    if not path.is_file():
        raise ItmError(f"shipped model {path}: missing from this install; pass a checkpoint instead "
                       "(or reinstall itm)")
    return str(path)
