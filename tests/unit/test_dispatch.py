"""Building group sends off the event loop, with each kind of channel layer (no server needed:
building sends nothing)."""

import threading

import pytest
from channels.layers import InMemoryChannelLayer
from channels_redis.core import RedisChannelLayer
from channels_redis.pubsub import RedisPubSubChannelLayer

from pgbinding.bindings import Change
from pgbinding.dispatch import Dispatcher
from tests.unit.test_bindings import row

LAYERS = {
    "memory": InMemoryChannelLayer,
    "redis": lambda: RedisChannelLayer(hosts=["redis://127.0.0.1:1"]),
    # Resolves attributes per running event loop: build() runs in a thread, where there is none.
    "pubsub": lambda: RedisPubSubChannelLayer(hosts=["redis://127.0.0.1:1"]),
}


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_build_runs_in_a_thread_with_every_layer(layer):
    dispatcher = Dispatcher(LAYERS[layer]())
    change = Change(7, "testapp_item", "I", "1", None, row(), position="7")
    result = {}
    thread = threading.Thread(target=lambda: result.update(out=dispatcher.build([change])))
    thread.start()
    thread.join(10)
    groups = [group for group, _ in result["out"]]
    assert "items" in groups and "pgbinding-changes.items" in groups


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_bad_group_names_are_refused_with_every_layer(layer, caplog):
    from tests.testapp.bindings import ItemBinding

    dispatcher = Dispatcher(LAYERS[layer]())
    assert dispatcher._valid_group(ItemBinding, "fine.group-1")
    assert not dispatcher._valid_group(ItemBinding, "not fine!")
    assert "bad group name" in caplog.text
