"""App config: find every app's ``bindings.py``, check the bindings at startup, and extend
``makemigrations``/``migrate`` with pgbinding's trigger operations."""

from __future__ import annotations

from django.apps import AppConfig
from django.db import connections
from django.utils.module_loading import autodiscover_modules

from .exceptions import BindingConfigError


class PgBindingConfig(AppConfig):
    name = "pgbinding"
    verbose_name = "pgbinding"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from .bindings import check_all
        from .capture.autodetect import install
        from .conf import pgbinding_settings
        from .registry import registry

        install()
        from django.db.models.signals import pre_migrate

        from .capture.logical_ops import create_slots

        pre_migrate.connect(create_slots, sender=self)  # logical capture's slot, before migrating
        from . import checks  # noqa: F401 (registers the system checks)

        autodiscover_modules("bindings")
        check_all()
        alias = pgbinding_settings.DATABASE
        if alias not in connections.settings:
            raise BindingConfigError(
                f"settings.PGBINDING['DATABASE'] is {alias!r}, which is not in "
                f"settings.DATABASES (known: {', '.join(connections.settings)})"
            )
        vendor = connections[alias].vendor  # postgis, psqlextra...: all "postgresql"
        if registry.all() and vendor != "postgresql":
            engine = connections.settings[alias]["ENGINE"]
            names = ", ".join(b.label() for b in registry.all())
            raise BindingConfigError(
                f"pgbinding captures changes with Postgres triggers, but database {alias!r} uses "
                f"{engine!r} ({vendor}). Bindings found: {names}. Point DATABASES[{alias!r}] at "
                "PostgreSQL (ENGINE 'django.db.backends.postgresql')."
            )
