"""The one binding of the example: every item, live, on the stream "items".

Anyone may read (subscribe, list, retrieve); signed-in users may write, but only their own
items (staff: any item).
"""

from pgbinding import WebsocketBinding
from pgbinding.permissions import READ_ACTIONS, IsAuthenticatedOrReadOnly

from .models import Item


class ItemBinding(WebsocketBinding):
    model = Item
    stream = "items"
    fields = ["name", "value", "owner", "status"]
    # Reads for everyone, writes for signed-in users ...
    permission_classes = [IsAuthenticatedOrReadOnly]

    def has_object_permission(self, user, action, instance):
        # ... and, row by row, only on their own items. For update and delete pgbinding
        # passes the row as stored, so nobody takes over an item by sending a new owner.
        return action in READ_ACTIONS or user.is_staff or instance.owner_id == user.pk

    def pre_save(self, instance, action):
        # A new item belongs to whoever created it.
        if action == "create":
            instance.owner = self.user
