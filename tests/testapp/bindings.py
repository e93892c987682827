from typing import Any, ClassVar, cast

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser, User
from django.db import models

from pgbinding import WebsocketBinding
from pgbinding.rules import Rule

from .models import Counter, Item

#: Who a binding's permission hooks are asked about: the socket's ``scope["user"]``.
AnyUser = User | AnonymousUser


class ItemBinding(WebsocketBinding):
    model = Item
    stream = "items"
    fields = ["name", "value", "status", "owner", "price", "due", "day", "uid", "extra", "body"]

    @classmethod
    def group_names(cls, instance: models.Model) -> list[str]:
        item = cast(Item, instance)  # the binding's model: Binding is not generic in it
        groups = ["items", f"items-status-{item.status}"]
        if item.owner_id is not None:
            groups.append(f"items-owner-{item.owner_id}")
        return groups

    def has_permission(self, user: AnyUser, action: str, pk: Any) -> bool:
        return user.is_staff


class ItemValueBinding(WebsocketBinding):
    """A second binding of the same model with a narrower whitelist."""

    model = Item
    stream = "itemvalues"
    fields = ["value"]
    # Its group events reach every socket in the group, signed in or not (no inbound action is
    # allowed: no permissions).
    send_to_everyone = True

    @classmethod
    def group_names(cls, instance: models.Model) -> list[str]:
        return ["itemvalues"]


class CounterBinding(WebsocketBinding):
    """The stress and fault tests' table: anyone may read it (live too), signed-in users write."""

    from pgbinding.permissions import IsAuthenticatedOrReadOnly

    model = Counter
    stream = "counters"
    exclude = []
    permission_classes = [IsAuthenticatedOrReadOnly]

    @classmethod
    def group_names(cls, instance: models.Model) -> list[str]:
        return ["counters"]


class UserBinding(WebsocketBinding):
    """Binding a model of an app we do not own: its trigger migration lives in testapp."""

    model = get_user_model()
    stream = "users"
    fields = ["username", "is_staff"]


class OwnedItemBinding(WebsocketBinding):
    """Each user sees and edits only the items they own."""

    from pgbinding.permissions import IsAuthenticated
    from pgbinding.rules import Owner

    model = Item
    stream = "myitems"
    fields = ["name", "value", "status", "owner"]
    read_only_fields = ["owner"]
    permission_classes = [IsAuthenticated]
    read_rule: ClassVar[Rule] = Owner("owner")  # subclasses may read all rows

    def has_object_permission(self, user: AnyUser, action: str, instance: models.Model) -> bool:
        return cast(Item, instance).owner_id == user.pk

    def pre_save(self, instance: models.Model, action: str) -> None:
        if action == "create":
            cast(Item, instance).owner = self.user


def _item_serializer() -> type[Any]:
    from rest_framework import serializers

    class Serializer(serializers.ModelSerializer):  # type: ignore[misc]
        class Meta:
            model = Item
            fields = ["name", "value"]

        def validate_value(self, value: int) -> int:
            if value < 0:
                raise serializers.ValidationError("must not be negative")
            return value

    return Serializer


class SerializedItemBinding(WebsocketBinding):
    """Inbound writes validated by a DRF serializer; unknown fields are dropped, not refused."""

    from pgbinding.permissions import IsAuthenticated

    model = Item
    stream = "serialized"
    fields = ["name", "value"]
    ignore_unknown_fields = True
    permission_classes = [IsAuthenticated]
    serializer_class = _item_serializer()
