"""Prometheus metrics, with the ``prometheus_client`` library (``pip install
'pgbinding[metrics]'``). Without it installed, every metric is a no-op.

Each process keeps its own: scrape ``manage.py pglisten --metrics-port PORT`` for the listener,
and each ASGI process through :func:`view` (route it: ``path("metrics/", metrics.view)``).

Listener (``pglisten``, or the in-process listener):

- ``pgbinding_listener_leading`` (gauge): 1 while this process leads its listener name, else 0
- ``pgbinding_listener_position`` (gauge): the last change-log id delivered and saved
- ``pgbinding_listener_lag_changes`` (gauge): log ids past the position, when last measured
- ``pgbinding_listener_lag_seconds`` (gauge): age of the oldest undelivered change (0: caught up)
- ``pgbinding_listener_delivered_total`` (counter): changes delivered
- ``pgbinding_listener_send_failures_total`` (counter): failed channel-layer sends (retried)
- ``pgbinding_listener_reconnects_total`` (counter): lost Postgres connections
- ``pgbinding_listener_takeovers_total`` (counter): times this process took over the lead

Server (every ASGI process with pgbinding's consumer):

- ``pgbinding_sockets`` (gauge): open sockets
- ``pgbinding_subscriptions`` (gauge): live subscriptions
- ``pgbinding_frames_in_total`` (counter): frames received from clients
- ``pgbinding_frames_out_total`` (counter): frames sent to clients (events and replies)
- ``pgbinding_replies_total{status}`` (counter): replies by status (200, 201, 400, 403, ...)
- ``pgbinding_replays_total`` (counter): resumes answered with a replay
- ``pgbinding_resyncs_total`` (counter): resumes answered with resync
- ``pgbinding_replays_built_in_process_total`` (counter): long replays built in a worker
  process (:mod:`pgbinding.processes`)
- ``pgbinding_closes_total{code}`` (counter): sockets pgbinding closed, by code (4008/4009/4012)
"""

from __future__ import annotations

from typing import Any

prometheus_client: Any
try:
    import prometheus_client
except ImportError:  # pragma: no cover - the metrics extra is not installed
    prometheus_client = None


class _Noop:
    def labels(self, *args: Any, **kwargs: Any) -> _Noop:
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    def dec(self, amount: float = 1) -> None:
        pass

    def set(self, value: float) -> None:
        pass


def _make(kind: str, name: str, doc: str, labels: tuple[str, ...] = ()) -> Any:
    if prometheus_client is None:
        return _Noop()
    return getattr(prometheus_client, kind)(name, doc, labels)


listener_leading = _make("Gauge", "pgbinding_listener_leading", "1 while this process leads")
listener_position = _make("Gauge", "pgbinding_listener_position", "last delivered log id")
listener_lag_changes = _make("Gauge", "pgbinding_listener_lag_changes", "log ids behind")
listener_lag_seconds = _make(
    "Gauge", "pgbinding_listener_lag_seconds", "age of the oldest undelivered change"
)
listener_delivered = _make("Counter", "pgbinding_listener_delivered", "changes delivered")
listener_send_failures = _make(
    "Counter", "pgbinding_listener_send_failures", "failed channel-layer sends (retried)"
)
listener_reconnects = _make("Counter", "pgbinding_listener_reconnects", "lost Postgres links")
listener_takeovers = _make("Counter", "pgbinding_listener_takeovers", "leads taken over")

sockets = _make("Gauge", "pgbinding_sockets", "open sockets")
subscriptions = _make("Gauge", "pgbinding_subscriptions", "live subscriptions")
frames_in = _make("Counter", "pgbinding_frames_in", "frames received from clients")
frames_out = _make("Counter", "pgbinding_frames_out", "frames sent to clients")
replies = _make("Counter", "pgbinding_replies", "replies by status", ("status",))
replays = _make("Counter", "pgbinding_replays", "resumes answered with a replay")
resyncs = _make("Counter", "pgbinding_resyncs", "resumes answered with resync")
replays_in_process = _make(
    "Counter", "pgbinding_replays_built_in_process", "long replays built in a worker process"
)
closes = _make("Counter", "pgbinding_closes", "sockets closed by pgbinding", ("code",))


def available() -> bool:
    return prometheus_client is not None


def serve(port: int) -> None:
    """Serve this process's metrics over HTTP on ``port`` (for ``pglisten``)."""
    if prometheus_client is None:
        from django.core.management.base import CommandError

        raise CommandError(
            "--metrics-port needs the prometheus_client library: pip install 'pgbinding[metrics]'"
        )
    prometheus_client.start_http_server(port)


def view(request: Any) -> Any:
    """A Django view of this process's metrics, in Prometheus' text format."""
    from django.http import HttpResponse

    if prometheus_client is None:
        return HttpResponse(
            "prometheus_client is not installed: pip install 'pgbinding[metrics]'\n",
            status=501,
            content_type="text/plain",
        )
    return HttpResponse(
        prometheus_client.generate_latest(), content_type=prometheus_client.CONTENT_TYPE_LATEST
    )
