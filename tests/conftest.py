"""Shared fixtures. Tests that need ../shared/data skip with a reason in a plain clone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import itm.models  # noqa: F401  (registers every model, so configs resolve)

REPO = Path(__file__).resolve().parents[1]
SHARED_FLICKR8K = REPO.parent / "shared" / "data" / "flickr8k"

# one thread: tests use tiny tensors, where 2 threads on a shared 2-core machine ran 15-20x slower
torch.set_num_threads(1)


@pytest.fixture
def flickr8k_dir() -> Path:
    """The real Flickr8k folder beside the repository (skipped where it is absent)."""
    if not (SHARED_FLICKR8K / "dataset_flickr8k.json").is_file():
        pytest.skip("needs ../shared/data/flickr8k (the real Flickr8k), absent in a plain clone")
    return SHARED_FLICKR8K

# -- the fourth model --------------------------------------------------------------------------------
# registered before collection, so the every-model suites (test_models.py, test_engine.py) run over it
import fourth_model  # noqa: E402, F401
