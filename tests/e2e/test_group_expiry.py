"""A socket open longer than channels-redis's ``group_expiry`` keeps receiving group events.

The core Redis layer forgets a group member ``group_expiry`` seconds after it joined (a day by
default), whether or not its socket is still open; without rejoining, a long-lived socket
silently stops receiving changes. Here ``group_expiry`` is 2 s, and the socket waits past it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User

from tests.e2e.conftest import Live
from tests.testapp.models import Item

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.redis]

GROUP_EXPIRY = 2


@pytest.fixture
def short_lived_groups(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The default channel layer is channels-redis (core, as pgbinding.layers) on the private
    Redis, with groups forgetting their members after GROUP_EXPIRY seconds."""
    from channels.layers import channel_layers

    from pgbinding.layers import RedisChannelLayer

    layer = RedisChannelLayer(
        hosts=[{"address": redis_url, "socket_timeout": None}],
        capacity=100_000,
        expiry=60,
        group_expiry=GROUP_EXPIRY,
    )
    monkeypatch.setitem(channel_layers.backends, "default", layer)
    yield layer


async def test_a_socket_open_past_group_expiry_still_receives_changes(
    short_lived_groups: Any, live: Live
) -> None:
    assert live.layer is short_lived_groups
    staff = await sync_to_async(User.objects.create)(username="staff", is_staff=True)
    item = await sync_to_async(Item.objects.create)(name="a", value=1)
    await live.settle()
    socket = await live.connect(user=staff)
    assert await socket.events() == []

    await asyncio.sleep(GROUP_EXPIRY * 2)
    await sync_to_async(Item.objects.filter(pk=item.pk).update)(value=2)

    frames = await socket.events()
    assert [(f["payload"]["action"], f["payload"]["pk"]) for f in frames] == [("update", item.pk)]
    assert frames[0]["payload"]["data"]["value"] == 2
