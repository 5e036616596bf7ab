"""Where itm computes (``--device``) and at which precision (``eval.precision`` / ``train.precision``).

``resolve_device`` is the one place a device name becomes a ``torch.device``: commands call it with
their ``--device`` value, library functions take the result. ``precision_context`` is the one place
bf16 autocast is switched on; scores and losses leave it as float32 where callers keep them.
"""

from __future__ import annotations

import os
import re
from contextlib import AbstractContextManager, nullcontext

import torch

from itm.config import PRECISIONS
from itm.data.types import Captions
from itm.errors import ItmError, shown

_NAME = re.compile(r"(cpu|cuda)(?::(\d+))?")


def default_device_name() -> str:
    """``cuda`` when a GPU is usable, else ``cpu`` (the ``--device`` default)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(name: str | None = None) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N`` (None: the default) as a torch.device; one-line ItmError naming
    ``--device`` otherwise. Under torchrun ``cuda`` is ``cuda:LOCAL_RANK``: one GPU per process."""
    from itm.distributed import launched

    text = default_device_name() if name is None else name
    match = _NAME.fullmatch(text.strip().lower()) if isinstance(text, str) else None
    if match is None:
        raise ItmError(f"--device {shown(text)}: expected cpu, cuda or cuda:N")
    kind, index = match.group(1), match.group(2)
    if kind == "cpu":
        if index is not None:
            raise ItmError(f"--device {shown(text)}: the CPU takes no index; use cpu")
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ItmError(f"--device {shown(text)}: CUDA is not available here (torch {torch.__version__}); use --device cpu")
    count = torch.cuda.device_count()
    if launched():
        if index is not None:  # NCCL refuses two processes on one GPU
            raise ItmError(f"--device {shown(text)}: under torchrun each process uses cuda:LOCAL_RANK; use --device cuda")
        index = os.environ.get("LOCAL_RANK", "0")
        where = f"LOCAL_RANK {index}"
    else:
        index = torch.cuda.current_device() if index is None else index
        where = f"cuda:{index}"
    if int(index) >= count:
        raise ItmError(f"--device {shown(text)}: {where} is out of range ({count} GPU{'s' * (count != 1)} visible)")
    return torch.device("cuda", int(index))


def as_device(device: torch.device | str | None) -> torch.device:
    """A library argument as a torch.device: None is the CPU (library calls keep their old behaviour;
    the commands' default comes from ``resolve_device``)."""
    return torch.device("cpu") if device is None else torch.device(device)


def check_precision(value: str, where: str) -> str:
    if value not in PRECISIONS:
        raise ItmError(f"{where} {shown(value)}: expected one of {', '.join(PRECISIONS)}")
    return value


def precision_context(device: torch.device, precision: str = "fp32") -> AbstractContextManager:
    """bf16 autocast on ``device`` for ``bf16``, nothing for ``fp32``. Autocast runs matmuls and
    recurrences in bf16 and keeps reductions such as softmax and norms in float32."""
    if check_precision(precision, "precision") == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device a model's weights live on (the one its inputs must be moved to)."""
    return next(model.parameters()).device


def on_device(captions: Captions, device: torch.device) -> Captions:
    """Encoded captions (ids, lengths, word vectors if any) on ``device``."""
    vectors = None if captions.vectors is None else captions.vectors.to(device)
    return Captions(captions.ids.to(device), captions.lengths.to(device), vectors)
