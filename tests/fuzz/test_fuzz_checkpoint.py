"""Fuzz the checkpoint reader: any file given as a checkpoint loads a model or fails as one ItmError
line naming it, and the file itself is never changed.

Files: a real (tiny) checkpoint cut at any offset or with flipped bytes, another program's pickle,
and torch.save payloads with a key missing or of the wrong type, another model's weights or
input sizes, another format version.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from fuzz_inputs import DIMS, _saved, checkpoint_files, payload
from fuzz_support import budget, result_or_user_error
from hypothesis import event, given

from itm.checkpoint import load_checkpoint


@budget(3)
@given(data=checkpoint_files())
def test_any_checkpoint_file_loads_or_fails_in_one_line(data):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "best.pt"
        path.write_bytes(data)
        ckpt = result_or_user_error(lambda: load_checkpoint(path), str(path))
        event("refused" if ckpt is None else "loaded")
        assert ckpt is None or usable(ckpt)  # refused in one line, or a model that scores
        assert path.read_bytes() == data  # reading never writes


def usable(ckpt) -> bool:
    """A loaded checkpoint is whole: its vocabulary fits its dims, it is in eval mode, it scores."""
    from itm.data.types import Captions, ImageFeatures
    from itm.evaluation.engine import score_all_pairs

    d = ckpt.dims
    features = ImageFeatures(torch.ones(2, 4, d.region_dim), torch.ones(2, 3, d.object_dim))
    captions = Captions(torch.tensor([[2, 3, 4], [5, 6, 0]]) % d.vocab_size, torch.tensor([3, 2]))
    scores = score_all_pairs(ckpt.model, features, captions)
    return (isinstance(ckpt.feature_settings, dict) and len(ckpt.vocab) == d.vocab_size
            and not ckpt.model.training and scores.shape == (2, 2) and bool(np.isfinite(scores).all()))


def test_an_intact_checkpoint_file_is_usable(tmp_path):
    """The property the fuzz asks of every file that loads holds for the file it damages."""
    (tmp_path / "best.pt").write_bytes(_saved(payload()))
    ckpt = load_checkpoint(tmp_path / "best.pt")
    assert ckpt.dims == DIMS and usable(ckpt)
