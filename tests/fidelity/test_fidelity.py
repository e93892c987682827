"""Value fidelity: an event carries exactly what the ORM's serialization of that row gives,
whatever the writing session's settings and the column's type; a change is never dropped
because a value is odd.

How it works. Every case below writes one row of a model in ``tests/fidelity/models.py``:

* ``orm:<case>`` through the ORM (``Model.objects.create``), or, for a value the ORM cannot
  write, ``sql@<session>:<case>`` through raw SQL;
* ``copy@<session>:<case>``: the ORM-written row copied by raw SQL (``INSERT INTO public.t
  (...) SELECT ... FROM public.t``) from a psycopg connection that first ran the ``SET``
  statements of ``SESSIONS[<session>]``. The stored values are the template's, but the capture
  trigger runs in the writer's session, so everything that prints differently per session
  (TimeZone, DateStyle, IntervalStyle, bytea_output, extra_float_digits, search_path) shows.

The listener delivers every row's ``create`` event (one listener run for all of them), and each
test compares one event's ``pk`` and ``data`` with the **oracle**: the ORM's own serialization
of the row read back by the ORM, ``serializers.serialize("python", ...)`` then
``DjangoJSONEncoder``, restricted to the binding's fields (``"__all__"``: every concrete field;
the primary key field's value is the serializer's ``pk``). Values are compared as JSON text, so
``1`` is not ``1.0``, ``-0.0`` is not ``0.0`` and ``true`` is not ``1``. Each event's frame is
encoded as the consumer encodes it and must parse as strict JSON (no NaN/Infinity tokens).

What the oracle implies, worth knowing when a test fails: Django's serializers write a
DurationField with ``duration_string`` (``"3 04:05:06.500000"``, ``"-1 02:00:00"``), not ISO
8601; ArrayField, the range fields and HStoreField as a JSON *string* (``value_to_string``:
``'["1", "2"]'``, ``'{"bounds": "[)", "lower": "1", "upper": "5"}'``); datetimes and times to
the millisecond; a JSON float that jsonb prints without a fraction (``1.5e300`` becomes 301
digits) as a Python int.

Values Django cannot load or represent have no oracle; for them ``FALLBACKS`` (below) is the
expected value, and the change must still be delivered.

The update/delete tests (``LIFECYCLES``) and the channels_redis tests (the layer msgpacks
messages; a stream is held subscribed, so raw changes go through it too) run on the same cases.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import json
import logging
import re
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, cast

import psycopg
import pytest
from django.core import serializers
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, models, transaction
from django.db.backends.postgresql.psycopg_any import DateRange, DateTimeTZRange, NumericRange
from django.db.models import F
from django.db.models.fields import NOT_PROVIDED, AutoFieldMixin
from psycopg import sql

from pgbinding import rows
from pgbinding.consumers import Demultiplexer
from pgbinding.delivery import changelog, messages
from pgbinding.delivery.changelog import Change, configure_connection
from pgbinding.delivery.listener import Listener, conninfo_from_django
from pgbinding.positions import Cursor
from pgbinding.websocket import subscriptions
from tests.conftest import ListenerHarness, RedisCollector, log_max_id
from tests.fidelity import bindings
from tests.fidelity import models as m
from tests.support.capture import capture_backend

# The rows are written once per module (fixtures below, committed, outside any test's
# transaction); the mark only makes pytest-django set the test database up.
pytestmark = pytest.mark.django_db

UTC = datetime.UTC

# ---------------------------------------------------------------------------------------------
# The documented fallbacks: what an event carries for a value the ORM cannot load or represent
# (so there is no oracle). Keyed by case id, then field. The rule they follow:
#
# * float and numeric NaN / +-Infinity: the strings "NaN", "Infinity", "-Infinity" (what
#   Postgres prints; a JSON number cannot hold them, and a bare NaN token is not JSON);
# * dates and timestamps Python cannot hold (infinity, -infinity, year 10000 or later, BC):
#   the text Postgres prints for them in ISO DateStyle in a UTC session (what to_jsonb gives),
#   with the UTC offset "+00:00" written "Z" as Django writes it;
# * time 24:00:00: "24:00:00";
# * intervals beyond timedelta (more than 999,999,999 days, infinity): the text Postgres logged
#   (the capture function pins IntervalStyle postgres: "100000000 years", "infinity");
# * inside an array or a range (which Django serializes as a JSON string of its elements'
#   value_to_string), the element is replaced by the same fallback text.
#
# These cases are always compared with the fallback, even where the ORM reads something: psycopg
# reads interval 'infinity' as timedelta(0), which is not the value.
# ---------------------------------------------------------------------------------------------
FALLBACKS: dict[str, dict[str, Any]] = {
    "numbers-float-nan": {"flt": "NaN"},
    "numbers-float-infinity": {"flt": "Infinity"},
    "numbers-float-minus-infinity": {"flt": "-Infinity"},
    "numbers-numeric-nan": {"dec_12_4": "NaN", "dec_40_20": "NaN"},
    "times-day-infinity": {"day": "infinity"},
    "times-day-minus-infinity": {"day": "-infinity"},
    "times-day-year-10000": {"day": "10000-01-01"},
    "times-day-bc": {"day": "0044-03-15 BC"},
    "times-moment-infinity": {"moment": "infinity"},
    "times-moment-minus-infinity": {"moment": "-infinity"},
    "times-moment-year-10000": {"moment": "10000-01-01T00:00:00Z"},
    "times-moment-bc": {"moment": "0044-03-15T10:00:00Z BC"},
    "times-clock-24h": {"clock": "24:00:00"},
    "times-span-infinity": {"span": "infinity"},
    "times-span-minus-infinity": {"span": "-infinity"},
    "times-span-beyond-timedelta": {"span": "100000000 years"},
    "arrays-days-infinity": {"days": '["2020-01-01", "infinity"]'},
    "arrays-moments-minus-infinity": {"moments": '["2026-01-02T03:04:05+00:00", "-infinity"]'},
    "ranges-days-to-infinity": {
        "days": '{"bounds": "[)", "lower": "2020-01-01", "upper": "infinity"}'
    },
    "ranges-moments-to-infinity": {
        "moments": '{"bounds": "[)", "lower": "2020-01-01T00:00:00+00:00", "upper": "infinity"}'
    },
}

# ---------------------------------------------------------------------------------------------
# Writer sessions: the SET statements a raw-SQL writer runs before writing.
# ---------------------------------------------------------------------------------------------
SESSIONS: dict[str, list[str]] = {
    "default": [],
    "tz-new-york": ["SET TimeZone = 'America/New_York'"],
    "tz-kolkata": ["SET TimeZone = 'Asia/Kolkata'"],
    "datestyle-sql-dmy": ["SET DateStyle = 'SQL, DMY'"],
    "datestyle-german": ["SET DateStyle = 'German'"],
    "intervalstyle-iso": ["SET IntervalStyle = 'iso_8601'"],
    "intervalstyle-sql": ["SET IntervalStyle = 'sql_standard'"],
    "intervalstyle-verbose": ["SET IntervalStyle = 'postgres_verbose'"],
    "bytea-escape": ["SET bytea_output = 'escape'"],
    "float-digits-minus-3": ["SET extra_float_digits = -3"],
    "float-digits-0": ["SET extra_float_digits = 0"],
    # Tables are written schema-qualified (public.fidelity_...): the writer's own SQL works.
    "search-path-catalog": ["SET search_path = pg_catalog"],
    "combined": [
        "SET TimeZone = 'Asia/Kolkata'",
        "SET DateStyle = 'German'",
        "SET IntervalStyle = 'postgres_verbose'",
        "SET bytea_output = 'escape'",
        "SET extra_float_digits = -3",
    ],
}
ALL = tuple(SESSIONS)
DEFAULT = ("default",)
#: For types that print the same in every session: the default and search_path.
PLAIN = ("default", "search-path-catalog")


@dataclass(frozen=True)
class Case:
    """One row. ``orm``: field values for ``Model.objects.create`` (then the row is also copied
    by raw SQL under each of ``sessions``); ``sql``: column -> SQL expression, inserted by raw
    SQL under each of ``sessions`` (values the ORM cannot write)."""

    id: str
    model: str
    orm: dict[str, Any] | None = None
    sql: dict[str, str] | None = None
    sessions: tuple[str, ...] = DEFAULT


DT = datetime.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
DT2 = datetime.datetime(2027, 6, 30, 23, 59, 59, 999999, tzinfo=UTC)
UID = uuid.UUID("12345678-1234-5678-1234-567812345678")
# Rows the relation cases point at (created before the cases, never deleted by them).
REF_TARGET_1 = uuid.UUID("00000000-0000-4000-8000-000000000001")
REF_TARGET_2 = uuid.UUID("00000000-0000-4000-8000-000000000002")
REF_TARGET_3 = uuid.UUID("00000000-0000-4000-8000-000000000003")
REF_CODE = "ref"
REF_NUMBER = 2147483646

CASES: list[Case] = [
    # -- primary keys: uuid made by the database, explicit uuid, text, int4 at its maximum ----
    Case(
        "target-db-default-pk", "target", orm={"name": "made by gen_random_uuid()"}, sessions=PLAIN
    ),
    Case("target-explicit-pk", "target", orm={"id": UID, "name": "explicit"}),
    Case("code-text-pk", "code", orm={"code": "alpha", "label": "A"}),
    Case("code-odd-text-pk", "code", orm={"code": "with space/ü✓", "label": ""}),
    Case(
        "code-raw-text-pk", "code", sql={"code": "'raw-Ω'", "label": "'from SQL'"}, sessions=DEFAULT
    ),
    Case(
        "code-raw-text-pk-search-path",
        "code",
        sql={"code": "'raw-search-path'", "label": "''"},
        sessions=("search-path-catalog",),
    ),
    Case("numbers-int4-pk-max", "numbers", orm={"id": 2147483647, "integer": 1}),
    # -- integers ------------------------------------------------------------------------------
    Case(
        "numbers-ints",
        "numbers",
        orm={"small": 1, "integer": -2, "big": 3, "psmall": 4, "pint": 5, "pbig": 6},
        sessions=PLAIN,
    ),
    Case(
        "numbers-ints-max",
        "numbers",
        orm={
            "small": 32767,
            "integer": 2147483647,
            "big": 9223372036854775807,
            "psmall": 32767,
            "pint": 2147483647,
            "pbig": 9223372036854775807,
        },
    ),
    Case(
        "numbers-ints-min",
        "numbers",
        orm={
            "small": -32768,
            "integer": -2147483648,
            "big": -9223372036854775808,
            "psmall": 0,
            "pint": 0,
            "pbig": 0,
        },
    ),
    # -- decimals: the column's scale is kept ("9.5000"), big precision, integral values ------
    Case(
        "numbers-decimals",
        "numbers",
        orm={
            "dec_12_4": Decimal("1234.5678"),
            "dec_5_0": Decimal("12345"),
            "dec_3_3": Decimal("0.125"),
            "dec_40_20": Decimal("12345678901234567890.12345678901234567890"),
        },
        sessions=ALL,
    ),
    Case(
        "numbers-decimals-scale",
        "numbers",
        orm={
            "dec_12_4": Decimal("9.5"),
            "dec_5_0": Decimal("-0"),
            "dec_3_3": Decimal("-0.001"),
            "dec_40_20": Decimal("1E-20"),
        },
        sessions=ALL,
    ),
    Case(
        "numbers-decimals-integral",
        "numbers",
        orm={"dec_12_4": Decimal("10"), "dec_5_0": Decimal("-99999"), "dec_40_20": Decimal("100")},
    ),
    # (A DecimalField column always has a precision, and numeric(p, s) cannot hold Infinity.)
    Case("numbers-numeric-nan", "numbers", sql={"dec_12_4": "'NaN'", "dec_40_20": "'NaN'"}),
    # -- floats: every digit, whatever extra_float_digits says ---------------------------------
    Case("numbers-float-sum", "numbers", orm={"flt": 0.1 + 0.2}, sessions=ALL),
    Case("numbers-float-tenth", "numbers", orm={"flt": 0.1}, sessions=ALL),
    Case("numbers-float-long", "numbers", orm={"flt": 123456789.12345679}, sessions=ALL),
    Case("numbers-float-integral", "numbers", orm={"flt": 3.0}, sessions=ALL),
    Case("numbers-float-2pow53", "numbers", orm={"flt": 9007199254740993.0}, sessions=ALL),
    Case("numbers-float-small", "numbers", orm={"flt": 1e-7}, sessions=ALL),
    Case("numbers-float-huge", "numbers", orm={"flt": 1e300}, sessions=ALL),
    Case("numbers-float-max", "numbers", orm={"flt": 1.7976931348623157e308}, sessions=ALL),
    Case("numbers-float-denormal", "numbers", orm={"flt": 5e-324}, sessions=ALL),
    Case("numbers-float-negative-zero", "numbers", orm={"flt": -0.0}, sessions=ALL),
    Case("numbers-float-nan", "numbers", orm={"flt": float("nan")}, sessions=ALL),
    Case("numbers-float-infinity", "numbers", orm={"flt": float("inf")}, sessions=ALL),
    Case("numbers-float-minus-infinity", "numbers", orm={"flt": float("-inf")}, sessions=ALL),
    # -- booleans ------------------------------------------------------------------------------
    Case("numbers-bool-true-null", "numbers", orm={"flag": True, "maybe": None}),
    Case("numbers-bool-false-false", "numbers", orm={"flag": False, "maybe": False}),
    Case("numbers-bool-nullable-true", "numbers", orm={"maybe": True}),
    Case("numbers-all-null", "numbers", orm={}),
    # -- text ----------------------------------------------------------------------------------
    Case(
        "texts-typical",
        "texts",
        orm={
            "char": "hello",
            "text": "two\nlines",
            "slug": "a-slug_1",
            "email": "someone@example.com",
            "url": "https://example.com/p?q=1&r=%20#frag",
            "ip": "192.168.0.1",
            "ipv4": "10.0.0.1",
            "ipv6": "2001:db8::1",
            "uid": UID,
            "collated": "Zürich",
            "ci": "MiXeD CaSe",
        },
        sessions=PLAIN,
    ),
    Case(
        "texts-unicode-and-escapes",
        "texts",
        orm={
            "char": "héllo wörld ✓ 日本語",
            "text": 'emoji 👍🏽 e\u0301 \u2028 "quote" back\\slash tab\t nul-free \u0001',
            "collated": "日本語",
            "ci": "ÄÖÜ straße",
        },
        sessions=PLAIN,
    ),
    Case(
        "texts-empty",
        "texts",
        orm={"char": "", "text": "", "slug": "", "email": "", "url": "", "collated": "", "ci": ""},
    ),
    Case(
        "texts-ip-forms",
        "texts",
        orm={"ip": "::ffff:1.2.3.4", "ipv4": "255.255.255.255", "ipv6": "2001:DB8:0:0:0:0:0:1"},
    ),
    Case("texts-inet-with-prefix", "texts", sql={"ip": "'2001:db8::1/64'", "ipv4": "'10.1.2.3/8'"}),
    Case("texts-all-null", "texts", orm={}),
    # -- date, timestamptz, time, interval -----------------------------------------------------
    Case(
        "times-typical",
        "times",
        orm={
            "day": datetime.date(2026, 1, 2),
            "moment": DT,
            "clock": datetime.time(3, 4, 5, 678901),
            "span": datetime.timedelta(days=3, hours=4, minutes=5, seconds=6, microseconds=500000),
        },
        sessions=ALL,
    ),
    Case(
        "times-day-boundary",
        "times",
        orm={
            "day": datetime.date(2024, 2, 29),
            "moment": datetime.datetime(2024, 2, 29, 23, 30, tzinfo=UTC),
            "clock": datetime.time(0, 0),
            "span": datetime.timedelta(0),
        },
        sessions=ALL,
    ),
    Case(
        "times-no-fraction",
        "times",
        orm={
            "moment": datetime.datetime(2026, 7, 4, 12, 0, tzinfo=UTC),
            "clock": datetime.time(23, 59, 59, 999999),
            "span": datetime.timedelta(microseconds=1),
        },
        sessions=ALL,
    ),
    Case(
        "times-negative-spans",
        "times",
        orm={
            "span": -datetime.timedelta(days=3, hours=4, minutes=5, seconds=6, microseconds=500000)
        },
        sessions=ALL,
    ),
    Case(
        "times-negative-day-positive-time",
        "times",
        orm={"span": datetime.timedelta(days=-1, hours=2)},
        sessions=ALL,
    ),
    Case("times-span-max", "times", orm={"span": datetime.timedelta(days=999999999)}, sessions=ALL),
    Case(
        "times-year-9999",
        "times",
        orm={
            "day": datetime.date(9999, 12, 31),
            "moment": datetime.datetime.max.replace(tzinfo=UTC),
        },
        sessions=ALL,
    ),
    Case(
        "times-year-1",
        "times",
        orm={"day": datetime.date(1, 1, 1), "moment": datetime.datetime(1, 1, 1, tzinfo=UTC)},
        sessions=ALL,
    ),
    Case(
        "times-span-months", "times", sql={"span": "'1 year 2 mons 3 days 04:05:06'"}, sessions=ALL
    ),
    Case("times-day-infinity", "times", sql={"day": "'infinity'"}, sessions=ALL),
    Case("times-day-minus-infinity", "times", sql={"day": "'-infinity'"}),
    Case("times-day-year-10000", "times", sql={"day": "'10000-01-01'"}, sessions=ALL),
    Case("times-day-bc", "times", sql={"day": "'0044-03-15 BC'"}, sessions=ALL),
    Case("times-moment-infinity", "times", sql={"moment": "'infinity'"}, sessions=ALL),
    Case("times-moment-minus-infinity", "times", sql={"moment": "'-infinity'"}),
    Case(
        "times-moment-year-10000", "times", sql={"moment": "'10000-01-01 00:00+00'"}, sessions=ALL
    ),
    Case("times-moment-bc", "times", sql={"moment": "'0044-03-15 10:00+00 BC'"}, sessions=ALL),
    Case("times-clock-24h", "times", sql={"clock": "'24:00:00'"}, sessions=ALL),
    Case("times-span-infinity", "times", sql={"span": "'infinity'"}, sessions=ALL),
    Case("times-span-minus-infinity", "times", sql={"span": "'-infinity'"}),
    Case("times-span-beyond-timedelta", "times", sql={"span": "'100000000 years'"}, sessions=ALL),
    Case("times-all-null", "times", orm={}),
    # -- bytea -----------------------------------------------------------------------------------
    Case("blob-mixed", "blob", orm={"data": b"\x00\xffA\\x\n'\""}, sessions=ALL),
    Case("blob-empty", "blob", orm={"data": b""}, sessions=ALL),
    Case("blob-every-byte", "blob", orm={"data": bytes(range(256))}, sessions=ALL),
    Case("blob-looks-like-hex", "blob", orm={"data": b"\\x41"}, sessions=ALL),
    Case("blob-null", "blob", orm={}),
    # -- JSON and hstore -----------------------------------------------------------------------
    Case(
        "documents-object",
        "documents",
        orm={"doc": {"a": 1, "b": [1, 2.5, "x"], "c": None, "d": True, "e": {"f": {}}}},
        sessions=ALL,
    ),
    Case(
        "documents-array",
        "documents",
        orm={"doc": [1, "two", 3.0, None, {"k": []}, [[]]]},
        sessions=ALL,
    ),
    Case(
        "documents-floats",
        "documents",
        orm={"doc": {"sum": 0.1 + 0.2, "one": 1.0, "small": 1e-7, "huge": 1.5e300, "neg": -0.0}},
        sessions=ALL,
    ),
    Case(
        "documents-raw-numbers",
        "documents",
        sql={"doc": """'{"a": 1.10, "b": 1e5, "c": 1.0, "d": -0, "e": 1E-7, "f": 2.50e2}'"""},
        sessions=ALL,
    ),
    Case(
        "documents-big-ints",
        "documents",
        orm={
            "doc": {
                "big": 12345678901234567890123,
                "below-int64": -9223372036854775809,
                "int64-max": 9223372036854775807,
                "uint64-max": 18446744073709551615,
            }
        },
        sessions=ALL,
    ),
    Case(
        "documents-unicode",
        "documents",
        orm={
            "doc": {
                "ünï": "côdé ✓ 👍🏽",
                "esc": 'quote " back \\ nl \n tab \t \u2028 \u0001',
                "日本": ["語"],
            }
        },
        sessions=PLAIN,
    ),
    Case("documents-scalar-string", "documents", orm={"doc": "just a string"}),
    Case("documents-scalar-number", "documents", orm={"doc": 42}),
    Case("documents-json-null", "documents", sql={"doc": "'null'"}),
    Case(
        "documents-hstore",
        "documents",
        orm={"tags": {"a": "1", "b": None, "ключ": "значение", "": "empty key", 'q"': "\\"}},
        sessions=PLAIN,
    ),
    Case("documents-hstore-empty", "documents", orm={"tags": {}}),
    # -- relations -----------------------------------------------------------------------------
    Case(
        "relations-all",
        "relations",
        orm={
            "target_id": REF_TARGET_1,
            "code_id": REF_CODE,
            "number_id": REF_NUMBER,
            "one_id": REF_TARGET_2,
        },
        sessions=PLAIN,
    ),
    Case("relations-null", "relations", orm={}),
    Case(
        "relations-raw",
        "relations",
        sql={"target_id": f"'{REF_TARGET_3}'", "code_id": f"'{REF_CODE}'", "number_id": "NULL"},
    ),
    # -- generated columns and database defaults -----------------------------------------------
    Case("computed-defaults", "computed", orm={}, sessions=ALL),
    Case(
        "computed-values",
        "computed",
        orm={
            "a": 2,
            "b": 3,
            "when": DT,
            "price": Decimal("3.333"),
            "label": "set",
            "count": -1,
            "since": datetime.date(2030, 5, 6),
        },
        sessions=ALL,
    ),
    # -- arrays --------------------------------------------------------------------------------
    Case(
        "arrays-typical",
        "arrays",
        orm={
            "ints": [1, -2, 3],
            "texts": ["a", "b c", 'q"uote', "back\\slash", "", "NULL", "ü✓"],
            "moments": [DT, DT2],
            "days": [datetime.date(2026, 1, 2), datetime.date(1999, 12, 31)],
            "decimals": [Decimal("1.50"), Decimal("-2"), Decimal("999999.99")],
            "grid": [[1, 2], [3, 4]],
        },
        sessions=ALL,
    ),
    Case(
        "arrays-nulls-inside",
        "arrays",
        orm={
            "ints": [1, None],
            "texts": [None, "x"],
            "moments": [None, DT],
            "days": [None],
            "decimals": [None, Decimal("0.1")],
            "grid": [[1, None], [None, 4]],
        },
        sessions=ALL,
    ),
    Case(
        "arrays-empty",
        "arrays",
        orm={"ints": [], "texts": [], "moments": [], "days": [], "decimals": [], "grid": []},
        sessions=ALL,
    ),
    Case("arrays-days-infinity", "arrays", sql={"days": "'{2020-01-01,infinity}'"}, sessions=ALL),
    Case(
        "arrays-moments-minus-infinity",
        "arrays",
        sql={"moments": """'{"2026-01-02 03:04:05+00",-infinity}'"""},
        sessions=ALL,
    ),
    # -- ranges --------------------------------------------------------------------------------
    Case(
        "ranges-typical",
        "ranges",
        orm={
            "ints": NumericRange(1, 5),
            "bigs": NumericRange(-9223372036854775808, 9223372036854775807),
            "decimals": NumericRange(Decimal("1.5"), Decimal("2.50"), "[]"),
            "days": DateRange(datetime.date(2020, 1, 1), datetime.date(2020, 2, 1)),
            "moments": DateTimeTZRange(DT, DT2),
        },
        sessions=ALL,
    ),
    Case(
        "ranges-unbounded",
        "ranges",
        orm={
            "ints": NumericRange(None, 5),
            "bigs": NumericRange(7, None),
            "decimals": NumericRange(None, None),
            "days": DateRange(datetime.date(2020, 1, 1), None),
            "moments": DateTimeTZRange(None, DT),
        },
        sessions=ALL,
    ),
    Case(
        "ranges-inclusive-bounds",
        "ranges",
        orm={
            "ints": NumericRange(1, 5, "[]"),
            "decimals": NumericRange(Decimal("-1"), Decimal("1"), "(]"),
            "days": DateRange(datetime.date(2020, 1, 1), datetime.date(2020, 1, 31), "(]"),
            "moments": DateTimeTZRange(DT, DT2, "[]"),
        },
        sessions=ALL,
    ),
    Case(
        "ranges-empty",
        "ranges",
        orm={
            "ints": NumericRange(empty=True),
            "bigs": NumericRange(empty=True),
            "decimals": NumericRange(empty=True),
            "days": DateRange(empty=True),
            "moments": DateTimeTZRange(empty=True),
        },
        sessions=ALL,
    ),
    Case(
        "ranges-days-to-infinity", "ranges", sql={"days": "'[2020-01-01,infinity)'"}, sessions=ALL
    ),
    Case(
        "ranges-moments-to-infinity",
        "ranges",
        sql={"moments": "'[2020-01-01 00:00+00,infinity)'"},
        sessions=ALL,
    ),
]


@dataclass(frozen=True)
class Lifecycle:
    """A row created by the ORM, updated (ORM ``update(**dict)`` or a raw SQL ``SET`` clause
    run under ``update_session``), then deleted (by the ORM, or raw SQL under
    ``delete_session``): the update event carries the row after, the delete event the row as it
    was."""

    id: str
    model: str
    create: dict[str, Any]
    update: dict[str, Any] | str
    update_session: str = "default"
    delete_session: str | None = None


LIFECYCLES: list[Lifecycle] = [
    Lifecycle(
        "times-sql-new-york-delete-kolkata",
        "times",
        create={
            "day": datetime.date(2026, 1, 2),
            "moment": DT,
            "clock": datetime.time(3, 4),
            "span": datetime.timedelta(days=-1, hours=2),
        },
        update="moment = moment + interval '1 hour', span = span * 2",
        update_session="tz-new-york",
        delete_session="tz-kolkata",
    ),
    Lifecycle(
        "times-sql-verbose-intervals",
        "times",
        create={"span": datetime.timedelta(days=3, seconds=1)},
        update="span = span - interval '10 days'",
        update_session="intervalstyle-verbose",
        delete_session="intervalstyle-sql",
    ),
    Lifecycle(
        "numbers-orm",
        "numbers",
        create={"dec_12_4": Decimal("1.5"), "flt": 0.1, "big": 1},
        update={"dec_12_4": F("dec_12_4") + 1, "flt": 0.1 + 0.2, "big": 9223372036854775807},
    ),
    Lifecycle(
        "numbers-sql-float-digits",
        "numbers",
        create={"flt": 0.1},
        update="flt = flt + 0.2",
        update_session="float-digits-minus-3",
        delete_session="float-digits-0",
    ),
    Lifecycle(
        "blob-sql-escape",
        "blob",
        create={"data": b"\x00abc"},
        update="data = data || '\\xff00'::bytea",
        update_session="bytea-escape",
        delete_session="bytea-escape",
    ),
    Lifecycle(
        "documents-orm",
        "documents",
        create={"doc": {"a": 1}, "tags": {"k": "v"}},
        update={"doc": {"a": 1.5, "big": 12345678901234567890123}, "tags": {"k": None}},
        delete_session="default",
    ),
    Lifecycle(
        "arrays-sql-german",
        "arrays",
        create={"days": [datetime.date(2026, 1, 2)], "moments": [DT]},
        update="days = days || '2030-05-06'::date, moments = moments || now()",
        update_session="datestyle-german",
        delete_session="tz-new-york",
    ),
    Lifecycle(
        "ranges-sql-dmy",
        "ranges",
        create={"moments": DateTimeTZRange(DT, DT2), "ints": NumericRange(1, 2)},
        update="moments = tstzrange('2026-01-02 00:00+00', '2026-03-04 00:00+00'), ints = '[2,3)'",
        update_session="datestyle-sql-dmy",
        delete_session="combined",
    ),
    Lifecycle(
        "texts-orm-delete-search-path",
        "texts",
        create={"char": "before", "ip": "10.0.0.1"},
        update={"char": "after", "ip": "2001:db8::2"},
        delete_session="search-path-catalog",
    ),
    Lifecycle(
        "relations-orm",
        "relations",
        create={"target_id": REF_TARGET_1, "number_id": REF_NUMBER},
        update={"target_id": REF_TARGET_3, "code_id": REF_CODE},
    ),
    Lifecycle(
        "computed-sql-kolkata",
        "computed",
        create={"a": 1, "b": 1, "when": DT},
        update='a = 10, "when" = NULL',
        update_session="tz-kolkata",
        delete_session="default",
    ),
    Lifecycle(
        "target-orm",
        "target",
        create={"name": "short-lived"},
        update={"name": "renamed"},
    ),
]

MODELS: dict[str, type[models.Model]] = {
    "target": m.Target,
    "code": m.Code,
    "numbers": m.Numbers,
    "texts": m.Texts,
    "times": m.Times,
    "blob": m.Blob,
    "documents": m.Documents,
    "relations": m.Relations,
    "computed": m.Computed,
    "arrays": m.Arrays,
    "ranges": m.Ranges,
}
BINDINGS = {
    b.model._meta.model_name: b
    for b in vars(bindings).values()
    if isinstance(b, type) and issubclass(b, bindings._FidelityBinding) and hasattr(b, "model")
}


def _copyable(model: type[models.Model]) -> bool:
    """Can a raw INSERT ... SELECT copy a row (the primary key fills itself in)?"""
    pk = model._meta.pk
    assert pk is not None
    return isinstance(pk, AutoFieldMixin) or pk.db_default is not NOT_PROVIDED


@dataclass(frozen=True)
class Write:
    id: str
    case: Case
    how: str  # "orm", "copy" or "sql"
    session: str | None = None


def _writes() -> list[Write]:
    out = []
    for case in CASES:
        if case.orm is not None:
            out.append(Write(f"orm:{case.id}", case, "orm"))
    for session in SESSIONS:
        for case in CASES:
            if session not in case.sessions:
                continue
            if case.sql is not None:
                out.append(Write(f"sql@{session}:{case.id}", case, "sql", session))
            elif _copyable(MODELS[case.model]):
                out.append(Write(f"copy@{session}:{case.id}", case, "copy", session))
    return out


WRITES = _writes()
#: What the channels_redis run writes: every case that the ORM or default-session SQL writes.
REDIS_WRITES = [w for w in WRITES if w.how == "orm" or (w.how == "sql" and w.session == "default")]
LIFECYCLE_STEPS = [f"{lc.id}:{step}" for lc in LIFECYCLES for step in ("update", "delete")]
#: The order the redis run visits the models in (relations before the rows they point at).
REDIS_MODELS = ["relations", *[n for n in MODELS if n != "relations"]]


# ---------------------------------------------------------------------------------------------
# Oracle, expectations, comparison
# ---------------------------------------------------------------------------------------------


def _bound_fields(model: type[models.Model]) -> list[models.Field[Any, Any]]:
    return BINDINGS[model._meta.model_name].serialized_fields()


def _json(value: Any) -> Any:
    return json.loads(json.dumps(value, cls=DjangoJSONEncoder, allow_nan=False))


def _serialized(obj: models.Model, only: list[str] | None = None) -> dict[str, Any]:
    """The ORM's serialization of ``obj`` as JSON: the binding's field names, the primary key
    field as the serializer's ``pk``."""
    dumped = serializers.serialize("python", [obj], fields=only)[0]
    pk_field = obj._meta.pk
    assert pk_field is not None
    return {pk_field.name: _json(dumped["pk"]), **_json(dumped["fields"])}


