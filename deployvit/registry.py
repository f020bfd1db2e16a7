"""Registries of named implementations: search scores, search methods, training samplers.

One shape for each (torchao's: a handler found by its key): a `Registry` of torch-free records, each
naming its implementation as "module:attribute", imported on first use like `cli.COMMANDS`. The
command line's choices and help, the config checks and the dispatch all read the same registry, so
a new implementation is its module plus one record, and `deployvit search --help` lists the scores
without importing torch. An unknown name is one line naming the choices.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Generic, Iterable, Iterator, TypeVar

from deployvit.errors import DeployvitError


@dataclass(frozen=True)
class Entry:
    """A registered implementation: its key, where it lives ("module:attribute") and one line of help."""

    name: str
    target: str
    help: str

    def load(self) -> Any:
        """The implementation (a class or factory), importing its module now."""
        module, _, attribute = self.target.partition(":")
        return getattr(importlib.import_module(module), attribute)


E = TypeVar("E", bound=Entry)


class Registry(Generic[E]):
    """Records by name, in registration order; `kind` names them in errors ("unknown score 'x'")."""

    def __init__(self, kind: str, entries: Iterable[E] = ()):
        self.kind = kind
        self._entries: dict[str, E] = {}
        for entry in entries:
            self.register(entry)

    def register(self, entry: E) -> E:
        if entry.name in self._entries:
            raise DeployvitError(f"{self.kind} {entry.name!r} is registered twice")
        self._entries[entry.name] = entry
        return entry

    def __getitem__(self, name: str) -> E:
        try:
            return self._entries[name]
        except KeyError:
            raise DeployvitError(f"unknown {self.kind} {name!r} (choose from {', '.join(self._entries)})") from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def describe(self) -> str:
        """'a: what a is; b: what b is' for help texts."""
        return "; ".join(f"{e.name}: {e.help}" for e in self._entries.values())
