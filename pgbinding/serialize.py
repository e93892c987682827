"""Model values to what messages and events carry: each field as Django's serializers write it
(:func:`json_value`), and the exact values filters and read rules judge rows by
(:func:`wire_value` / :func:`from_wire`). Everything returned is a plain value (str, int,
float, bool, None, lists and dicts of them) that every channel layer can carry."""

from __future__ import annotations

import datetime
import decimal
import json
import math
import uuid
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.db.models.fields import Field
from django.db.models.fields.json import JSONField
from django.utils.encoding import is_protected_type

_encoder = DjangoJSONEncoder()

# -- model values to JSON -------------------------------------------------------------------------

#: Django's serializers keep these as they are (``is_protected_type``); the JSON encoder then
#: writes the ones below as strings.
_ENCODED = (datetime.datetime, datetime.date, datetime.time, decimal.Decimal)


def _float(value: float) -> float | str:
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def json_value(field: Field[Any, Any], value: Any) -> Any:
    """One field's value as a JSON-ready value, the way Django's serializers write it
    (``serializers.serialize("json", ...)``): protected types kept and encoded by
    ``DjangoJSONEncoder`` (datetimes to the millisecond, UTC as ``Z``; decimals as strings),
    everything else through ``field.value_to_string``. Non-finite floats, which JSON cannot
    hold, become the strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"``."""
    if isinstance(field, JSONField):
        return _carriable(value)
    if value is None or type(value) is str or type(value) is bool or type(value) is int:
        return value
    if isinstance(value, float):
        return _float(value)
    if is_protected_type(value):
        return _encoder.default(value) if isinstance(value, _ENCODED) else value
    if isinstance(value, uuid.UUID):
        return str(value)
    try:
        return field.value_to_string(_Holder(field, value))  # type: ignore[arg-type]
    except Exception:  # a fallback value (or element, or bound) the field cannot format
        return _to_string(field, value)


#: The integers every channel layer carries (msgpack: 64 bits).
_INT_RANGE = (-(2**63), 2**64 - 1)


def _carriable(value: Any) -> Any:
    """A JSON field's value with integers beyond 64 bits as floats (only jsonb can hold them;
    msgpack, which channels-redis uses, cannot carry them; JavaScript reads both alike)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if _INT_RANGE[0] <= value <= _INT_RANGE[1] else float(value)
    if isinstance(value, dict):
        return {k: _carriable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_carriable(v) for v in value]
    return value


def _to_string(field: Field[Any, Any], value: Any) -> Any:
    """``value_to_string`` as Django writes arrays and ranges, with any element or bound the
    base field cannot format written as it is (the text Postgres logged)."""
    kind = field.get_internal_type()
    base = getattr(field, "base_field", None)
    if kind == "ArrayField" and base is not None and isinstance(value, list):
        return json.dumps([None if v is None else _element(base, v) for v in value])
    if kind.endswith("RangeField") and base is not None and hasattr(value, "lower"):
        if getattr(value, "isempty", False):
            return json.dumps({"empty": True})
        result: dict[str, Any] = {"bounds": value._bounds}
        for end in ("lower", "upper"):
            bound = getattr(value, end)
            result[end] = None if bound is None else _element(base, bound)
        return json.dumps(result)
    return value if isinstance(value, str) else wire_value(value)


def _element(base: Field[Any, Any], value: Any) -> Any:
    if base.get_internal_type() == "ArrayField" and isinstance(value, list):
        return _to_string(base, value)
    if isinstance(value, str) and not isinstance(base, models.CharField | models.TextField):
        return value  # a fallback: the text Postgres logged
    try:
        return base.value_to_string(_Holder(base, value))  # type: ignore[arg-type]
    except Exception:
        return value if isinstance(value, str) else wire_value(value)


class _Holder:
    """Just enough of a model instance for ``Field.value_to_string``."""

    def __init__(self, field: Field[Any, Any], value: Any) -> None:
        setattr(self, field.attname, value)


# -- exact values for filters and rules --------------------------------------------------------

#: Types whose serialized form loses precision (Django writes datetimes and times to the
#: millisecond): filters and rules need the exact value, so messages carry it as well.
LOSSY = (models.DateTimeField, models.TimeField)


def wire_value(value: Any) -> Any:
    """A value as a plain (msgpack- and JSON-safe) value that :func:`from_wire` reads back
    exactly."""
    if value is None or isinstance(value, str | int | bool):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, datetime.timedelta):
        return [value.days, value.seconds, value.microseconds]
    return json.loads(json.dumps(value, cls=DjangoJSONEncoder))


def from_wire(field: Field[Any, Any], value: Any) -> Any:
    """The Python value of ``field`` from :func:`wire_value` or from serialized data."""
    if value is None:
        return None
    target = field.target_field if isinstance(field, models.ForeignKey) else field
    if isinstance(target, models.DecimalField) and isinstance(value, str):
        try:
            return decimal.Decimal(value)
        except decimal.InvalidOperation:
            return value
    if isinstance(target, models.FloatField) and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    if isinstance(target, models.DurationField) and isinstance(value, list):
        return datetime.timedelta(*value)
    if isinstance(target, JSONField):
        return value
    try:
        return target.to_python(value)
    except Exception:
        return value
