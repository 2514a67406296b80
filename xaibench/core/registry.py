"""The one registry type used for models, methods and metrics."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from xaibench.core.errors import UnknownNameError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    help: str


class Registry(Generic[T]):
    """Names to objects. Duplicate names raise; unknown names raise with close matches."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, help: str = "") -> Callable[[T], T]:
        """Decorator: `@registry.register("gradcam", help="...")`."""

        def add(obj: T) -> T:
            self.add(name, obj, help)
            return obj

        return add

    def add(self, name: str, obj: T, help: str = "") -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        doc = help or (getattr(obj, "__doc__", None) or "").strip().splitlines()[:1]
        self._entries[name] = Entry(name, obj, doc if isinstance(doc, str) else "".join(doc))

    def get(self, name: str, *, param: str | None = None) -> T:
        """The object registered as `name`; UnknownNameError (naming `param`) if there is none."""
        try:
            return self._entries[name].obj
        except KeyError:
            raise UnknownNameError(self.kind, name, self._entries, param=param) from None

    def entry(self, name: str) -> Entry[T]:
        self.get(name)
        return self._entries[name]

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching a shell-style wildcard, in registration order."""
        return [n for n in self._entries if fnmatch.fnmatchcase(n, pattern)]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)
