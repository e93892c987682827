"""Which bindings exist: by table (for the listener), by stream (for the consumer), by model."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

from django.db import models

if TYPE_CHECKING:
    from .bindings import Binding


class Registry:
    """Every concrete binding class, in declaration order."""

    def __init__(self) -> None:
        self._bindings: list[type[Binding]] = []
        #: Bumped on every change, so callers can cache what they derive from the registry.
        self.version = 0

    def register(self, binding: type[Binding]) -> None:
        # A module imported twice (or a class re-declared in a test) replaces the old one.
        key = (binding.__module__, binding.__qualname__)
        self._bindings = [b for b in self._bindings if (b.__module__, b.__qualname__) != key] + [
            binding
        ]
        self.version += 1

    def unregister(self, binding: type[Binding]) -> None:
        self._bindings = [b for b in self._bindings if b is not binding]
        self.version += 1

    def all(self) -> list[type[Binding]]:
        return list(self._bindings)

    def by_table(self) -> dict[str, list[type[Binding]]]:
        tables: dict[str, list[type[Binding]]] = defaultdict(list)
        for binding in self._bindings:
            tables[binding.model._meta.db_table].append(binding)
        return dict(tables)

    def for_model(self, model: type[models.Model]) -> list[type[Binding]]:
        label = model._meta.label_lower
        return [b for b in self._bindings if b.model._meta.label_lower == label]

    def models(self) -> list[type[models.Model]]:
        seen: dict[str, type[models.Model]] = {}
        for binding in self._bindings:
            seen.setdefault(binding.model._meta.label_lower, binding.model)
        return list(seen.values())

    def by_stream(self, stream: str) -> type[Binding] | None:
        for binding in self._bindings:
            if binding.stream == stream:
                return binding
        return None


registry = Registry()
