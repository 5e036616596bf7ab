"""The caption bank: Flickr8k train captions that are never queries, shipped as package data.

The hubness corrections (``itm.evaluation.hubness``) score every photo against these captions once
(at index time for search, per evaluation for ``itm eval --normalise``) to learn how readily the
photo scores high for any caption. ``scripts/make_caption_bank.py`` wrote the file: one caption from
each of 2,000 random train images, in drawn order, so its first N lines are a random bank of N.

The caption *pool* is every train caption (30,000) with its photo's sha1 prefix: search draws each
photo's own bank from it (the captions nearest the photo, ``itm.retrieval.search_models``).
"""

from __future__ import annotations

import functools
import gzip
from importlib import resources
from pathlib import Path

from itm.errors import ItmError
from itm.features.cache import content_key

BANK_NAME = "flickr8k_train"
POOL_NAME = "flickr8k_train_pool"


def asset_path(file_name: str) -> Path:
    return Path(str(resources.files("itm") / "assets" / "caption_bank" / file_name))


def bank_path() -> Path:
    return asset_path(f"{BANK_NAME}.txt")


def pool_path() -> Path:
    return asset_path(f"{POOL_NAME}.tsv.gz")


@functools.lru_cache(maxsize=2)
def asset_bytes(path: Path, what: str) -> bytes:
    """A shipped asset's bytes (gunzipped for a .gz); a one-line ItmError when it cannot be read."""
    try:
        data = path.read_bytes()
        return gzip.decompress(data) if path.suffix == ".gz" else data
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise ItmError(f"{what} {path}: unreadable ({exc}); reinstall itm") from None


def _bank_text() -> str:
    return asset_bytes(bank_path(), "caption bank").decode("utf-8")


def caption_bank(size: int | None = None) -> list[list[str]]:
    """The bank's first ``size`` captions (all with None), as token lists."""
    lines = [line.split() for line in _bank_text().splitlines() if line.strip()]
    if size is not None and not 0 < size <= len(lines):
        raise ItmError(f"caption bank: size must be in 1..{len(lines)}, got {size}")
    return lines[:size]


def bank_identity(size: int) -> dict:
    """What an index records of the bank its statistics came from (a changed bank is scored again)."""
    return {"name": BANK_NAME, "size": size, "sha1": content_key(_bank_text().encode("utf-8"))}


def _pool_bytes() -> bytes:
    return asset_bytes(pool_path(), "caption pool")


def caption_pool() -> tuple[list[list[str]], list[str]]:
    """The pool's captions (token lists) and, for each, the first 16 hex digits of its photo's sha1."""
    tokens, photos = [], []
    for line in _pool_bytes().decode("utf-8").splitlines():
        photo, _, text = line.partition("\t")
        if text.strip():
            tokens.append(text.split())
            photos.append(photo)
    return tokens, photos


def pool_identity(neighbours: int) -> dict:
    """What an index records of the per-photo banks: the pool and how many captions each photo gets."""
    return {"name": POOL_NAME, "neighbours": neighbours, "sha1": content_key(_pool_bytes())}
