"""The filter language of ``list`` and ``subscribe``: ``{"field__op": value}``.

Operators: ``exact`` (the default), ``in``, ``lt``, ``lte``, ``gt``, ``gte``, ``isnull`` and
``contains`` (substring, case-sensitive, text fields only). Only the binding's whitelisted
fields can be filtered. The same conditions run as SQL (``list``, subscription snapshots) and in
Python (live subscription events), and give the same answer: text is compared by code point on
both sides (SQL compares it under the "C" collation, whatever the column's collation), and
``contains`` is refused where SQL and Python would read it differently.
"""

from __future__ import annotations

import datetime
import decimal
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import F, Q, lookups
from django.db.models.fields import Field
from django.db.models.fields.json import JSONField
from django.db.models.functions import Collate
from django.utils import timezone

from .exceptions import RequestError

OPERATORS = ("exact", "in", "lt", "lte", "gt", "gte", "isnull", "contains")
MAX_CONDITIONS = 20
MAX_IN_VALUES = 1000

_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "lt": operator.lt,
    "lte": operator.le,
    "gt": operator.gt,
    "gte": operator.ge,
}
_LOOKUPS: dict[str, type[lookups.Lookup[Any]]] = {
    "lt": lookups.LessThan,
    "lte": lookups.LessThanOrEqual,
    "gt": lookups.GreaterThan,
    "gte": lookups.GreaterThanOrEqual,
}
#: Field classes whose values are text on both sides (SQL and Python).
_TEXT = (models.CharField, models.TextField)


def _is_text(field: Field[Any, Any]) -> bool:
    return isinstance(field, _TEXT)


#: Field types a filter may name: scalars that compare the same way in SQL and in Python.
_FILTERABLE = (
    models.CharField,
    models.TextField,
    models.IntegerField,
    models.DecimalField,
    models.FloatField,
    models.BooleanField,
    models.DateField,
    models.TimeField,
    models.DurationField,
    models.UUIDField,
)


def filterable(field: Field[Any, Any]) -> bool:
    target = field.target_field if isinstance(field, models.ForeignKey) else field
    return isinstance(target, _FILTERABLE) and not isinstance(target, JSONField)


def _is_nan(value: Any) -> bool:
    if isinstance(value, float):
        return math.isnan(value)
    return isinstance(value, decimal.Decimal) and value.is_nan()


class FilterError(RequestError):
    """A filter the client sent is not valid (400); ``errors`` maps each key to its problem."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__(400, errors)


@dataclass(frozen=True, slots=True)
class Condition:
    field: Field[Any, Any]
    op: str
    value: Any

    def q(self) -> Q:
        if self.op in _COMPARE and _is_text(self.field):
            # Code-point order, as Python compares str, whatever the column's collation.
            lookup = _LOOKUPS[self.op]
            return Q(lookup(Collate(F(self.field.attname), "C"), self.value))
        return Q(**{f"{self.field.attname}__{self.op}": self.value})

    def matches(self, row: Mapping[str, Any]) -> bool:
        """Does a row ({attname: value}) satisfy this condition?"""
        actual = row.get(self.field.attname)
        if self.op == "isnull":
            return (actual is None) is self.value
        if self.op == "exact":
            return bool(actual == self.value)
        if self.op == "in":
            # SQL's IN never matches NULL.
            return actual is not None and actual in self.value
        if actual is None:
            return False
        if self.op == "contains":
            return isinstance(actual, str) and self.value in actual
        if _is_nan(actual):
            # Postgres sorts NaN above every number (and Infinity).
            return self.op in ("gt", "gte")
        try:
            return _COMPARE[self.op](actual, self.value)
        except TypeError:
            return False


def parse(spec: Any, fields: Sequence[Field[Any, Any]]) -> list[Condition]:
    """Check a client's filter against the whitelisted ``fields`` and convert its values."""
    if spec is None:
        return []
    if not isinstance(spec, dict):
        raise FilterError(
            {"filter": [f"must be an object like {{'status': 'open'}}, got {spec!r}"]}
        )
    if len(spec) > MAX_CONDITIONS:
        raise FilterError({"filter": [f"at most {MAX_CONDITIONS} conditions"]})
    by_name = {f.name: f for f in fields}
    errors: dict[str, list[str]] = {}
    out: list[Condition] = []
    for key, raw in spec.items():
        name, _, op = str(key).partition("__")
        op = op or "exact"
        field = by_name.get(name)
        if field is None or not filterable(field):
            allowed = ", ".join(n for n, f in by_name.items() if filterable(f))
            errors[key] = [f"{name!r} is not a filterable field; filterable: {allowed}"]
            continue
        if op not in OPERATORS:
            errors[key] = [f"unknown operator {op!r}; use one of {', '.join(OPERATORS)}"]
            continue
        try:
            out.append(Condition(field, op, _value(field, op, raw)))
        except (ValidationError, TypeError, ValueError) as exc:
            errors[key] = [_message(exc)]
    if errors:
        raise FilterError(errors)
    return out


def _value(field: Field[Any, Any], op: str, raw: Any) -> Any:
    if op == "isnull":
        if not isinstance(raw, bool):
            raise TypeError(f"isnull takes true or false, got {raw!r}")
        return raw
    if op == "in":
        if not isinstance(raw, list) or len(raw) > MAX_IN_VALUES:
            raise TypeError(f"in takes a list of at most {MAX_IN_VALUES} values, got {raw!r}")
        return [_scalar(field, v) for v in raw]
    if op == "contains":
        if not _is_text(field):
            raise TypeError(f"contains works on text fields only; {field.name!r} is not one")
        if not isinstance(raw, str):
            raise TypeError(f"contains takes a string, got {raw!r}")
        return raw
    return _scalar(field, raw)


def _scalar(field: Field[Any, Any], raw: Any) -> Any:
    if isinstance(raw, dict | list):
        raise TypeError(f"expected a single value, got {raw!r}")
    if isinstance(raw, float) and not math.isfinite(raw):
        raise TypeError(f"expected a finite number, got {raw!r}")
    target = field.target_field if isinstance(field, models.ForeignKey) else field
    value = target.to_python(raw)
    if _is_nan(value) or (isinstance(value, float) and not math.isfinite(value)):
        raise TypeError(f"expected a finite number, got {raw!r}")
    if isinstance(value, datetime.datetime) and settings.USE_TZ and timezone.is_naive(value):
        # As the ORM would read it: in the current time zone. Then SQL and the live check
        # compare the same aware value.
        value = timezone.make_aware(value)
    return value


def _message(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(str(m) for m in exc.messages)
    return str(exc)


def matches(conditions: Sequence[Condition], row: Mapping[str, Any]) -> bool:
    """Does a row ({attname: value}) satisfy every condition?"""
    return all(c.matches(row) for c in conditions)


def to_q(conditions: Sequence[Condition]) -> Q:
    q = Q()
    for condition in conditions:
        q &= condition.q()
    return q
