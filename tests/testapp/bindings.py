from pgbinding import WebsocketBinding

from .models import Counter, Item


class ItemBinding(WebsocketBinding):
    model = Item
    stream = "items"
    fields = ["name", "value", "status", "owner", "price", "due", "day", "uid", "extra", "body"]

    @classmethod
    def group_names(cls, instance):
        groups = ["items", f"items-status-{instance.status}"]
        if instance.owner_id is not None:
            groups.append(f"items-owner-{instance.owner_id}")
        return groups

    def has_permission(self, user, action, pk):
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
    def group_names(cls, instance):
        return ["itemvalues"]


class CounterBinding(WebsocketBinding):
    """The stress and fault tests' table: anyone may read it (live too), signed-in users write."""

    from pgbinding.permissions import IsAuthenticatedOrReadOnly

    model = Counter
    stream = "counters"
    exclude = []
    permission_classes = [IsAuthenticatedOrReadOnly]

    @classmethod
    def group_names(cls, instance):
        return ["counters"]


class UserBinding(WebsocketBinding):
    """Binding a model of an app we do not own: its trigger migration lives in testapp."""

    from django.contrib.auth import get_user_model

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
    read_rule = Owner("owner")

    def has_object_permission(self, user, action, instance):
        return instance.owner_id == user.pk

    def pre_save(self, instance, action):
        if action == "create":
            instance.owner = self.user


def _item_serializer():
    from rest_framework import serializers

    class Serializer(serializers.ModelSerializer):
        class Meta:
            model = Item
            fields = ["name", "value"]

        def validate_value(self, value):
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
