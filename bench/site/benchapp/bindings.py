from pgbinding import WebsocketBinding

from .models import Tick


class TickBinding(WebsocketBinding):
    model = Tick
    stream = "ticks"
    fields = ["value", "note"]

    @classmethod
    def group_names(cls, instance):
        return ["ticks"]

    def has_permission(self, user, action, pk):
        return action in ("retrieve", "list", "subscribe")
