"""Ready-made permission classes, in the DRF style: ``has_permission`` then
``has_object_permission``. Name them on a binding::

    class ItemBinding(WebsocketBinding):
        permission_classes = [IsAuthenticatedOrReadOnly]

A binding that sets neither ``permission_classes`` nor its own ``has_permission`` allows
nothing (default deny).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from django.db import models


class Binding(Protocol):
    """What permission classes read of the binding asking (a ``pgbinding.Binding``)."""

    @property
    def model(self) -> type[models.Model]: ...


READ_ACTIONS = frozenset({"retrieve", "list", "subscribe"})
WRITE_ACTIONS = frozenset({"create", "update", "delete"})


class BasePermission:
    def has_permission(self, user: Any, action: str, binding: Binding) -> bool:
        return True

    def has_object_permission(
        self, user: Any, action: str, instance: models.Model, binding: Binding
    ) -> bool:
        return True


class AllowAny(BasePermission):
    """Anyone, signed in or not, may do anything. For demos and public read-write data."""


class IsAuthenticated(BasePermission):
    def has_permission(self, user: Any, action: str, binding: Binding) -> bool:
        return bool(user is not None and user.is_authenticated)


class IsAuthenticatedOrReadOnly(BasePermission):
    def has_permission(self, user: Any, action: str, binding: Binding) -> bool:
        return action in READ_ACTIONS or bool(user is not None and user.is_authenticated)


class DjangoModelPermissions(BasePermission):
    """Django's model permissions: create needs ``add``, update ``change``, delete ``delete``,
    and reading needs ``view``."""

    codenames = {
        "create": "add",
        "update": "change",
        "delete": "delete",
        "retrieve": "view",
        "list": "view",
        "subscribe": "view",
    }

    def has_permission(self, user: Any, action: str, binding: Binding) -> bool:
        if user is None or not user.is_authenticated or action not in self.codenames:
            return False
        meta = binding.model._meta
        return bool(user.has_perm(f"{meta.app_label}.{self.codenames[action]}_{meta.model_name}"))
