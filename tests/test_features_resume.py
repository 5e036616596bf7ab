"""kill -9 in the middle of an extraction: the cache stays valid and a re-run ends with the same arrays."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from helpers import kill_switch
from PIL import Image

from itm.config import FeatureConfig
from itm.data.types import Dataset, ImageRecord
from itm.features.extract import extract_features

N_IMAGES, CHUNK, BATCH = 40, 8, 4

KILLED_AFTER = 2  # chunks: the child kills itself right after writing its second chunk

# runs in a child process
CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import torch
    torch.set_num_threads(1)  # the same in every child: identical arithmetic
    from itm.config import FeatureConfig
    from itm.data.types import Dataset, ImageRecord
    from itm.features.extract import extract_features

    images, cache = Path(sys.argv[1]), sys.argv[2]
    records = [ImageRecord(p.name, p, "test", [], []) for p in sorted(images.glob("*.jpg"))]
    _, _, report = extract_features(Dataset("d", images, records), FeatureConfig(image_size=64), cache,
                                    batch_size=BATCH, progress=False, chunk_size=CHUNK)
    print("extracted", report.extracted)
    """
).replace("BATCH", str(BATCH)).replace("CHUNK", str(CHUNK))


def child(script: Path, images: Path, cache: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    env = {**(os.environ if env is None else env)}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"), env.get("PYTHONPATH", "")])
    return subprocess.Popen([sys.executable, str(script), str(images), str(cache)],
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

    armed = kill_switch(tmp_path / "kill", "itm.features.cache:FeatureCache.write_chunk",
                        f"len(self.chunks()) == {KILLED_AFTER}")
    proc = child(script, images, killed, armed)
    proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL
    done = len(chunks(killed))
    assert done == KILLED_AFTER < N_IMAGES // CHUNK

    resumed = finish(child(script, images, killed))
    assert resumed == N_IMAGES - done * CHUNK  # finished chunks were skipped
    assert not list(killed.glob("*/tmp-*"))  # the killed run's half-written chunk was cleaned up
    assert finish(child(script, images, clean)) == N_IMAGES

    a, b = cached(images, killed), cached(images, clean)
    assert a.settings == b.settings
    for name in ("regions", "objects", "boxes"):
        assert np.array_equal(getattr(a, name).numpy(), getattr(b, name).numpy()), name
