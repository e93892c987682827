"""Read-only admin pages for the listeners' state and the recent change log. Opt-in
(``PGBINDING = {"ADMIN": True}``): the change log holds whole rows, unbound columns included,
so only staff with the view permission of these models see them."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from .conf import pgbinding_settings
from .models import Change, ListenerState


class ReadOnly(admin.ModelAdmin):  # type: ignore[type-arg]
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ListenerStateAdmin(ReadOnly):
    list_display = ("name", "position", "leader", "leader_pid", "lease_until", "updated_at")


class ChangeAdmin(ReadOnly):
    list_display = ("id", "created_at", "table_name", "op", "row_pk")
    list_filter = ("table_name", "op")
    search_fields = ("row_pk",)
    ordering = ("-id",)
    show_full_result_count = False  # the log can be large: no count(*) per page


def register(site: admin.AdminSite = admin.site) -> None:
    site.register(ListenerState, ListenerStateAdmin)
    site.register(Change, ChangeAdmin)


if pgbinding_settings.ADMIN:
    register()
