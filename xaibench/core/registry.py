"""The one registry type used for models, methods and metrics.

Besides the names registered one by one, a registry can hold families of names made on demand: every
name `PREFIX.NAME` of a family (`Registry.add_family`) is built by the family when first asked for,
e.g. `quantus.Sparseness` for a metric of the Quantus library.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from xaibench.core.errors import UnknownNameError, XaibenchError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    help: str


@dataclass(frozen=True)
class Family(Generic[T]):
    """Names `prefix` + NAME made on demand: `make(name)` builds the object of a full name (and
    raises ConfigError for one it cannot make); `names()` lists the names it makes, for listings and
    close matches, without building them; `help` describes the family."""

    prefix: str
    make: Callable[[str], T]
    names: Callable[[], Sequence[str]]
    help: str


class Registry(Generic[T]):
    """Names to objects. Duplicate names raise; unknown names raise with close matches."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        self._families: dict[str, Family[T]] = {}
        self._made: dict[str, Entry[T]] = {}

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

    def add_family(
        self,
        prefix: str,
        make: Callable[[str], T],
        names: Callable[[], Sequence[str]],
        help: str = "",
    ) -> None:
        """Make every name starting with `prefix` (e.g. "quantus.") on demand (`Family`)."""
        if prefix in self._families:
            raise ValueError(f"{self.kind} family {prefix!r} is registered twice")
        self._families[prefix] = Family(prefix, make, names, help)

    def get(self, name: str, *, param: str | None = None) -> T:
        """The object registered as `name`, or made by the family of its prefix (once, then kept);
        UnknownNameError (naming `param`) if there is none, the family's error (naming `param`)
        for a name it cannot make."""
        return self.entry(name, param=param).obj

    def entry(self, name: str, *, param: str | None = None) -> Entry[T]:
        if name in self._entries:
            return self._entries[name]
        family = self._family_of(name)
        if family is None:
            known = [*self._entries, *self.family_names()]
            raise UnknownNameError(self.kind, name, known, param=param)
        if name not in self._made:
            try:
                obj = family.make(name)
            except XaibenchError as error:
                error.param = error.param or param
                raise
            self._made[name] = Entry(name, obj, getattr(obj, "help", "") or family.help)
        return self._made[name]

    def _family_of(self, name: str) -> Family[T] | None:
        return next((f for p, f in self._families.items() if name.startswith(p)), None)

    def family_names(self, pattern: str = "*") -> list[str]:
        """The names the families make that match a shell-style wildcard (none is made)."""
        names = [n for family in self._families.values() for n in family.names()]
        return [n for n in names if fnmatch.fnmatchcase(n, pattern)]

    def families(self) -> list[Family[T]]:
        return list(self._families.values())

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching a shell-style wildcard, in registration order (the
        families' names are `family_names`)."""
        return [n for n in self._entries if fnmatch.fnmatchcase(n, pattern)]

    def __contains__(self, name: object) -> bool:
        """Registered, or among the names of its family."""
        if name in self._entries:
            return True
        family = self._family_of(name) if isinstance(name, str) else None
        return family is not None and name in family.names()

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)
