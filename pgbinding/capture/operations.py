"""Migration operations that install capture triggers, and the makemigrations integration.

``makemigrations`` (its autodetector extended by :func:`install` when the app is ready)
compares the triggers recorded in the migration state with
the registered bindings and writes :class:`InstallBindingTrigger` for every newly bound model and
:class:`RemoveBindingTrigger` when a model's last binding goes away. The operation carries the
rendered SQL, so the SQL a database runs is pinned in the user's migration file.

Where the operation goes: into the migrations of the app that declares the binding (the app
whose ``bindings.py`` holds it). For a model of your own app that is the model's app; for a model
of an app you do not own (``auth.User``) it is *your* app, so nothing is ever written into
Django's or a third party's migrations folder.
"""

from __future__ import annotations

from typing import Any

from django.apps import apps as global_apps
from django.db import router
from django.db.backends.base.schema import BaseDatabaseSchemaEditor
from django.db.migrations.autodetector import (
    MigrationAutodetector as DjangoAutodetector,
)
from django.db.migrations.autodetector import (
    OperationDependency,
)
from django.db.migrations.operations.base import Operation, OperationCategory
from django.db.migrations.state import ProjectState

from ..conf import pgbinding_settings
from ..registry import registry
from . import sql

#: What must match between the installed and the wanted capture of a model (the logical
#: backend adds its publication and slot).
_COMPARED = ("version", "pk", "publication", "slot")
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
            _execute(schema_editor, self.sql if self.installs else self.reverse_sql)

    def database_backwards(
        self,
        app_label: str,
        schema_editor: BaseDatabaseSchemaEditor,
        from_state: ProjectState,
        to_state: ProjectState,
    ) -> None:
        if self._allowed(schema_editor, app_label):
            _execute(schema_editor, self.reverse_sql if self.installs else self.sql)


class InstallBindingTrigger(_Toggle):
    """Install pgbinding's capture triggers on one model's table."""

    installs = True

    def describe(self) -> str:
        return f"Install pgbinding capture trigger ({self.version}) on {self.model}"

    @property
    def migration_name_fragment(self) -> str:
        return f"pgbinding_{self.model.replace('.', '_')}"


class RemoveBindingTrigger(_Toggle):
    """Remove pgbinding's capture triggers from one model's table (its last binding is gone)."""

    installs = False

    def describe(self) -> str:
        return f"Remove pgbinding capture trigger ({self.version}) from {self.model}"

    @property
    def migration_name_fragment(self) -> str:
        return f"remove_pgbinding_{self.model.replace('.', '_')}"


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


def _column(state_field: Any, name: str) -> str:
    field = state_field.clone()
    field.set_attributes_from_name(name)
    return str(field.get_attname_column()[1])


def desired_triggers() -> dict[tuple[str, str], dict[str, str]]:
    """For every bound model: the trigger spec the current bindings want, and the app whose
    migrations should hold it."""
    wanted: dict[tuple[str, str], dict[str, str]] = {}
    for binding in sorted(registry.all(), key=lambda b: (b.__module__, b.__qualname__)):
        meta = binding.model._meta
        key = (meta.app_label, meta.model_name or "")
        if key in wanted:
            continue
        owner = global_apps.get_containing_app_config(binding.__module__)
        assert meta.pk is not None
        wanted[key] = {
            "version": sql.TRIGGER_VERSION,
            "pk": str(meta.pk.column),
            "app": owner.label if owner is not None else meta.app_label,
        }
        if pgbinding_settings.CAPTURE == "logical":  # capture/logical_ops.py
            wanted[key]["version"] = "logical_v1"
            wanted[key]["publication"] = str(pgbinding_settings.PUBLICATION_NAME)
            wanted[key]["slot"] = str(pgbinding_settings.SLOT_NAME)
    return wanted


