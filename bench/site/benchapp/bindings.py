import os

from pgbinding import WebsocketBinding
from pgbinding.rules import AllRows, Owner

from .models import Owned, Tick

#: The read rule of ``OwnedBinding`` in this process: ``owner`` (each user sees the rows it
#: owns) or ``all`` (every signed-in subscriber sees every row). bench/fanout measures both,
#: each on its own server processes.
OWNED_RULES = ("owner", "all")
OWNED_RULE = os.environ.get("BENCH_OWNED_RULE", "owner")
if OWNED_RULE not in OWNED_RULES:
    raise ValueError(f"BENCH_OWNED_RULE must be one of {OWNED_RULES}, not {OWNED_RULE!r}")


class TickBinding(WebsocketBinding):
    model = Tick
    stream = "ticks"
    fields = ["value", "note"]

    @classmethod
    def group_names(cls, instance):
        return ["ticks"]

    def has_permission(self, user, action, pk):
        return action in ("retrieve", "list", "subscribe")


class OwnedBinding(WebsocketBinding):
    """Subscriptions only (no group events): each change goes to the change group of its
    owner's delivery key (``Owner``), or to the stream's change group (``AllRows``)."""

    model = Owned
    stream = "owned"
    fields = ["owner", "value"]
    read_rule = Owner("owner") if OWNED_RULE == "owner" else AllRows()

    @classmethod
    def group_names(cls, instance):
        return []

    def has_permission(self, user, action, pk):
        return user.is_authenticated and action in ("retrieve", "list", "subscribe")
