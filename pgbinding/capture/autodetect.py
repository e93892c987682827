"""The makemigrations integration: which capture each bound model wants, and the autodetector
that writes the operations (:mod:`.operations` for triggers, :mod:`.logical_ops` for logical
capture) into the migrations of the app that declares the binding.

``makemigrations`` and ``migrate`` use Django's autodetector with :class:`AutodetectorMixin`
mixed in (:func:`install`, called when the app is ready): it compares the capture recorded in
the migration state with the registered bindings, and rewrites logged changes when a bound
model or column is renamed.
"""

from __future__ import annotations

from typing import Any

from django.apps import apps as global_apps
from django.db.migrations.autodetector import (
    MigrationAutodetector as DjangoAutodetector,
)
from django.db.migrations.autodetector import (
    OperationDependency,
)

from ..conf import pgbinding_settings
from ..registry import registry
from . import sql
from .logical_ops import make_operation
from .operations import (
    STATE_KEY,
    InstallBindingTrigger,
    RemoveBindingTrigger,
    RewriteCapturedChanges,
    _Toggle,
)

#: What must match between the installed and the wanted capture of a model (the logical
#: backend adds its publication and slot).
_COMPARED = ("version", "pk", "publication", "slot")


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
