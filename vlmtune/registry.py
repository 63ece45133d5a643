"""Exact-key registries: one per conf group, so `conf/<group>/<key>.yaml` and the code agree by name."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from vlmtune.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> value table that refuses unknown names with the list of valid ones (no substring matching)."""

    def __init__(self, config_key: str) -> None:
        self.config_key = config_key  # the config key users set to pick an entry, named in errors
        self._entries: dict[str, T] = {}

    def add(self, name: str, value: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.config_key}: {name!r} is registered twice")  # a bug in vlmtune, not the user's
        self._entries[name] = value
        return value

    def register(self, name: str):
        """Decorator form of `add`."""

        def decorator(value: T) -> T:
            return self.add(name, value)

        return decorator

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            valid = ", ".join(sorted(self._entries))
            raise ConfigError(f"{self.config_key}={name!r} is not known; valid values: {valid}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))
