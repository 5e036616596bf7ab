"""What every fuzz test checks, and the fixed example budget they share.

The property (issue 23): a reader either returns sane output or raises an ``ItmError`` subclass
whose message is one line naming the input. Any other exception type, or a multi-line message,
is an escape: the CLI would show a traceback (or a broken error line) to the user.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from itm.errors import ItmError

T = TypeVar("T")

# Examples per fuzz test (scaled per test): the suite takes ~40 s on two cores, CI allows 2 minutes.
# Raise it for a longer hunt, e.g. ITM_FUZZ_EXAMPLES=2000 pytest tests/fuzz
EXAMPLES = int(os.environ.get("ITM_FUZZ_EXAMPLES", "200"))


def budget(scale: float = 1.0) -> settings:
    """Fixed, reproducible hypothesis settings: ``scale`` x the suite's example budget."""
    return settings(max_examples=max(1, int(EXAMPLES * scale)), deadline=None, derandomize=True,
                    database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                          HealthCheck.function_scoped_fixture])


def assert_user_error(error: BaseException, *names: str) -> None:
    """``error`` is an ItmError with a one-line message that names every one of ``names``."""
    assert isinstance(error, ItmError), f"{type(error).__name__} escaped: {error!r}"
    message = str(error)
    assert len(message.splitlines()) == 1, f"message is not one line: {message!r}"
    for name in names:
        assert name in message, f"message does not name {name!r}: {message!r}"


def result_or_user_error(read: Callable[[], T], *names: str) -> T | None:
    """``read()``'s result, or None when it failed as ``assert_user_error`` requires."""
    try:
        return read()
    except Exception as exc:  # noqa: BLE001 - any other type is exactly what these tests hunt for
        assert_user_error(exc, *names)
        return None


def cut(draw, data: bytes) -> bytes:
    """``data`` cut at any offset, 0 included (a copy or download that stopped)."""
    return data[: draw(st.integers(0, len(data)))]


def flip(draw, data: bytes, most: int = 1) -> bytes:
    """``data`` with 1 to ``most`` of its bytes XOR-ed with a non-zero value."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, most))):
        out[draw(st.integers(0, len(out) - 1))] ^= draw(st.integers(1, 255))
    return bytes(out)
