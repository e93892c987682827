"""Each ASGI process's metrics (pgbinding.metrics.view) count what its sockets do."""

from __future__ import annotations

import pytest
from django.test import RequestFactory

from pgbinding import metrics
from tests.e2e.conftest import Live

pytestmark = pytest.mark.django_db(transaction=True)


async def test_server_metrics_view(live: Live) -> None:
    from asgiref.sync import sync_to_async
    from django.contrib.auth.models import User

    staff = await sync_to_async(User.objects.create)(username="staff", is_staff=True)
    socket = await live.connect("/all/", user=staff)
    await socket.request("items", "subscribe")
    await socket.request("items", "retrieve", pk=999999)
    response = metrics.view(RequestFactory().get("/metrics/"))
    text = response.content.decode()
    assert response.status_code == 200
    assert 'pgbinding_replies_total{status="404"}' in text
    assert "pgbinding_frames_in_total" in text and "pgbinding_frames_out_total" in text
    assert metrics.subscriptions._value.get() >= 1
    assert metrics.sockets._value.get() >= 1
