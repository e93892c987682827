import pytest

from pgbinding import sql
from pgbinding.exceptions import InvalidIdentifier


@pytest.mark.parametrize("name", ["items", "_x", "Item2", "a$b"])
def test_valid_identifiers_pass(name):
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
def test_invalid_identifiers_are_refused_with_the_name_quoted(name, message):
    with pytest.raises(InvalidIdentifier) as info:
        sql.validate_identifier(name, "table name")
    assert message in str(info.value)
    assert "table name" in str(info.value)


def test_trigger_sql_quotes_the_table_and_passes_the_pk_as_a_literal():
    forward, reverse = sql.trigger_sql("MyTable", "id")
    assert len(forward) == 4 and len(reverse) == 4
    assert all('ON "MyTable"' in s for s in forward + reverse)
    assert "pgbinding_capture_v1('id')" in forward[0]
    assert forward[1].startswith("CREATE TRIGGER pgbinding_update_v1 AFTER UPDATE")
    assert "REFERENCING OLD TABLE AS pgbinding_old NEW TABLE AS pgbinding_new" in forward[1]


def test_trigger_sql_refuses_bad_names():
    with pytest.raises(InvalidIdentifier):
        sql.trigger_sql('x"; DROP TABLE y; --', "id")
    with pytest.raises(InvalidIdentifier):
        sql.trigger_sql("items", "id'); DROP TABLE y; --")


def test_templates_are_versioned_files():
    forward, reverse = sql.schema_sql("v1")
    assert "CREATE FUNCTION pgbinding_capture_v1()" in forward
    assert "DROP FUNCTION IF EXISTS pgbinding_capture_v1()" in reverse
    with pytest.raises(FileNotFoundError, match="no SQL template 'schema_v9'"):
        sql.schema_sql("v9")
