"""Fuzz the checkpoint reader: any file given as a checkpoint loads a model or fails as one ItmError
line naming it, and the file itself is never changed.

Files: a real (tiny) checkpoint cut at any offset or with flipped bytes, another program's pickle,
and torch.save payloads with a key missing or of the wrong type, another model's weights or
input sizes, another format version.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from fuzz_inputs import checkpoint_files
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
        if ckpt is not None:
            assert isinstance(ckpt.feature_settings, dict) and len(ckpt.vocab) == ckpt.dims.vocab_size
            assert not ckpt.model.training
        assert path.read_bytes() == data  # reading never writes
