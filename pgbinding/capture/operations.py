"""Migration operations that install capture triggers (and rewrite logged changes on renames).

``makemigrations`` (see :mod:`.autodetect`) writes :class:`InstallBindingTrigger` for every
newly bound model and :class:`RemoveBindingTrigger` when a model's last binding goes away. The
operation carries the rendered SQL, so the SQL a database runs is pinned in the user's
migration file.

Where the operation goes: into the migrations of the app that declares the binding (the app
whose ``bindings.py`` holds it). For a model of your own app that is the model's app; for a model
of an app you do not own (``auth.User``) it is *your* app, so nothing is ever written into
Django's or a third party's migrations folder.
"""

from __future__ import annotations

from typing import Any

from django.db import router
from django.db.backends.base.schema import BaseDatabaseSchemaEditor
from django.db.migrations.operations.base import Operation, OperationCategory
from django.db.migrations.state import ProjectState

#: The key under which a model state records its installed trigger.
# Leading underscore: rendered model states ignore it (Options drops private Meta attributes).
STATE_KEY = "_pgbinding_trigger"


def _split(model: str) -> tuple[str, str]:
    app_label, _, model_name = model.lower().partition(".")
    if not app_label or not model_name:
        raise ValueError(f"expected 'app_label.modelname', got {model!r}")
    return app_label, model_name


class _TriggerOperation(Operation):
    reduces_to_sql = True
    reversible = True
    category = OperationCategory.SQL
    # Operations are applied in the migration's own app; ours may target another app's model.
    elidable = False

    def __init__(
        self,
        model: str,
        sql: list[str],
        reverse_sql: list[str],
        version: str,
        pk_column: str,
    ) -> None:
        self.model = model.lower()
        self.sql = list(sql)
        self.reverse_sql = list(reverse_sql)
        self.version = version
        self.pk_column = pk_column

    def deconstruct(self) -> tuple[str, list[Any], dict[str, Any]]:
        kwargs = {
            "model": self.model,
            "version": self.version,
            "pk_column": self.pk_column,
            "sql": self.sql,
            "reverse_sql": self.reverse_sql,
        }
        return (type(self).__name__, [], kwargs)

    def _allowed(self, schema_editor: BaseDatabaseSchemaEditor, app_label: str) -> bool:
        """Run only on Postgres, and only where the routers let the target model migrate."""
        if schema_editor.connection.vendor != "postgresql":
            return False
        model_app, model_name = _split(self.model)
        return bool(
            router.allow_migrate(schema_editor.connection.alias, model_app, model_name=model_name)
        )

    def _record(self, state: ProjectState, app_label: str, installed: bool) -> None:
        key = _split(self.model)
        if key not in state.models:
            return
        options = state.models[key].options
        if installed:
            options[STATE_KEY] = {
                "version": self.version,
                "pk": self.pk_column,
                "app": app_label,
            }
        else:
            options.pop(STATE_KEY, None)


def _execute(schema_editor: BaseDatabaseSchemaEditor, statements: list[str]) -> None:
    for statement in statements:
        schema_editor.execute(statement, params=None)


class _Toggle(_TriggerOperation):
    """Runs ``sql`` one way and ``reverse_sql`` the other; ``installs`` says which way is
    forwards."""

    installs: bool
    #: What describe() calls this capture, and how migration names start.
    noun = "capture trigger"
    name_prefix = "pgbinding"

    def describe(self) -> str:
        verb, where = ("Install", "on") if self.installs else ("Remove", "from")
        return f"{verb} pgbinding {self.noun} ({self.version}) {where} {self.model}"

    @property
    def migration_name_fragment(self) -> str:
        name = f"{self.name_prefix}_{self.model.replace('.', '_')}"
        return name if self.installs else f"remove_{name}"

    def state_forwards(self, app_label: str, state: ProjectState) -> None:
        self._record(state, app_label, installed=self.installs)

    def database_forwards(
        self,
        app_label: str,
        schema_editor: BaseDatabaseSchemaEditor,
        from_state: ProjectState,
        to_state: ProjectState,
    ) -> None:
        if self._allowed(schema_editor, app_label):
            self._apply(schema_editor, install=self.installs)

    def database_backwards(
        self,
        app_label: str,
        schema_editor: BaseDatabaseSchemaEditor,
        from_state: ProjectState,
        to_state: ProjectState,
    ) -> None:
        if self._allowed(schema_editor, app_label):
            self._apply(schema_editor, install=not self.installs)

    def _apply(self, schema_editor: BaseDatabaseSchemaEditor, install: bool) -> None:
        """Install the capture (``sql``) or remove it (``reverse_sql``)."""
        _execute(schema_editor, self.sql if install else self.reverse_sql)


class InstallBindingTrigger(_Toggle):
    """Install pgbinding's capture triggers on one model's table."""

    installs = True


class RemoveBindingTrigger(_Toggle):
    """Remove pgbinding's capture triggers from one model's table (its last binding is gone)."""

    installs = False


class RewriteCapturedChanges(Operation):
    """Rewrite changes already in the log after a schema change of a bound table, so they are
    delivered in terms of the new schema (the SQL is pinned in the migration file)."""

    reduces_to_sql = True
    reversible = True
    category = OperationCategory.SQL
    elidable = False

    def __init__(self, what: str, sql: list[str], reverse_sql: list[str]) -> None:
        self.what = what
        self.sql = list(sql)
        self.reverse_sql = list(reverse_sql)

    def deconstruct(self) -> tuple[str, list[Any], dict[str, Any]]:
        kwargs = {"what": self.what, "sql": self.sql, "reverse_sql": self.reverse_sql}
        return (type(self).__name__, [], kwargs)

    def state_forwards(self, app_label: str, state: ProjectState) -> None:
        pass

    def database_forwards(
        self,
        app_label: str,
        schema_editor: BaseDatabaseSchemaEditor,
        from_state: ProjectState,
        to_state: ProjectState,
    ) -> None:
        if _has_log(schema_editor):
            _execute(schema_editor, self.sql)

    def database_backwards(
        self,
        app_label: str,
        schema_editor: BaseDatabaseSchemaEditor,
        from_state: ProjectState,
        to_state: ProjectState,
    ) -> None:
        if _has_log(schema_editor):
            _execute(schema_editor, self.reverse_sql)

    def describe(self) -> str:
        return f"Rewrite logged pgbinding changes: {self.what}"

    @property
    def migration_name_fragment(self) -> str:
        return "pgbinding_rewrite_log"


def _has_log(schema_editor: BaseDatabaseSchemaEditor) -> bool:
    if schema_editor.connection.vendor != "postgresql":
        return False
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass('pgbinding_change') IS NOT NULL")
        row = cursor.fetchone()
    return bool(row and row[0])


# Migration files import operations by their class's module: keep the public path they have
# always been written with, so every project's migrations stay importable.
for _op in (InstallBindingTrigger, RemoveBindingTrigger, RewriteCapturedChanges):
    _op.__module__ = "pgbinding.operations"
