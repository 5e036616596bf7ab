"""torch.distributed on CPU (gloo), started as users start it: torchrun with 2 processes.

``torchrun -m itm eval`` splits the all-pairs matrix by image rows across the processes and gathers
it: the matrix and the metrics equal a single process's exactly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import index_checkpoint

from itm.data.synthetic import synthetic_karpathy_dir
from itm.distributed import shard

pytestmark = pytest.mark.slow


def test_shards_cover_the_range_in_order():
    for n in (0, 1, 5, 7, 100):
        for count in (1, 2, 3, 8):
            parts = [shard(n, i, count) for i in range(count)]
            assert [i for part in parts for i in range(n)[part]] == list(range(n))
            sizes = [len(range(n)[part]) for part in parts]
            assert max(sizes) - min(sizes) <= 1


def run(command: list[str], env: dict) -> subprocess.CompletedProcess:
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def test_torchrun_eval_equals_one_process(tmp_path):
    data = synthetic_karpathy_dir(tmp_path / "data", n_train=2, n_val=2, n_test=7, size=48, seed=0)
    ckpt = index_checkpoint(tmp_path / "bssan.pt", "bssan")
    env = {**os.environ, "ITM_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    # chunks of 2 images: 4 chunks, 2 for each process
    common = ["eval", "--checkpoint", str(ckpt), "--data", str(data), "--split", "test", "--no-progress",
              "--set", "eval.image_tile=2"]
    run([sys.executable, "-m", "itm", *common, "--json", str(tmp_path / "one.json"), "--scores",
         str(tmp_path / "one.npy")], env)
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "itm", *common,
         "--json", str(tmp_path / "two.json"), "--scores", str(tmp_path / "two.npy")], env)
    # one process at two threads: the engine's two one-thread workers, the one thread's matrix too
    run([sys.executable, "-m", "itm", *common, "--json", str(tmp_path / "threads.json"), "--scores",
         str(tmp_path / "threads.npy")], {**env, "OMP_NUM_THREADS": "2"})
    one, two = np.load(tmp_path / "one.npy"), np.load(tmp_path / "two.npy")
    assert one.shape == (7, 35)
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(one, np.load(tmp_path / "threads.npy"))
    a, b = json.loads((tmp_path / "one.json").read_text()), json.loads((tmp_path / "two.json").read_text())
    assert (a["processes"], b["processes"]) == (1, 2)
    assert (a["threads"], json.loads((tmp_path / "threads.json").read_text())["threads"]) == (1, 2)
    assert (a["i2t"], a["t2i"], a["rsum"]) == (b["i2t"], b["t2i"], b["rsum"])


def cache_files(root) -> dict[str, bytes]:
    """Every chunk file of a feature cache, by path below the root (settings folder / chunk / file)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("chunk-*/*"))}


def test_torchrun_features_write_the_cache_one_process_writes(tmp_path):
    data = synthetic_karpathy_dir(tmp_path / "data", n_train=5, n_val=2, n_test=2, size=48, seed=1)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = ["features", "--data", str(data), "--image-size", "64", "--chunk-size", "2", "--no-progress"]
    run([sys.executable, "-m", "itm", *common, "--out", str(tmp_path / "one")], env)
    two = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "itm",
               *common, "--out", str(tmp_path / "two")], env)
    assert "9 images" in two.stdout  # rank 0 reports, once
    one_files, two_files = cache_files(tmp_path / "one"), cache_files(tmp_path / "two")
    assert len(one_files) == 5 * 4  # 9 photos in chunks of 2: 5 chunks of keys + 3 arrays
    assert one_files == two_files  # the same chunks, byte for byte


TRAIN = ["train", "--config", "caan_cpu", "--no-progress",
         "--set", "features.backbone=efficientnet_lite0", "--set", "features.image_size=64",
         "--set", "model.embed_dim=8", "--set", "model.attention_hidden=6", "--set", "model.dropout=0",
         "--set", "train.region_drop=0", "--set", "train.word_drop=0", "--set", "train.batch_size=8",
         "--set", "train.epochs=2", "--set", "train.val_images=4", "--set", "train.threads=1",
         "--set", "train.max_minutes=null", "--set", "train.lr=0.01"]


@pytest.fixture(scope="module")
def train_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    data = synthetic_karpathy_dir(root / "data", n_train=8, n_val=4, n_test=2, size=48, seed=2)
    env = {**os.environ, "ITM_CACHE": str(root / "cache"), "OMP_NUM_THREADS": "1"}
    return root, data, env


@pytest.mark.parametrize("loss", ["infonce", "pairwise_hinge"])
def test_torchrun_training_matches_one_process_with_the_same_global_batch(train_data, loss):
    """2 processes x 4 rows of each 8-caption batch vs one process x 8: the same weights after
    2 epochs (10 Adam steps), within float32 reduction-order noise."""
    import torch

    root, data, env = train_data
    args = [*TRAIN, "--data", str(data), "--set", f"train.loss={loss}"]
    run([sys.executable, "-m", "itm", *args, "--out", str(root / f"one_{loss}")], env)
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "itm",
         *args, "--out", str(root / f"two_{loss}")], env)
    one = torch.load(root / f"one_{loss}" / "last.pt", weights_only=True)
    two = torch.load(root / f"two_{loss}" / "last.pt", weights_only=True)
    assert one["loop"]["epoch"] == two["loop"]["epoch"] == 2
    for key, value in one["model"].items():
        torch.testing.assert_close(two["model"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    summary = json.loads((root / f"two_{loss}" / "summary.json").read_text())
    assert summary["processes"] == 2
    assert len((root / f"two_{loss}" / "metrics.jsonl").read_text().splitlines()) == 2  # one writer


def test_a_killed_process_fails_the_job_and_a_restart_resumes(train_data):
    """kill -9 one worker mid-run: torchrun stops the other and exits non-zero naming the failure;
    torchrun ... --resume continues from the last checkpoint to the end."""
    import torch
    from helpers import kill_switch

    root, data, env = train_data
    out = root / "killed"
    args = [*TRAIN, "--data", str(data), "--set", "train.epochs=3", "--set", "train.checkpoint_minutes=0"]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "itm"]
    # the second worker kills itself two steps into epoch 2, when both have saved (rank 0 wrote last.pt)
    armed = kill_switch(root / "kill", "itm.training.loop:Trainer.save_last",
                        "os.environ.get('RANK') == '1' and (self.state.epoch, self.state.step) == (1, 2)", env=env)
    job = subprocess.run([*launcher, *args, "--out", str(out)], env=armed, capture_output=True, text=True,
                         timeout=600)
    assert job.returncode != 0
    assert "failed" in job.stderr.lower() or "signal" in job.stderr.lower(), job.stderr[-1500:]
    stopped = torch.load(out / "last.pt", weights_only=True)["loop"]
    assert stopped["epoch"] == 1
    run([*launcher, "train", "--resume", str(out), "--no-progress", "--set", "train.epochs=" + str(stopped["epoch"] + 2)],
        env)
    finished = torch.load(out / "last.pt", weights_only=True)["loop"]
    assert finished["epoch"] == stopped["epoch"] + 2 and finished["step"] == 0
