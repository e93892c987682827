"""A filter means the same in SQL (``list``, subscription snapshots) and in Python (live
subscription events): a row enters or leaves a live filtered view exactly when ``list`` with the
same filter would include or exclude it. Checked for every operator on the same rows, with the
text column under a linguistic (non-C) collation, where "B" sorts before "a" only by code point.
"""

from __future__ import annotations

import datetime
import decimal
import os
from collections.abc import Iterator
from typing import Any, cast

import pytest
from django.db import connection

from pgbinding import filters
from pgbinding.bindings import row_python
from tests.testapp.bindings import ItemBinding
from tests.testapp.models import Item

pytestmark = pytest.mark.django_db(transaction=True)

COLLATION = "pgbinding_test_en"
# (U+0131 and U+0130: dotless i and dotted capital I)
NAMES = ["", "a", "A", "b", "B", "é", "e", "Z", "zz", "a b", "10", "9", "ß", "\u0131", "\u0130"]


def _create_collation() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                f'CREATE COLLATION IF NOT EXISTS "{COLLATION}"'
                " (provider = libc, locale = 'en_US.UTF-8')"
            )
            cursor.execute(f"SELECT 'a' < 'B' COLLATE \"{COLLATION}\"")
            return bool(cast(tuple[Any, ...], cursor.fetchone())[0])  # a comparison: one row
    except Exception:
        return False


@pytest.fixture
def linguistic_name_column() -> Iterator[None]:
    """testapp_item.name under an English collation (libc en_US.UTF-8, compiled with
    localedef when the machine lacks it and we may)."""
    if not _create_collation():
        # scripts/test compiles the locale (localedef) before Postgres starts: a running
        # server does not see locales added after it started.
        message = (
            "no en_US.UTF-8 locale for a non-C collation: run `localedef -i en_US -f UTF-8 "
            "en_US.UTF-8` as root before the tests start Postgres (scripts/test does)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    with connection.cursor() as cursor:
        cursor.execute(
            f'ALTER TABLE testapp_item ALTER COLUMN name TYPE varchar(100) COLLATE "{COLLATION}"'
        )
    yield
    with connection.cursor() as cursor:
        cursor.execute('ALTER TABLE testapp_item ALTER COLUMN name TYPE varchar(100) COLLATE "C"')


def make_rows() -> list[Item]:
    base = datetime.datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=datetime.UTC)
    items = []
    for n, name in enumerate(NAMES):
        items.append(
            Item.objects.create(
                name=name,
                value=n - 5,
                status=["open", "done", "Open"][n % 3],
                price=decimal.Decimal(n) / 3,
                due=None if n % 4 == 0 else base + datetime.timedelta(microseconds=n * 333),
                day=None if n % 5 == 0 else datetime.date(2026, 1, 1 + n),
                body=f"line {name} {n}",
            )
        )
    return items


SPECS: list[dict[str, Any]] = [
    {"name": "a"},
    {"name__lt": "a"},
    {"name__lte": "B"},
    {"name__gt": "Z"},
    {"name__gte": "é"},
    {"name__lt": "\u0131"},
    {"name__in": ["a", "B", "ß", "nope"]},
    {"name__contains": "a"},
    {"name__contains": ""},
    {"name__isnull": False},
    {"body__contains": "é"},
    {"status": "open"},
    {"status__gt": "Open"},
    {"value": 0},
    {"value__lt": 0},
    {"value__lte": -5},
    {"value__gt": 3},
    {"value__gte": 9},
    {"value__in": [-5, 0, 7, 100]},
    {"price__gt": "1.3333"},
    {"price__lte": 2},
    {"price__in": ["0", "1"]},
    {"due__isnull": True},
    {"due__gt": "2026-01-01T12:00:00.123456Z"},
    {"due__lt": "2026-01-01T12:00:00.125"},  # naive: the current time zone (UTC)
    {"due__gte": "2026-01-01T12:00:00.124788+00:00"},
    {"day__lt": "2026-01-05"},
    {"day__isnull": True},
    {"day__in": ["2026-01-02", "2026-01-08"]},
    {"name__lt": "b", "value__gt": -3},
]


@pytest.mark.parametrize(
    "spec", SPECS, ids=lambda spec: ",".join(f"{k}={v}" for k, v in spec.items())
)
def test_sql_and_live_evaluation_agree(linguistic_name_column: None, spec: dict[str, Any]) -> None:
    make_rows()
    items = list(Item.objects.all())  # as stored (decimals at the column's scale)
    binding = ItemBinding(user=None)
    conditions = filters.parse(spec, ItemBinding.serialized_fields())
    in_sql = set(Item.objects.filter(filters.to_q(conditions)).values_list("pk", flat=True))
    # Live: judged on the row as a subscription change message carries it.
    live = {
        item.pk
        for item in items
        if filters.matches(conditions, row_python(ItemBinding, ItemBinding.row_message(item)))
    }
    assert in_sql == live, {
        "only in SQL": sorted(Item.objects.get(pk=pk).name for pk in in_sql - live),
        "only live": sorted(Item.objects.get(pk=pk).name for pk in live - in_sql),
    }
    assert binding  # the filter is the binding's whitelist


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"value__contains": "1"}, "text fields only"),
        ({"owner__contains": "1"}, "text fields only"),
        ({"value__gt": float("inf")}, "finite"),
        ({"price__lt": "NaN"}, "decimal number"),
        ({"extra": {}}, "not a filterable field"),
    ],
)
def test_filters_that_would_disagree_are_refused(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(filters.FilterError) as info:
        filters.parse(spec, ItemBinding.serialized_fields())
    assert message in str(info.value.errors)
