"""The one registry type used for models, methods and metrics.

Besides names registered one by one, a registry can hold families: every name that starts with a
family's prefix (`captum.` + a class of an optional library) is resolved on first use by the
family's resolver and remembered, so the library behind it is imported only when one of its names
is asked for.
"""

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


@dataclass(frozen=True)
class Family(Generic[T]):
    """Names `prefix + MEMBER`, resolved on demand.

    resolve(member, param): the object named `prefix + member`, or None when there is no such
    member; it raises ConfigError (naming `param`) when the family cannot be used (its library is
    not installed). members(): every member's name, which may import the library.
    `placeholder` is how listings write the family as one name (`captum.CLASS`).
    """

    prefix: str
    resolve: Callable[[str, str | None], T | None]
    members: Callable[[], list[str]]
    help: str
    placeholder: str


def _help_of(obj: object, help: str) -> str:
    return help or "".join((getattr(obj, "__doc__", None) or "").strip().splitlines()[:1])


class Registry(Generic[T]):
    """Names to objects. Duplicate names raise; unknown names raise with close matches."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        self._families: dict[str, Family[T]] = {}
        self._resolved: dict[str, Entry[T]] = {}

    def register(self, name: str, help: str = "") -> Callable[[T], T]:
        """Decorator: `@registry.register("gradcam", help="...")`."""

        def add(obj: T) -> T:
            self.add(name, obj, help)
            return obj

        return add

    def add(self, name: str, obj: T, help: str = "") -> None:
        if name in self._entries or self.family_of(name) is not None:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = Entry(name, obj, _help_of(obj, help))

    def add_family(
        self,
        prefix: str,
        resolve: Callable[[str, str | None], T | None],
        members: Callable[[], list[str]],
        help: str,
        placeholder: str = "CLASS",
    ) -> None:
        """Every name `prefix + MEMBER` resolves through `resolve` (`Family`); ValueError when a
        registered name or another family's prefix overlaps `prefix`."""
        clashes = [n for n in [*self._entries, *self._families] if n.startswith(prefix)]
        if clashes or self.family_of(prefix) is not None:
            raise ValueError(f"{self.kind} family {prefix!r} overlaps {clashes or 'a family'}")
        self._families[prefix] = Family(prefix, resolve, members, help, prefix + placeholder)

    def family_of(self, name: str) -> Family[T] | None:
        """The family whose prefix `name` starts with, or None."""
        return next((f for p, f in self._families.items() if name.startswith(p)), None)

    def get(self, name: str, *, param: str | None = None) -> T:
        """The object registered as `name`, or resolved by its family (the same object each
        time); UnknownNameError (naming `param`) if there is none, with the family's close names
        for a family's name."""
        return self.entry(name, param=param).obj

    def entry(self, name: str, *, param: str | None = None) -> Entry[T]:
        if name in self._entries:
            return self._entries[name]
        if name in self._resolved:
            return self._resolved[name]
        family = self.family_of(name)
        if family is None:
            raise UnknownNameError(self.kind, name, self._entries, param=param)
        obj = family.resolve(name[len(family.prefix) :], param)
        if obj is None:
            known = [family.prefix + member for member in family.members()]
            listing = f"{self.kind}s '{family.prefix}*'"
            raise UnknownNameError(self.kind, name, known, param=param, listing=listing)
        self._resolved[name] = Entry(name, obj, _help_of(obj, ""))
        return self._resolved[name]

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching a shell-style wildcard, in registration order.

        A pattern that starts with a family's prefix (`captum.*`, `captum.Layer*`) matches that
        family's members instead, which may import its library; other patterns never list
        members (`families` lists the families themselves).
        """
        family = self.family_of(pattern)
        if family is not None:
            members = [family.prefix + member for member in family.members()]
            return [n for n in members if fnmatch.fnmatchcase(n, pattern)]
        return [n for n in self._entries if fnmatch.fnmatchcase(n, pattern)]

    def families(self, pattern: str = "*") -> list[Family[T]]:
        """The families whose placeholder (`captum.CLASS`) matches the wildcard `pattern`."""
        return [f for f in self._families.values() if fnmatch.fnmatchcase(f.placeholder, pattern)]

    def knows(self, name: str) -> bool:
        """Whether `name` is registered or a member of its family (which may import the family's
        library): the check for a table's column that holds a family's metric."""
        if name in self._entries or name in self._resolved:
            return True
        family = self.family_of(name)
        return family is not None and name[len(family.prefix) :] in family.members()

    def __contains__(self, name: object) -> bool:
        """Whether `name` is registered one by one (family names are not looked up here)."""
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)
