"""A worked estimate of COCO-5K all-pairs scoring time (5,000 images x 25,000 captions = 125M pairs)
for each model, from costs measured here, on one CPU thread and on 1 and 8 GPUs.

    python benchmarks/coco5k_estimate.py --threads 1 [--json results/coco5k_estimate.json]

Per model configuration (random weights and features of the configured shapes: the cost depends on
shapes, not values):
- the measured CPU time per pair of the evaluation engine (a block of images x captions, per-image
  and per-caption preparation included, as in a full matrix);
- the matmul FLOPs per pair of ``score_block`` (``torch.utils.flop_counter``: matmuls, bmm,
  convolutions; elementwise work, softmax and the LSTM's gates are not counted, so it is a floor);
- the bytes per pair that ``score_block``'s operations write (every op's outputs; each is read at
  least once again, so memory traffic is at least twice that);
- the projections: 125M x the measured CPU time; and per GPU the larger of two floors, compute
  (FLOPs / the H200's dense bf16 peak, 989 TFLOP/s) and memory (2 x bytes written / its 4.8 TB/s),
  each at 30 % of peak (small, irregular kernels like these rarely reach more), divided by 8 for
  8 GPUs (the engine splits the images across ranks; the only traffic is the final gather of the
  125M float32 scores, 0.5 GB).
The GPU figures are an estimate, not a measurement: no GPU was lent to this machine.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from _report import measure_each, save_json
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

import itm.models  # noqa: F401  (registers every model)
from itm.checkpoint import new_model
from itm.config import load_config
from itm.data.synthetic import random_captions
from itm.data.types import ImageFeatures
from itm.evaluation.engine import score_all_pairs
from itm.models.base import InputDims

COCO5K_PAIRS = 5000 * 25000
H200_BF16_DENSE = 989e12
H200_BYTES_PER_S = 4.8e12
UTILISATION = 0.30
# (config, region grid D, region / object dim, word dim): the features each configuration reads
SHAPES = {
    "bssan_cpu_lite2": (81, 1280, 50), "caan_cpu": (81, 1280, 50), "mlasm_cpu": (81, 1280, 50),
    "dual_cpu": (81, 1280, 50),
    "bssan_paper": (196, 512, 300), "caan_paper": (81, 1280, 300), "mlasm_paper": (81, 1280, 300),
}


def build(config_name: str, gen: torch.Generator):
    grid, dim, word_dim = SHAPES[config_name]
    config = load_config(config_name)
    model = new_model(config, InputDims(word_dim, dim, dim, vocab_size=8000)).eval()
    def features(n: int) -> ImageFeatures:
        return ImageFeatures(torch.randn(n, grid, dim, generator=gen).half(), torch.randn(n, 10, dim, generator=gen).half())
    return model, features


@torch.inference_mode()
def seconds_per_pair(model, features, gen: torch.Generator, budget_s: float) -> float:
    """Engine time per pair on a block sized to take about ``budget_s``."""
    images, captions = 4, 250
    while True:
        feats, caps = features(images), random_captions(captions, 8000, gen)
        t0 = time.perf_counter()
        score_all_pairs(model, feats, caps)
        elapsed = time.perf_counter() - t0
        if elapsed > budget_s / 4 or images >= 256:
            return elapsed / (images * captions)
        images *= 4


class BytesWritten(TorchDispatchMode):
    """Sums the bytes of every operation's tensor outputs."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.total += t.numel() * t.element_size()
        return out


# the counter's registry knows the out-of-place products only: a model that accumulates into a tensor it
# owns (CAAN's region contexts, ``baddbmm_``) would have those FLOPs dropped from its floor
def _product_flops(_accumulated_shape, a_shape, b_shape, out_shape=None, **_) -> int:
    """2 x (batch) x m x k x n: a ``baddbmm_`` / ``addmm_`` (shapes: the accumulated tensor, A, B)."""
    *batch, m, k = a_shape
    return 2 * math.prod(batch) * m * k * b_shape[-1]


IN_PLACE_PRODUCTS = {torch.ops.aten.baddbmm_: _product_flops, torch.ops.aten.addmm_: _product_flops}


@torch.inference_mode()
def costs_per_pair(model, features, gen: torch.Generator) -> tuple[float, float]:
    """(matmul FLOPs, bytes written) per pair of ``score_block`` on prepared states."""
    images, captions = 4, 64
    image_state = model.prepare_images(features(images).streams(model.image_streams))
    caption_state = model.prepare_captions(random_captions(captions, 8000, gen))
    with FlopCounterMode(display=False, custom_mapping=IN_PLACE_PRODUCTS) as counter:
        model.score_block(image_state, caption_state)
    with BytesWritten() as written:
        model.score_block(image_state, caption_state)
    return counter.get_total_flops() / (images * captions), written.total / (images * captions)


def estimate(config_name: str, budget_s: float, device: str = "cpu") -> dict:
    """One config's CPU time per pair and the GPU estimate; with a GPU ``device``, also the COCO-5K
    time measured there (the engine at the config's eval settings)."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model, features = build(config_name, gen)
    flops, written = costs_per_pair(model, features, gen)
    if device != "cpu":
        measured = seconds_per_pair(model.to(device), features, gen, budget_s)
        return {"device": device, "us_per_pair": round(measured * 1e6, 3),
                "coco5k_measured_s": round(COCO5K_PAIRS * measured, 1), "mflop_per_pair": round(flops / 1e6, 3)}
    per_pair = seconds_per_pair(model, features, gen, budget_s)
    compute_s = COCO5K_PAIRS * flops / (H200_BF16_DENSE * UTILISATION)
    memory_s = COCO5K_PAIRS * 2 * written / (H200_BYTES_PER_S * UTILISATION)
    return {
        "cpu_us_per_pair": round(per_pair * 1e6, 2),
        "mflop_per_pair": round(flops / 1e6, 3),
        "kb_written_per_pair": round(written / 1e3, 1),
        "cpu_gflop_per_s": round(flops / per_pair / 1e9, 2),
        "coco5k_cpu_1thread_h": round(COCO5K_PAIRS * per_pair / 3600, 2),
        "gpu_bound": "memory" if memory_s > compute_s else "compute",
        "coco5k_1gpu_s": round(max(compute_s, memory_s), 1),
        "coco5k_8gpu_s": round(max(compute_s, memory_s) / 8, 1),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=list(SHAPES))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--budget", type=float, default=20.0, help="seconds of timed scoring per model (about)")
    parser.add_argument("--device", default="cpu", help="cuda: measure the COCO-5K scoring time on a GPU")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = {"threads": args.threads, "pairs": COCO5K_PAIRS, "gpu_peak_flops": H200_BF16_DENSE,
              "gpu_bytes_per_s": H200_BYTES_PER_S, "utilisation": UTILISATION, "device": args.device}
    result["models"] = measure_each(args.configs, lambda name: estimate(name, args.budget, args.device), width=16)
    return save_json(result, args.json)


if __name__ == "__main__":
    main()