class AutodetectorMixin(DjangoAutodetector):
    """pgbinding's part of the autodetector: the capture triggers of bound models, and rewrites
    of logged changes when a bound model or field is renamed. Mixed into whatever autodetector
    ``makemigrations`` and ``migrate`` use (:func:`install`), so it composes with other apps
    that extend it the same way."""

    def generate_renamed_models(self) -> None:
        super().generate_renamed_models()
        for (app_label, model_name), old_name in sorted(self.renamed_models.items()):
            old_state = self.from_state.models[app_label, old_name]
            if STATE_KEY not in old_state.options:
                continue
            new_state = self.to_state.models[app_label, model_name]
            old_table = old_state.options.get("db_table") or f"{app_label}_{old_name}"
            new_table = new_state.options.get("db_table") or f"{app_label}_{model_name}"
            if old_table != new_table:
                forward, reverse = sql.rename_table_sql(old_table, new_table)
                what = f"table {old_table} renamed to {new_table}"
                self.add_operation(app_label, RewriteCapturedChanges(what, forward, reverse))

    def generate_renamed_fields(self) -> None:
        renames = []
        # Django's own list of the renames it found (create_renamed_fields, Django >= 5.1).
        for op in getattr(self, "renamed_operations", []):
            rem_app, rem_model, _, rem_field, app_label, model_name, field, field_name = op
            old_state = self.from_state.models[rem_app, rem_model]
            if STATE_KEY not in old_state.options:
                continue
            old_column = _column(old_state.get_field(rem_field), rem_field)
            new_column = _column(field, field_name)
            if old_column != new_column:
                table = (
                    self.to_state.models[app_label, model_name].options.get("db_table")
                    or f"{app_label}_{model_name}"
                )
                renames.append((app_label, table, old_column, new_column))
        super().generate_renamed_fields()
        for app_label, table, old_column, new_column in renames:
            forward, reverse = sql.rename_column_sql(table, old_column, new_column)
            what = f"column {table}.{old_column} renamed to {new_column}"
            self.add_operation(app_label, RewriteCapturedChanges(what, forward, reverse))

    def generate_altered_db_table(self) -> None:
        super().generate_altered_db_table()
        self.generate_pgbinding_triggers()

    def generate_pgbinding_triggers(self) -> None:
        wanted = desired_triggers()
        renamed_from = {(app, old): (app, new) for (app, new), old in self.renamed_models.items()}
        for key in sorted(set(self.from_state.models) | set(wanted)):
            if key in renamed_from:
                continue  # its triggers followed the table; judged under the new name
            old_key = (key[0], self.renamed_models.get(key, key[1]))
            old_state = self.from_state.models.get(old_key)
            installed = old_state.options.get(STATE_KEY) if old_state is not None else None
            want = wanted.get(key) if key in self.to_state.models else None
            if want is not None and installed is not None:
                same = all(want.get(k) == installed.get(k) for k in _COMPARED)
                if same:
                    continue
            if installed is not None and key in self.to_state.models:
                self._add_trigger_op(RemoveBindingTrigger, key, installed)
            if want is not None:
                self._add_trigger_op(InstallBindingTrigger, key, want)

    def _add_trigger_op(
        self, op_class: type[_Toggle], key: tuple[str, str], spec: dict[str, str]
    ) -> None:
        app_label, model_name = key
        state = self.to_state.models[key]
        table = state.options.get("db_table") or f"{app_label}_{model_name}"
        op: _Toggle
        if spec["version"].startswith("logical_"):
            from .logical_ops import make_operation

            installs = op_class is InstallBindingTrigger
            op = make_operation(installs, f"{app_label}.{model_name}", table, spec)
        else:
            forward, reverse = sql.trigger_sql(table, spec["pk"], spec["version"])
            op = op_class(
                model=f"{app_label}.{model_name}",
                sql=forward,
                reverse_sql=reverse,
                version=spec["version"],
                pk_column=spec["pk"],
            )
        deps: list[Any] = [
            OperationDependency(app_label, model_name, None, OperationDependency.Type.CREATE),
            OperationDependency("pgbinding", "__first__", None, OperationDependency.Type.CREATE),
        ]
        self.add_operation(spec["app"], op, dependencies=deps)


# Migration files import operations by their class's module: keep the public path they have
# always been written with, so every project's migrations stay importable.
for _op in (InstallBindingTrigger, RemoveBindingTrigger, RewriteCapturedChanges):
    _op.__module__ = "pgbinding.operations"


class MigrationAutodetector(AutodetectorMixin, DjangoAutodetector):
    """Django's autodetector with pgbinding's operations (for tools and tests)."""


def install() -> None:
    """Make ``makemigrations`` and ``migrate`` detect pgbinding's operations, by mixing
    :class:`AutodetectorMixin` into the autodetector each command uses (the module global and,
    from Django 5.2, the command's ``autodetector`` attribute, which Django's checks require to
    be one class for both commands). Called from the app's ``ready()``; idempotent; keeps any
    other app's extension of the autodetector."""
    from django.core.management.commands import makemigrations, migrate

    patched: dict[type, type] = {}

    def mixed(current: type) -> type:
        if issubclass(current, AutodetectorMixin):
            return current
        if current not in patched:
            patched[current] = type("MigrationAutodetector", (AutodetectorMixin, current), {})
        return patched[current]

    for module in (makemigrations, migrate):
        for owner, attr in ((module, "MigrationAutodetector"), (module.Command, "autodetector")):
            current = getattr(owner, attr, None)
            if isinstance(current, type):
                setattr(owner, attr, mixed(current))
