import pytest

from pgbinding.capture import sql
from pgbinding.exceptions import InvalidIdentifier


@pytest.mark.parametrize("name", ["items", "_x", "Item2", "a$b"])
def test_valid_identifiers_pass(name: str) -> None:
    assert sql.validate_identifier(name) == name


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ('bad"name', "'bad\"name' is not a valid name"),
        ("1abc", "'1abc' is not a valid name"),
        ("", "'' is not a valid name"),
        ("drop table x;--", "is not a valid name"),
        ("x" * 64, "64 bytes long"),
    ],
)
def test_invalid_identifiers_are_refused_with_the_name_quoted(name: str, message: str) -> None:
    with pytest.raises(InvalidIdentifier) as info:
        sql.validate_identifier(name, "table name")
    assert message in str(info.value)
    assert "table name" in str(info.value)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_trigger_sql_quotes_the_table_and_passes_the_pk_as_a_literal(version: str) -> None:
    forward, reverse = sql.trigger_sql("MyTable", "id", version)
    assert len(forward) == 4 and len(reverse) == 4
    assert all('ON "MyTable"' in s for s in forward + reverse)
    assert f"pgbinding_capture_{version}('id')" in forward[0]
    assert forward[1].startswith(f"CREATE TRIGGER pgbinding_update_{version} AFTER UPDATE")
    assert "REFERENCING OLD TABLE AS pgbinding_old NEW TABLE AS pgbinding_new" in forward[1]


def test_new_migrations_install_the_current_version() -> None:
    assert sql.TRIGGER_VERSION == "v2" and sql.SCHEMA_VERSION == "v5"
    forward, _ = sql.trigger_sql("t", "id")
    assert "pgbinding_capture_v2('id')" in forward[0]


def test_trigger_sql_refuses_bad_names() -> None:
    with pytest.raises(InvalidIdentifier):
        sql.trigger_sql('x"; DROP TABLE y; --', "id")
    with pytest.raises(InvalidIdentifier):
        sql.trigger_sql("items", "id'); DROP TABLE y; --")


def test_templates_are_versioned_files() -> None:
    forward, reverse = sql.schema_sql("v1")
    assert "CREATE FUNCTION pgbinding_capture_v1()" in forward
    assert "DROP FUNCTION IF EXISTS pgbinding_capture_v1()" in reverse
    forward, reverse = sql.schema_sql("v2")
    # v2 pins what to_jsonb's output depends on, and where the function finds its tables.
    for setting in ("TimeZone = 'UTC'", "IntervalStyle = 'postgres'", "bytea_output = 'hex'"):
        assert f"SET {setting}" in forward
    assert "SET search_path = pg_catalog, %I, pg_temp" in forward
    assert "DROP FUNCTION IF EXISTS pgbinding_capture_v2()" in reverse
    whole, _ = sql.full_schema_sql("v2")
    assert whole.index("pgbinding_capture_v1") < whole.index("pgbinding_capture_v2")
    with pytest.raises(FileNotFoundError, match="no SQL template 'schema_v9'"):
        sql.schema_sql("v9")
