"""A test app with one column of every field type Django ships for Postgres (the fidelity
suite compares what events carry with what the ORM reads).

Every column but the primary key is nullable or has a default, so a test case can set one
column and leave the rest alone. The models are grouped by what can go wrong with them:
``Times``, ``Blob`` and ``Numbers.flt`` print differently depending on the writing session's
settings; ``Arrays``, ``Ranges`` and ``Documents`` are containers of those.
"""

import datetime
import decimal
from typing import Any

from django.contrib.postgres.fields import (
    ArrayField,
    BigIntegerRangeField,
    DateRangeField,
    DateTimeRangeField,
    DecimalRangeField,
    HStoreField,
    IntegerRangeField,
)
from django.contrib.postgres.functions import RandomUUID
from django.db import models
from django.db.models import F, Value
from django.db.models.functions import Coalesce, Now


class CaseInsensitiveTextField(models.TextField):  # type: ignore[type-arg]
    """``citext`` (the extension), what ``CICharField`` gave before Django 5.1.

    The recommended replacement, a nondeterministic ICU collation, needs a server built with
    ICU; the embedded Postgres is not ("ICU is not supported in this build").
    """

    def db_type(self, connection: Any) -> str:
        return "citext"


class Target(models.Model):
    """A row other rows point at; its primary key is a uuid the database makes (db_default)."""

    id = models.UUIDField(primary_key=True, db_default=RandomUUID())
    name = models.CharField(max_length=50, default="")


class Code(models.Model):
    """A text primary key."""

    code = models.CharField(max_length=20, primary_key=True)
    label = models.TextField(default="")


class Numbers(models.Model):
    id = models.AutoField(primary_key=True)  # int4
    small = models.SmallIntegerField(null=True)
    integer = models.IntegerField(null=True)
    big = models.BigIntegerField(null=True)
    psmall = models.PositiveSmallIntegerField(null=True)
    pint = models.PositiveIntegerField(null=True)
    pbig = models.PositiveBigIntegerField(null=True)
    dec_12_4 = models.DecimalField(max_digits=12, decimal_places=4, null=True)
    dec_5_0 = models.DecimalField(max_digits=5, decimal_places=0, null=True)
    dec_3_3 = models.DecimalField(max_digits=3, decimal_places=3, null=True)
    dec_40_20 = models.DecimalField(max_digits=40, decimal_places=20, null=True)
    flt = models.FloatField(null=True)
    flag = models.BooleanField(db_default=False)
    maybe = models.BooleanField(null=True)


class Texts(models.Model):
    id = models.SmallAutoField(primary_key=True)  # int2
    char = models.CharField(max_length=50, null=True)
    text = models.TextField(null=True)
    slug = models.SlugField(null=True)
    email = models.EmailField(null=True)
    url = models.URLField(null=True)
    ip = models.GenericIPAddressField(null=True)
    ipv4 = models.GenericIPAddressField(protocol="IPv4", null=True)
    ipv6 = models.GenericIPAddressField(protocol="IPv6", null=True)
    uid = models.UUIDField(null=True)
    collated = models.CharField(max_length=50, db_collation="C", null=True)
    ci = CaseInsensitiveTextField(null=True)


class Times(models.Model):
    day = models.DateField(null=True)
    moment = models.DateTimeField(null=True)
    clock = models.TimeField(null=True)
    span = models.DurationField(null=True)


class Blob(models.Model):
    data = models.BinaryField(null=True)


class Documents(models.Model):
    doc = models.JSONField(null=True)
    tags = HStoreField(null=True)


class Relations(models.Model):
    target = models.ForeignKey(Target, null=True, on_delete=models.SET_NULL, related_name="+")
    code = models.ForeignKey(Code, null=True, on_delete=models.SET_NULL, related_name="+")
    number = models.ForeignKey(Numbers, null=True, on_delete=models.SET_NULL, related_name="+")
    one = models.OneToOneField(Target, null=True, on_delete=models.SET_NULL, related_name="+")


class Computed(models.Model):
    """Generated columns (db_persist) and database defaults."""

    a = models.IntegerField(null=True)
    b = models.IntegerField(null=True)
    total = models.GeneratedField(
        expression=F("a") * 2 + F("b"), output_field=models.BigIntegerField(), db_persist=True
    )
    created = models.DateTimeField(db_default=Now())
    when = models.DateTimeField(null=True)
    when_or_created = models.GeneratedField(
        expression=Coalesce(F("when"), F("created")),
        output_field=models.DateTimeField(),
        db_persist=True,
    )
    price = models.DecimalField(
        max_digits=8, decimal_places=3, db_default=Value(decimal.Decimal("1.5"))
    )
    half = models.GeneratedField(
        expression=F("price") / 2,
        output_field=models.DecimalField(max_digits=12, decimal_places=4),
        db_persist=True,
    )
    label = models.CharField(max_length=20, db_default="fresh")
    count = models.IntegerField(db_default=42)
    since = models.DateField(db_default=Value(datetime.date(2000, 1, 1)))


class Arrays(models.Model):
    ints = ArrayField(models.IntegerField(), null=True)
    texts = ArrayField(models.TextField(), null=True)
    moments = ArrayField(models.DateTimeField(), null=True)
    days = ArrayField(models.DateField(), null=True)
    decimals = ArrayField(models.DecimalField(max_digits=8, decimal_places=2), null=True)
    grid = ArrayField(ArrayField(models.IntegerField()), null=True)


class Ranges(models.Model):
    ints = IntegerRangeField(null=True)
    bigs = BigIntegerRangeField(null=True)
    decimals = DecimalRangeField(null=True)
    days = DateRangeField(null=True)
    moments = DateTimeRangeField(null=True)