def orm_oracle(model: type[models.Model], pk: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """(field -> the ORM's JSON value, field -> why the ORM has none)."""
    names = [f.name for f in _bound_fields(model)]
    try:
        full = _serialized(model._default_manager.get(pk=pk))
        return {n: full[n] for n in names}, {}
    except Exception:
        pass
    good: dict[str, Any] = {}
    bad: dict[str, str] = {}
    pk_name = model._meta.pk.name
    for name in names:
        if name == pk_name:
            good[name] = _json(pk)
            continue
        try:
            obj = model._default_manager.only(name).get(pk=pk)
            good[name] = _serialized(obj, [name])[name]
        except Exception as exc:
            bad[name] = f"{type(exc).__name__}: {exc}"
    return good, bad


@dataclass
class Expected:
    pk: Any
    data: dict[str, Any]
    source: dict[str, str]
    missing: dict[str, str]


def carried(value: Any) -> Any:
    """The documented rule for JSON documents: an integer beyond 64 bits (only jsonb can hold
    one; msgpack, which channels-redis uses, cannot carry it) is sent as a float."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if -(2**63) <= value <= 2**64 - 1 else float(value)
    if isinstance(value, dict):
        return {k: carried(v) for k, v in value.items()}
    if isinstance(value, list):
        return [carried(v) for v in value]
    return value


def expectation(model: type[models.Model], pk: Any, case_id: str | None) -> Expected:
    oracle, unavailable = orm_oracle(model, pk)
    for name in list(oracle):
        if isinstance(model._meta.get_field(name), models.JSONField):
            oracle[name] = carried(oracle[name])
    source = dict.fromkeys(oracle, "orm")
    missing: dict[str, str] = {}
    fallbacks = FALLBACKS.get(case_id or "", {})
    for name, value in fallbacks.items():
        orm_said = oracle.get(name, f"<none: {unavailable.get(name)}>")
        oracle[name] = value
        source[name] = f"fallback (the ORM gives {orm_said!r})"
    for name, why in unavailable.items():
        if name not in fallbacks:
            missing[name] = why
    return Expected(_json(pk), oracle, source, missing)


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"not strict JSON: {name}")


@dataclass
class Delivered:
    """What a client receives for one event: the frame text and its parse (or the error)."""

    payload: dict[str, Any]
    text: str | None
    frame: dict[str, Any] | None
    error: str | None


def frames(events: list[dict[str, Any]]) -> list[Delivered]:
    """Encode events as the consumer does, and parse them strictly, as a client would."""

    async def encode_all() -> list[Delivered]:
        out = []
        for event in events:
            content = {"stream": event["stream"], "payload": event["payload"]}
            try:
                text = await Demultiplexer.encode_json(content)
                frame = json.loads(text, parse_constant=_reject_constant)
                out.append(Delivered(event["payload"], text, frame, None))
            except Exception as exc:
                out.append(Delivered(event["payload"], None, None, f"{type(exc).__name__}: {exc}"))
        return out

    return asyncio.run(encode_all())


@dataclass
class Outcome:
    """One write (or update/delete) and what came of it."""

    label: str
    model: type[models.Model]
    action: str
    pk: Any = None
    write_error: str | None = None
    expected: Expected | None = None
    events: list[Delivered] = field(default_factory=list)
    listener_errors: list[str] = field(default_factory=list)
    crash: str | None = None

    def check(self) -> None:
        """Fail (with the message only: hundreds of tracebacks would be slow and say nothing
        more) unless exactly one event came and its pk and data are the expected ones."""
        problem = self.problem()
        if problem:
            pytest.fail(problem, pytrace=False)

    def problem(self) -> str | None:
        if self.write_error is not None:
            return f"{self.label}: the write itself failed: {self.write_error}"
        assert self.expected is not None
        exp = self.expected
        context = f"{self.label} ({self.model._meta.label_lower} pk {exp.pk!r})"
        if not self.events:
            detail = "; ".join(self.listener_errors) or "no error logged"
            crash = f"; the listener crashed or stalled: {self.crash}" if self.crash else ""
            return f"{context}: no {self.action} event was delivered ({detail}){crash}"
        if len(self.events) != 1:
            return f"{context}: {len(self.events)} {self.action} events"
        delivered = self.events[0]
        if delivered.frame is None:
            return (
                f"{context}: the event's frame is not strict JSON: {delivered.error}; "
                f"data as sent: {delivered.payload.get('data')!r}"
            )
        payload = delivered.frame["payload"]
        data = payload.get("data")
        if exp.missing:
            sent = {k: data.get(k) for k in exp.missing} if isinstance(data, dict) else data
            return f"{context}: no oracle and no FALLBACKS entry for {exp.missing}; event: {sent}"
        problems = []
        if _canon(payload.get("pk")) != _canon(exp.pk):
            problems.append(f"pk: event {payload.get('pk')!r}, expected {exp.pk!r}")
        if not isinstance(data, dict):
            problems.append(f"data: event has {data!r}")
        else:
            for name in sorted(set(data) | set(exp.data)):
                got = data.get(name, "<absent>")
                want = exp.data.get(name, "<absent>")
                if _canon(got) != _canon(want):
                    problems.append(
                        f"{name}: event {got!r}, expected {want!r} [{exp.source.get(name)}]"
                    )
        return f"{context}:\n  " + "\n  ".join(problems) if problems else None


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def _table(model: type[models.Model]) -> sql.Composable:
    return sql.SQL("public.{}").format(sql.Identifier(model._meta.db_table))


def _pk_column(model: type[models.Model]) -> str:
    assert model._meta.pk is not None
    return cast(str, model._meta.pk.column)  # a concrete field's column is set


def _copy_columns(model: type[models.Model]) -> list[str]:
    """Columns a raw copy writes: not the primary key, generated or unique ones (left NULL)."""
    return [
        cast(str, f.column)  # a concrete field's column is set
        for f in model._meta.concrete_fields
        if not f.primary_key and not f.generated and not f.unique
    ]


def copy_statement(model: type[models.Model]) -> sql.Composed:
    cols = sql.SQL(", ").join(map(sql.Identifier, _copy_columns(model)))
    return sql.SQL(
        "INSERT INTO {t} ({c}) SELECT {c} FROM {t} WHERE {pk} = %s RETURNING {pk}"
    ).format(t=_table(model), c=cols, pk=sql.Identifier(_pk_column(model)))


def insert_statement(model: type[models.Model], values: dict[str, str]) -> sql.Composed:
    pk = sql.Identifier(_pk_column(model))
    if not values:
        return sql.SQL("INSERT INTO {t} DEFAULT VALUES RETURNING {pk}").format(
            t=_table(model), pk=pk
        )
    return sql.SQL("INSERT INTO {t} ({c}) VALUES ({v}) RETURNING {pk}").format(
        t=_table(model),
        c=sql.SQL(", ").join(map(sql.Identifier, values)),
        v=sql.SQL(", ").join(sql.SQL(v) for v in values.values()),
        pk=pk,
    )


def session(name: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(conninfo_from_django(), autocommit=True)
    for statement in SESSIONS[name]:
        conn.execute(statement)
    return conn


def _err(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).strip()}"


class ListenerErrors(logging.Handler):
    """Records what pgbinding logs at WARNING and above (a binding that failed on a change, a
    value it could not load, a send to the channel layer that failed)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        self.records.append(record.getMessage() + (f": {_err(exc)}" if exc else ""))

    def about(self, model: type[models.Model], pk: Any) -> list[str]:
        table = model._meta.db_table
        # dict.fromkeys: several listeners (the in-memory one keeps running) log the same.
        mention = re.compile(rf"\bpk {re.escape(str(pk))}(?![\w-])")
        return list(dict.fromkeys(r for r in self.records if table in r and mention.search(r)))


def _events_by(messages: list[dict[str, Any]]) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    out: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for message in messages:
        payload = message.get("payload")
        if message.get("type") != "pgbinding.event" or not isinstance(payload, dict):
            continue
        key = (message["stream"], payload["action"], _canon(payload.get("pk")))
        out.setdefault(key, []).append(message)
    return out


def _delivered(
    index: dict[tuple[str, str, str], list[dict[str, Any]]],
    model: type[models.Model],
    action: str,
    pk: Any,
) -> list[Delivered]:
    stream = BINDINGS[model._meta.model_name].stream
    return frames(index.get((stream, action, _canon(_json(pk))), []))


def _empty_tables(reference_rows: bool = True) -> None:
    """Empty the fidelity tables, then write the reference rows (with ``reference_rows``)."""
    tables = sql.SQL(", ").join(sql.Identifier(model._meta.db_table) for model in MODELS.values())
    with psycopg.connect(conninfo_from_django(), autocommit=True) as conn:
        conn.execute(sql.SQL("TRUNCATE {} RESTART IDENTITY").format(tables))
    if reference_rows:
        m.Target.objects.bulk_create(
            [m.Target(id=t, name="ref") for t in (REF_TARGET_1, REF_TARGET_2, REF_TARGET_3)]
        )
        m.Code.objects.create(code=REF_CODE, label="ref")
        m.Numbers.objects.create(id=REF_NUMBER)


@pytest.fixture(scope="module")
def fidelity_tables(django_db_setup: None, django_db_blocker: Any) -> Iterator[None]:
    """Empty fidelity tables with the reference rows, for the module; emptied again after."""
    with django_db_blocker.unblock():
        _empty_tables()
        try:
            yield
        finally:
            _empty_tables(reference_rows=False)


@dataclass
class Run:
    writes: dict[str, Outcome]
    lifecycle: dict[str, Outcome]


@pytest.fixture(scope="module")
def memory_run(fidelity_tables: None, django_db_blocker: Any) -> Iterator[Run]:
    """Every write and lifecycle, delivered by one listener run on the in-memory layer."""
    with django_db_blocker.unblock():
        yield from _delivery_run()


@pytest.fixture(scope="module")
def logical_run(fidelity_tables: None, django_db_blocker: Any) -> Iterator[Run]:
    """The same under the logical capture backend (tests/support/capture.py), on tables
    emptied first, by a listener of its own name (the trigger run's may still lead)."""
    with django_db_blocker.unblock():
        _empty_tables()
        _templates.clear()
        try:
            with capture_backend("logical", conninfo_from_django()):
                yield from _delivery_run(capture="logical", name="fidelity_logical")
        finally:
            _empty_tables()


def _delivery_run(**listener_options: Any) -> Iterator[Run]:
    """Write every case and lifecycle, and deliver them with one listener."""
    errors = ListenerErrors()
    logging.getLogger("pgbinding").addHandler(errors)
    harness = ListenerHarness(**listener_options).start()
    try:
        groups = [bindings.group_for(model) for model in MODELS.values()]
        collector = harness.collect(*groups)
        outcomes = {w.id: _write(w) for w in WRITES}
        steps = _lifecycles()
        harness.sync(timeout=60)
        index = _events_by(collector.messages)
        for outcome in [*outcomes.values(), *steps.values()]:
            if outcome.pk is not None:
                outcome.events = _delivered(index, outcome.model, outcome.action, outcome.pk)
                outcome.listener_errors = errors.about(outcome.model, outcome.pk)
        yield Run(outcomes, steps)
    finally:
        harness.close()
        logging.getLogger("pgbinding").removeHandler(errors)


#: The raw-SQL writers' connections, one per session, and the ORM-written rows' pks by case.
_sessions: dict[str, psycopg.Connection[Any]] = {}
_templates: dict[str, Any] = {}


def _write(write: Write) -> Outcome:
    """Write one row; the expectation is computed right away (the row is not changed later)."""
    model = MODELS[write.case.model]
    outcome = Outcome(write.id, model, "create")
    try:
        if write.how == "orm":
            assert write.case.orm is not None
            outcome.pk = model._default_manager.create(**write.case.orm).pk
            _templates[write.case.id] = outcome.pk
        else:
            assert write.session is not None
            conn = _sessions.get(write.session)
            if conn is None:
                conn = _sessions[write.session] = session(write.session)
            if write.how == "copy":
                template = _templates[write.case.id]
                row = conn.execute(copy_statement(model), [template]).fetchone()
            else:
                assert write.case.sql is not None
                row = conn.execute(insert_statement(model, write.case.sql)).fetchone()
            assert row is not None
            outcome.pk = row[0]
    except Exception as exc:
        outcome.write_error = _err(exc)
        return outcome
    outcome.expected = expectation(model, outcome.pk, write.case.id)
    return outcome


def _run_sql(session_name: str, statement: sql.Composed, params: list[Any]) -> None:
    conn = _sessions.get(session_name)
    if conn is None:
        conn = _sessions[session_name] = session(session_name)
    conn.execute(statement, params)


def _lifecycles() -> dict[str, Outcome]:
    out: dict[str, Outcome] = {}
    for lc in LIFECYCLES:
        model = MODELS[lc.model]
        pk_col = sql.Identifier(_pk_column(model))
        pk = model._default_manager.create(**lc.create).pk
        update = Outcome(f"{lc.id}:update", model, "update", pk)
        delete = Outcome(f"{lc.id}:delete", model, "delete", pk)
        out[update.label], out[delete.label] = update, delete
        try:
            if isinstance(lc.update, dict):
                model._default_manager.filter(pk=pk).update(**lc.update)
            else:
                statement = sql.SQL("UPDATE {t} SET {s} WHERE {pk} = %s").format(
                    t=_table(model),
                    s=sql.SQL(lc.update),
                    pk=pk_col,
                )
                _run_sql(lc.update_session, statement, [pk])
        except Exception as exc:
            update.write_error = _err(exc)
        update.expected = expectation(model, pk, None)
        delete.expected = update.expected  # the row as it was when deleted
        try:
            if lc.delete_session is None:
                model._default_manager.filter(pk=pk).delete()
            else:
                statement = sql.SQL("DELETE FROM {t} WHERE {pk} = %s").format(
                    t=_table(model), pk=pk_col
                )
                _run_sql(lc.delete_session, statement, [pk])
        except Exception as exc:
            delete.write_error = _err(exc)
    return out


@pytest.fixture(scope="module", autouse=True)
def _close_sessions() -> Iterator[None]:
    yield
    for conn in _sessions.values():
        conn.close()
    _sessions.clear()
    _templates.clear()


# ---------------------------------------------------------------------------------------------
# The tests: in-memory layer
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("write_id", [w.id for w in WRITES])
def test_create_event_matches_orm(memory_run: Run, write_id: str) -> None:
    memory_run.writes[write_id].check()


@pytest.mark.parametrize("step", LIFECYCLE_STEPS)
def test_update_and_delete_events_match_orm(memory_run: Run, step: str) -> None:
    memory_run.lifecycle[step].check()


def logged_changes() -> Iterator[
    tuple[type[bindings._FidelityBinding], str, list[tuple[Any, ...]]]
]:
    """Each binding of the fidelity app, its table, and the changes logged to that table as
    the listener reads them (id, op, old and new row, jsonb decoded keeping every digit), in
    log order."""
    with psycopg.connect(conninfo_from_django(), autocommit=True) as conn:
        configure_connection(conn)  # type: ignore[arg-type]  # only set_json_loads is used
        for binding in BINDINGS.values():
            table = binding.model._meta.db_table
            entries = conn.execute(
                "SELECT id, op, old, new FROM pgbinding_change WHERE table_name = %s ORDER BY id",
                [table],
            ).fetchall()
            yield binding, table, entries


def test_raw_changes_match_row_messages_of_instances(memory_run: Run) -> None:
    """Raw changes for subscriptions (replays too) are built from the decoded values, without
    model instances where the model allows (``Binding.reads_values``): for every change the
    memory run logged, of every case and lifecycle, the same row messages as
    ``Binding.row_message`` of the instances, to the type of every value."""
    checked = updates = 0
    for binding, table, entries in logged_changes():
        with connection.cursor() as cursor:
            rows.load_types_sync(cursor, [table])
        for change_id, op, old, new in entries:
            if op == "T":
                continue
            change = Change(int(change_id), table, str(op), None, old, new)
            expected = [
                binding.row_message(
                    rows.instance(binding.model, rows.row_values(binding.model, r, table))
                )
                if r
                else None
                for r in (old, new)
            ]
            got = list(messages.row_messages(binding, *messages.decode_values(binding, change)))
            assert json.dumps(got, default=repr) == json.dumps(expected, default=repr), (
                binding.label(),
                change_id,
            )
            checked += 1
            updates += op == "U"
        assert binding.reads_values(), binding.label()
    assert checked >= len(WRITES) and updates >= len(LIFECYCLES)


def test_replays_read_every_logged_value_exactly(
    memory_run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resume reads the log as JSON texts (``subscriptions.read_log``, for the server
    process's GIL): for every change the memory run logged, of every case, session setting and
    lifecycle, it parses to the same id, op and old and new rows, to the digit and type of
    every value, as the log's rows read one by one (what the listener decodes). In texts of 7
    changes, so that every table's changes span several."""
    monkeypatch.setattr(subscriptions, "READ_LOG_CHUNK", 7)
    checked = 0
    for binding, table, entries in logged_changes():
        with connection.cursor() as cursor:
            count, texts = subscriptions.read_log(cursor, Cursor(0), table, len(entries) + 1)
        assert count == len(entries), binding.label()
        assert len(texts) == -(-count // 7), binding.label()
        read = [tuple(entry) for text in texts for entry in changelog.loads(text)]
        assert json.dumps(read, default=repr) == json.dumps(entries, default=repr), binding.label()
        checked += count
    assert checked >= len(WRITES)


def test_every_case_and_fallback_is_used() -> None:
    """The tables stay consistent: unique ids, every fallback names a case and a bound field,
    every session is used."""
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    by_id = {c.id: c for c in CASES}
    for case_id, fields in FALLBACKS.items():
        assert case_id in by_id, case_id
        names = {f.name for f in _bound_fields(MODELS[by_id[case_id].model])}
        assert set(fields) <= names, (case_id, fields)
    used = {s for c in CASES for s in c.sessions} | {
        s for lc in LIFECYCLES for s in (lc.update_session, lc.delete_session) if s
    }
    assert used == set(SESSIONS)


# ---------------------------------------------------------------------------------------------
# The tests: channels_redis (msgpack), with the streams' change groups subscribed
# ---------------------------------------------------------------------------------------------


@dataclass
class RedisModelRun:
    crash: str | None
    rows: int
    changes: int
    events: int


@dataclass
class RedisRun:
    writes: dict[str, Outcome]
    models: dict[str, RedisModelRun]


def _delete_rows(model: type[models.Model], outcomes: Iterable[Outcome]) -> None:
    """Delete rows written before (their outcomes are computed already), so their explicit
    primary keys and unique values can be written again."""
    pks = [o.pk for o in outcomes if o.model is model and o.pk is not None]
    model._default_manager.filter(pk__in=pks).delete()


@pytest.fixture(scope="module")
def redis_run(memory_run: Run, redis_url: str, django_db_blocker: Any) -> Iterator[RedisRun]:
    """Per model: a listener on channels_redis delivers every ORM-written case (and the
    default-session SQL ones) written in one transaction, while a collector is in the model's
    group and in its stream's change group (as a live subscription is).

    When a model's batch does not get through (the listener crashed or stopped making
    progress), each of its cases is run again on its own, so the case that blocks is named and
    the others are judged on their own."""
    outcomes: dict[str, Outcome] = {}
    summaries: dict[str, RedisModelRun] = {}
    with django_db_blocker.unblock():
        errors = ListenerErrors()
        logging.getLogger("pgbinding").addHandler(errors)
        try:
            for name in REDIS_MODELS:
                model = MODELS[name]
                writes = [w for w in REDIS_WRITES if w.case.model == name]
                _delete_rows(model, memory_run.writes.values())
                batch = _redis_model(model, writes, redis_url, errors, stall_after=5)
                summaries[name] = batch.summary
                outcomes.update(batch.outcomes)
                if batch.summary.crash is None:
                    continue
                for write in writes:
                    _delete_rows(model, outcomes.values())
                    alone = _redis_model(model, [write], redis_url, errors, stall_after=2)
                    outcomes.update(alone.outcomes)
        finally:
            logging.getLogger("pgbinding").removeHandler(errors)
            with psycopg.connect(conninfo_from_django(), autocommit=True) as conn:
                conn.execute("DELETE FROM pgbinding_listener WHERE name LIKE 'fidelity-redis-%'")
        yield RedisRun(outcomes, summaries)


@dataclass
class RedisBatch:
    summary: RedisModelRun
    outcomes: dict[str, Outcome]


_redis_runs = itertools.count()


def _redis_model(
    model: type[models.Model],
    writes: list[Write],
    redis_url: str,
    errors: ListenerErrors,
    stall_after: float,
) -> RedisBatch:
    from channels_redis.core import RedisChannelLayer

    binding = BINDINGS[model._meta.model_name]
    # A name of its own per run: it starts at the log's end, and no lease of an earlier run
    # (a stalled one) holds it.
    name = f"fidelity-redis-{model._meta.model_name}-{next(_redis_runs)}"
    with psycopg.connect(conninfo_from_django(), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO pgbinding_listener (name, position) VALUES (%s, %s)",
            [name, log_max_id()],
        )
    layer = RedisChannelLayer(
        hosts=[{"address": redis_url, "socket_timeout": None}], capacity=100_000
    )
    harness = ListenerHarness(name=name)
    harness.listener = Listener.from_settings(channel_layer=layer, name=name)
    collector = RedisCollector(redis_url, bindings.group_for(model), binding.change_group())
    crash: str | None = None
    logged_before = len(errors.records)
    mine: list[Outcome] = []
    try:
        harness.start()
        # One transaction: the listener reads all of them in one batch, so what arrives does
        # not depend on how the batches fall.
        with transaction.atomic():
            for w in writes:
                outcome = Outcome(f"redis:{w.id}", model, "create")
                if w.how == "orm":
                    assert w.case.orm is not None
                    outcome.pk = model._default_manager.create(**w.case.orm).pk
                else:
                    assert w.case.sql is not None
                    with connection.cursor() as cursor:
                        statement = insert_statement(model, w.case.sql)
                        cursor.execute(statement.as_string(connection.connection))
                        outcome.pk = cursor.fetchone()[0]
                mine.append(outcome)
        try:
            harness.sync(timeout=stall_after)
        except AssertionError as exc:
            logged = list(dict.fromkeys(errors.records[logged_before:]))[:3]
            crash = str(exc) + "".join(f"; logged: {r}" for r in logged)
        # Everything is in Redis now (or the listener is stuck); wait until the collector has
        # read it all: until nothing new has come for a while.
        seen, quiet_since, deadline = -1, time.monotonic(), time.monotonic() + 10
        while time.monotonic() < deadline:
            count = len(collector.collector.messages)
            if count != seen:
                seen, quiet_since = count, time.monotonic()
            elif count >= 2 * len(mine) or time.monotonic() - quiet_since > 0.6:
                break
            time.sleep(0.02)
    finally:
        try:
            harness.stop()
        except Exception as exc:
            crash = crash or _err(exc)
        harness.run_future = None
        try:
            harness.call(layer.close_pools())
        finally:
            harness.close()
            collector.stop()
            # Closed here, not when garbage-collected (channels_redis then flushes the layer
            # on it, which fails if another loop is running in this thread at that moment).
            collector.loop.close()
    messages = list(collector.collector.messages)
    index = _events_by(messages)
    out: dict[str, Outcome] = {}
    for outcome in mine:
        case_id = outcome.label.split(":", 2)[-1]
        outcome.expected = expectation(model, outcome.pk, case_id)
        outcome.events = _delivered(index, model, "create", outcome.pk)
        outcome.listener_errors = errors.about(model, outcome.pk)
        outcome.crash = crash
        if len(mine) > 1 and crash:
            outcome.crash = crash + " (in a batch of all this model's cases)"
        out[outcome.label] = outcome
    kinds = [msg.get("type") for msg in messages]
    summary = RedisModelRun(
        crash, len(mine), kinds.count("pgbinding.change"), kinds.count("pgbinding.event")
    )
    return RedisBatch(summary, out)


@pytest.mark.redis
@pytest.mark.parametrize("write_id", [w.id for w in REDIS_WRITES])
def test_redis_create_event_matches_orm(redis_run: RedisRun, write_id: str) -> None:
    redis_run.writes[f"redis:{write_id}"].check()


@pytest.mark.redis
@pytest.mark.parametrize("model_name", REDIS_MODELS)
def test_redis_listener_survives_a_subscribed_stream(redis_run: RedisRun, model_name: str) -> None:
    """Every change reached the stream's change group (where live subscriptions listen), and
    the listener was still running afterwards."""
    run = redis_run.models[model_name]
    problems = [
        f"the listener crashed or stalled: {run.crash}" if run.crash else "",
        f"{run.changes} raw changes reached the change group for {run.rows} rows"
        if run.changes != run.rows
        else "",
        f"{run.events} events for {run.rows} rows" if run.events != run.rows else "",
    ]
    if any(problems):
        pytest.fail("; ".join(p for p in problems if p), pytrace=False)


# ---------------------------------------------------------------------------------------------
# The tests: the logical capture backend (in-memory layer), after the others
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("write_id", [w.id for w in WRITES])
def test_logical_create_event_matches_orm(logical_run: Run, write_id: str) -> None:
    logical_run.writes[write_id].check()


@pytest.mark.parametrize("step", LIFECYCLE_STEPS)
def test_logical_update_and_delete_events_match_orm(logical_run: Run, step: str) -> None:
    logical_run.lifecycle[step].check()
