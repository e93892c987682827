"""App config: find every app's ``bindings.py`` and check the bindings at startup."""

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
        from .conf import pgbinding_settings
        from .registry import registry

        autodiscover_modules("bindings")
        check_all()
        alias = pgbinding_settings.DATABASE
        if alias not in connections.settings:
            raise BindingConfigError(
                f"settings.PGBINDING['DATABASE'] is {alias!r}, which is not in "
                f"settings.DATABASES (known: {', '.join(connections.settings)})"
            )
        engine = connections.settings[alias]["ENGINE"]
        if registry.all() and "postgresql" not in engine and "postgis" not in engine:
            names = ", ".join(b.label() for b in registry.all())
            raise BindingConfigError(
                f"pgbinding captures changes with Postgres triggers, but database {alias!r} uses "
                f"{engine!r}. Bindings found: {names}. Point DATABASES[{alias!r}] at "
                "PostgreSQL (ENGINE 'django.db.backends.postgresql')."
            )
