"""Django system checks: a bound model whose capture trigger is missing, outdated or not
applied yet would silently never deliver. A database check: ``check --database default`` runs
it (and ``migrate``, where it stays quiet while migrations are pending); ``pglisten`` refuses to
start on the same finding."""

from __future__ import annotations

from typing import Any

from django.core import checks


@checks.register(checks.Tags.database)
def capture_triggers(databases: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    from django.db import connections
    from django.db.utils import DatabaseError

    from . import status
    from .conf import pgbinding_settings

    alias = pgbinding_settings.DATABASE
    if databases is None or alias not in databases:
        return []
    if connections[alias].vendor != "postgresql":
        return []
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connections[alias])
    if executor.migration_plan(executor.loader.graph.leaf_nodes()):
        # Migrations are pending: `migrate` runs this check before it installs the triggers it
        # is about to install (pglisten still refuses to start without them).
        return []
    try:
        found = status.triggers(alias)
    except DatabaseError as exc:  # pgbinding's own migrations not applied yet
        return [
            checks.Warning(
                f"Could not read pgbinding's capture triggers ({exc}).",
                hint="Run `manage.py migrate`.",
                id="pgbinding.W001",
            )
        ]
    return [
        checks.Error(
            f"The capture trigger of {t.model} ({t.table}) is {t.state}"
            + (f" (version {t.version})" if t.version else "")
            + ": its changes are not delivered.",
            hint="Run `manage.py makemigrations` and `manage.py migrate`.",
            id="pgbinding.E001",
        )
        for t in found
        if t.state != "installed"
    ]
