"""Read-only ORM views of pgbinding's tables, for the admin, tests and ad-hoc queries.

The tables themselves are created by ``migrations_templates/schema_v1.sql`` (see
``migrations/0001_initial.py``); these models are unmanaged so Django never alters them.
"""

from __future__ import annotations

from django.db import models


class Change(models.Model):
    """One captured row change, in the order the listener reads them."""

    id = models.BigAutoField(primary_key=True)
    created_at = models.DateTimeField()
    table_name = models.TextField()
    op = models.CharField(max_length=1)
    row_pk = models.TextField(null=True, db_column="pk")
    old = models.JSONField(null=True)
    new = models.JSONField(null=True)

    class Meta:
        managed = False
        db_table = "pgbinding_change"
        ordering = ["id"]

    def __str__(self) -> str:
        return f"#{self.id} {self.op} {self.table_name} pk={self.row_pk}"


class ListenerState(models.Model):
    """Where a listener has got to in the change log."""

    name = models.TextField(primary_key=True)
    position = models.BigIntegerField()
    pending = models.JSONField()
    updated_at = models.DateTimeField()
    #: The listener instance that leads under this name, its Postgres backend, and until when
    #: its claim holds unless renewed (schema v2).
    leader = models.TextField(null=True)
    leader_pid = models.IntegerField(null=True)
    lease_until = models.DateTimeField(null=True)

    class Meta:
        managed = False
        db_table = "pgbinding_listener"

    def __str__(self) -> str:
        return f"listener {self.name!r} at {self.position}"
