"""A tiny name -> object registry, so that names in configs never become if/elif chains."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from itm.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects (builders, classes, functions); unknown names give a one-line error."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._help: dict[str, str] = {}

    def register(self, name: str, help: str = "") -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            self.add(name, obj, help)
            return obj

        return decorator

    def add(self, name: str, obj: T, help: str = "") -> None:
        if name in self._items:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        self._items[name] = obj
        self._help[name] = help or (getattr(obj, "__doc__", "") or "").strip().split("\n")[0]

    def remove(self, name: str) -> None:
        """Forget ``name`` (a test that registers its own entry cleans up after itself)."""
        self._items.pop(name, None)
        self._help.pop(name, None)

    def get(self, name: str) -> T:
        if name not in self._items:
            raise ConfigError(f"unknown {self.kind} '{name}' (known: {', '.join(sorted(self._items))})")
        return self._items[name]

    def help(self, name: str) -> str:
        return self._help[name]

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)
