"""Shared fixtures. Tests that need ../shared/data skip with a reason in a plain clone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_FLICKR8K = REPO.parent / "shared" / "data" / "flickr8k"

# two cores on CI: keep torch from oversubscribing when pytest runs alongside other work
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def flickr8k_dir() -> Path:
    """The real Flickr8k folder beside the repository (skipped where it is absent)."""
    if not (SHARED_FLICKR8K / "dataset_flickr8k.json").is_file():
        pytest.skip("needs ../shared/data/flickr8k (the real Flickr8k), absent in a plain clone")
    return SHARED_FLICKR8K
