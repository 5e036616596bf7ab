"""kill -9 in the middle of an extraction: the cache stays valid and a re-run ends with the same arrays."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
from PIL import Image

from itm.config import FeatureConfig
from itm.data.types import Dataset, ImageRecord
from itm.features.extract import extract_features

N_IMAGES, CHUNK, BATCH = 40, 8, 4

# runs in a child process; "slow" makes every batch take >= 0.3 s so that the kill lands mid-run
CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import torch
    torch.set_num_threads(1)  # the same in every child: identical arithmetic
    from itm.config import FeatureConfig
    from itm.data.types import Dataset, ImageRecord
    from itm.features import backbones
    from itm.features.extract import extract_features

    images, cache, slow = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "slow"
    if slow:
        forward = backbones.EfficientNetLite.forward
        def slowed(self, x):
            time.sleep(0.3)
            return forward(self, x)
        backbones.EfficientNetLite.forward = slowed
    records = [ImageRecord(p.name, p, "test", [], []) for p in sorted(images.glob("*.jpg"))]
    _, _, report = extract_features(Dataset("d", images, records), FeatureConfig(image_size=64), cache,
                                    batch_size=BATCH, progress=False, chunk_size=CHUNK)
    print("extracted", report.extracted)
    """
).replace("BATCH", str(BATCH)).replace("CHUNK", str(CHUNK))


def child(script: Path, images: Path, cache: Path, mode: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    return subprocess.Popen([sys.executable, str(script), str(images), str(cache), mode],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def finish(proc: subprocess.Popen) -> int:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return int(out.split()[-1])


def chunks(cache: Path) -> list[Path]:
    return list(cache.glob("*/chunk-*"))


def cached(images: Path, cache: Path):
    records = [ImageRecord(p.name, p, "test", [], []) for p in sorted(images.glob("*.jpg"))]
    feats, _, report = extract_features(Dataset("d", images, records), FeatureConfig(image_size=64), cache,
                                        progress=False)
    assert report.extracted == 0  # everything must already be there
    return feats


def test_kill_minus_nine_then_resume_gives_identical_arrays(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        arr = rng.integers(0, 255, (int(rng.integers(40, 80)), int(rng.integers(40, 80)), 3), dtype=np.uint8)
        Image.fromarray(arr).save(images / f"{i:03d}.jpg")
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    killed, clean = tmp_path / "cache-killed", tmp_path / "cache-clean"

    proc = child(script, images, killed, "slow")
    deadline = time.monotonic() + 90
    while not chunks(killed) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the child finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    done = len(chunks(killed))
    assert 1 <= done < N_IMAGES // CHUNK

    resumed = finish(child(script, images, killed, "fast"))
    assert resumed == N_IMAGES - done * CHUNK  # finished chunks were skipped
    assert not list(killed.glob("*/tmp-*"))  # the killed run's half-written chunk was cleaned up
    assert finish(child(script, images, clean, "fast")) == N_IMAGES

    a, b = cached(images, killed), cached(images, clean)
    assert a.settings == b.settings
    for name in ("regions", "objects", "boxes"):
        assert np.array_equal(getattr(a, name).numpy(), getattr(b, name).numpy()), name
