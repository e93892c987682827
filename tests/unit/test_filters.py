"""The filter language: parsing against a binding's fields, and evaluating on a row as SQL does
(tests/integration/test_filters_agree.py checks both sides on a real database)."""

import datetime
import decimal
from typing import Any

import pytest

from pgbinding import filters
from pgbinding.exceptions import RequestError
from tests.testapp.bindings import ItemBinding

FIELDS = ItemBinding.serialized_fields()


def parse(spec: Any) -> list[filters.Condition]:
    return filters.parse(spec, FIELDS)


def test_operators_and_defaults() -> None:
    [c] = parse({"value__gte": "3"})
    assert (c.field.name, c.op, c.value) == ("value", "gte", 3)
    [c] = parse({"name": "a"})
    assert c.op == "exact"
    assert parse(None) == []


def test_values_are_converted_like_the_orm() -> None:
    [c] = parse({"price__lt": "1.5"})
    assert c.value == decimal.Decimal("1.5")
    [c] = parse({"due__lt": "2030-01-01T00:00:00"})
    assert c.value == datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)  # naive: current zone


@pytest.mark.parametrize(
    ("spec", "key"),
    [
        ({"secret": "x"}, "secret"),
        ({"extra": {}}, "extra"),
        ({"value__regex": "x"}, "value__regex"),
        ({"value__in": "1,2"}, "value__in"),
        ({"value__contains": "1"}, "value__contains"),
        ({"value__gt": float("inf")}, "value__gt"),
        ({"name__isnull": "yes"}, "name__isnull"),
    ],
)
def test_bad_filters_are_400_with_the_key(spec: Any, key: str) -> None:
    with pytest.raises(filters.FilterError) as info:
        parse(spec)
    assert isinstance(info.value, RequestError) and info.value.status == 400
    assert key in info.value.errors


def test_matching_follows_sql() -> None:
    row = {"name": "B", "value": None, "price": decimal.Decimal("NaN")}
    assert filters.matches(parse({"name__lt": "a"}), row)  # code point order, as COLLATE "C"
    assert not filters.matches(parse({"value__in": [1, 2]}), row)  # IN never matches NULL
    assert not filters.matches(parse({"value__lt": 5}), row)  # NULL compares false
    assert filters.matches(parse({"value__isnull": True}), row)
    assert filters.matches(parse({"price__gt": 10**9}), row)  # NaN above every number
    assert not filters.matches(parse({"price__lt": 0}), row)
    assert filters.matches(parse({"name__contains": "B"}), row)
    assert filters.matches([], row)
