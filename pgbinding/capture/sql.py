"""The SQL that migrations install, rendered from the versioned files in templates/.

Templates are released SQL: a version (``_v1``) is never edited once published; a change is a
new version, and ``makemigrations`` writes a migration that replaces the old triggers. Table
and column names are quoted by psycopg (``sql.Identifier``), never pasted into the text.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from psycopg import sql

from ..exceptions import InvalidIdentifier

TEMPLATES = Path(__file__).parent / "templates"

#: The schema version installed by pgbinding's own migrations (each version's file applies on
#: top of the one before: 0001 installs v1, 0002 adds v2, 0003 adds v3: logical capture, 0004
#: v4: the capture functions' plan_cache_mode, 0005 v5: a TRUNCATE of the log counts as pruning).
SCHEMA_VERSION = "v5"
#: The per-table trigger version new migrations install. A database with older triggers is
#: moved forward by the migration ``makemigrations`` writes (remove old, install new, in one
#: transaction).
TRIGGER_VERSION = "v2"

#: The NOTIFY channel the capture triggers wake the listener on.
NOTIFY_CHANNEL = "pgbinding"

#: Names of the triggers a version installs on each bound table.
TRIGGER_NAMES = {
    "v1": (
        "pgbinding_insert_v1",
        "pgbinding_update_v1",
        "pgbinding_delete_v1",
        "pgbinding_truncate_v1",
    ),
    "v2": (
        "pgbinding_insert_v2",
        "pgbinding_update_v2",
        "pgbinding_delete_v2",
        "pgbinding_truncate_v2",
    ),
}

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")
_MAX_IDENTIFIER_BYTES = 63


def validate_identifier(name: str, what: str = "identifier") -> str:
    """Return ``name`` if Postgres can take it unquoted-safe and untruncated, else raise."""
    if not isinstance(name, str) or not _IDENTIFIER.match(name):
        raise InvalidIdentifier(
            f"{what} {name!r} is not a valid name for pgbinding: use letters, digits, "
            "underscores and $, starting with a letter or underscore"
        )
    if len(name.encode()) > _MAX_IDENTIFIER_BYTES:
        raise InvalidIdentifier(
            f"{what} {name!r} is {len(name.encode())} bytes long; Postgres truncates names "
            f"longer than {_MAX_IDENTIFIER_BYTES} bytes"
        )
    return name


@cache
def template(name: str) -> str:
    """The text of ``migrations_templates/<name>.sql``."""
    path = TEMPLATES / f"{name}.sql"
    if not path.is_file():
        raise FileNotFoundError(f"pgbinding has no SQL template {name!r} (looked for {path})")
    return path.read_text()


def schema_sql(version: str = SCHEMA_VERSION) -> tuple[str, str]:
    """(forward, reverse) SQL of one schema version, as its migration runs it (each version
    applies on top of the one before)."""
    return template(f"schema_{version}"), template(f"schema_{version}.reverse")


def full_schema_sql(version: str = SCHEMA_VERSION) -> tuple[str, str]:
    """(forward, reverse) SQL of the whole schema up to ``version``: what pgbinding's migrations
    install one after the other, as one script (benchmarks and tools that skip migrations)."""
    last = int(version.lstrip("v"))
    parts = [schema_sql(f"v{n}") for n in range(1, last + 1)]
    return "\n".join(f for f, _ in parts), "\n".join(r for _, r in reversed(parts))


def trigger_sql(
    table: str, pk_column: str, version: str = TRIGGER_VERSION
) -> tuple[list[str], list[str]]:
    """(forward, reverse) statements that install the capture triggers on one table."""
    validate_identifier(table, "table name")
    validate_identifier(pk_column, "primary-key column")
    params = {"table": sql.Identifier(table), "pk": sql.Literal(pk_column)}
    forward = sql.SQL(template(f"trigger_{version}")).format(**params).as_string(None)
    reverse = sql.SQL(template(f"trigger_{version}.reverse")).format(**params).as_string(None)
    return _statements(forward), _statements(reverse)


def _statements(text: str) -> list[str]:
    """Split a template into statements, one line each (comments dropped, spaces folded)."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("--")]
    return [" ".join(s.split()) + ";" for s in " ".join(lines).split(";") if s.strip()]


def rename_column_sql(table: str, old: str, new: str) -> tuple[list[str], list[str]]:
    """(forward, reverse) statements that rename a column in the logged rows of ``table``, so
    changes logged before a ``RenameField`` are delivered under the field's new column."""
    validate_identifier(table, "table name")
    validate_identifier(old, "column name")
    validate_identifier(new, "column name")
    return [_rename_column(table, old, new)], [_rename_column(table, new, old)]


def _rename_column(table: str, old: str, new: str) -> str:
    return (
        sql.SQL(
            "UPDATE pgbinding_change SET"
            " old = CASE WHEN old ? {old}"
            " THEN (old - {old}) || jsonb_build_object({new}, old -> {old}) ELSE old END,"
            " new = CASE WHEN new ? {old}"
            " THEN (new - {old}) || jsonb_build_object({new}, new -> {old}) ELSE new END"
            " WHERE table_name = {table} AND (old ? {old} OR new ? {old});"
        )
        .format(old=sql.Literal(old), new=sql.Literal(new), table=sql.Literal(table))
        .as_string(None)
    )


def rename_table_sql(old: str, new: str) -> tuple[list[str], list[str]]:
    """(forward, reverse) statements that move the logged changes of a renamed table to its new
    name (the triggers themselves follow the table)."""
    validate_identifier(old, "table name")
    validate_identifier(new, "table name")

    def render(a: str, b: str) -> str:
        return (
            sql.SQL("UPDATE pgbinding_change SET table_name = {b} WHERE table_name = {a};")
            .format(a=sql.Literal(a), b=sql.Literal(b))
            .as_string(None)
        )

    return [render(old, new)], [render(new, old)]
