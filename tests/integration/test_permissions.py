"""The ready-made permission classes."""

import pytest
from django.contrib.auth.models import AnonymousUser, Permission, User

from pgbinding.permissions import (
    AllowAny,
    BasePermission,
    DjangoModelPermissions,
    IsAuthenticated,
    IsAuthenticatedOrReadOnly,
)
from tests.testapp.bindings import ItemBinding

pytestmark = pytest.mark.django_db

ACTIONS = ["create", "update", "delete", "retrieve", "list", "subscribe"]


def allowed(permission: type[BasePermission], user: User | AnonymousUser) -> list[str]:
    return [a for a in ACTIONS if permission().has_permission(user, a, ItemBinding())]


def test_allow_any_and_authentication_classes() -> None:
    user = User.objects.create(username="u")
    anonymous = AnonymousUser()
    assert allowed(AllowAny, anonymous) == ACTIONS
    assert allowed(IsAuthenticated, anonymous) == []
    assert allowed(IsAuthenticated, user) == ACTIONS
    assert allowed(IsAuthenticatedOrReadOnly, anonymous) == ["retrieve", "list", "subscribe"]
    assert allowed(IsAuthenticatedOrReadOnly, user) == ACTIONS


def test_django_model_permissions_map_actions_to_add_change_delete_view() -> None:
    user = User.objects.create(username="p")
    assert allowed(DjangoModelPermissions, user) == []
    user.user_permissions.add(Permission.objects.get(codename="change_item"))
    user = User.objects.get(pk=user.pk)  # fresh permission cache
    assert allowed(DjangoModelPermissions, user) == ["update"]
    user.user_permissions.add(Permission.objects.get(codename="view_item"))
    user = User.objects.get(pk=user.pk)
    assert allowed(DjangoModelPermissions, user) == ["update", "retrieve", "list", "subscribe"]
    assert allowed(DjangoModelPermissions, AnonymousUser()) == []


def test_binding_without_permissions_denies_everything() -> None:
    from tests.testapp.bindings import ItemValueBinding

    user = User.objects.create(username="x", is_staff=True, is_superuser=True)
    assert not any(ItemValueBinding().has_permission(user, a, None) for a in ACTIONS)
