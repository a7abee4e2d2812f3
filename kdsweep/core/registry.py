"""Name -> builder registries, so YAML picks parts by name and typos fail at validation.

A registry may be given its names up front, by the module that registers each (``declared``):
those names are known (``in``, ``names()``) without importing that module, which is imported on
the first ``get``. This is what keeps ``kdsweep study validate`` from importing torch (~4 s,
~700 MB): a spec's model and data set names are checked against the declarations alone.
"""

from __future__ import annotations

import importlib
from typing import Callable, Generic, Mapping, Sequence, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A dict of named builders that refuses duplicates and names the choices on a miss."""

    def __init__(self, kind: str, declared: Mapping[str, Sequence[str]] | None = None) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        # name -> the module whose import registers it (loaded on the first get)
        self._declared = {name: module for module, names in (declared or {}).items() for name in names}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        if name not in self._items and name in self._declared:
            importlib.import_module(self._declared[name])
        if name not in self._items:
            raise ValueError(f"unknown {self.kind} {name!r}; choose from {self.names()}")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted({*self._items, *self._declared})

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._declared

    def load_all(self) -> list[str]:
        """Import every declaring module; returns the declared names none of them registered."""
        for module in dict.fromkeys(self._declared.values()):
            importlib.import_module(module)
        return sorted(set(self._declared) - set(self._items))
