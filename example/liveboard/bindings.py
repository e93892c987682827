"""The one binding of the example: every item, live, on the stream "items".

Anyone may read (subscribe, list, retrieve): the board is public. Signed-in users may write,
but only their own items (staff: any item), and nobody sets an item's owner but the server.
"""

from pgbinding import WebsocketBinding
from pgbinding.permissions import READ_ACTIONS, IsAuthenticatedOrReadOnly

from .models import Item


class ItemBinding(WebsocketBinding):
    model = Item
    stream = "items"
    fields = ["name", "value", "owner", "status"]
    # The owner is sent to clients but never written by them: pre_save sets it on create,
    # and an update that names it is refused (400), so nobody gives an item away or takes one.
    read_only_fields = ["owner"]
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
