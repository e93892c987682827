"""Backpressure from daphne: a Twisted push producer chained onto the WebSocket's transport.

daphne's ``send`` never waits, so :class:`~pgbinding.websocket.outbound.OutboundQueue` learns
that the server is not ready from Twisted's documented flow control: a streaming producer
(``IPushProducer``) registered on the transport gets ``pauseProducing()`` when the transport's
buffer passes ``bufferSize`` (64 KiB) and ``resumeProducing()`` when it has been written out.

*Is registering a producer safe there?* Not naively: the transport already has one.
Twisted's ``HTTPChannel.connectionMade`` registers the channel as the transport's streaming
producer (``twisted/web/http.py``: ``self._networkProducer.registerProducer(self, True)``),
and daphne's WebSocket upgrade (``daphne/http_protocol.py``, ``process``) moves the transport
to the autobahn protocol without unregistering it, so ``transport.registerProducer`` would
raise ``RuntimeError("Cannot register producer ... never unregistered")``
(``twisted/internet/abstract.py``, ``_ConsumerMixin.registerProducer``). Neither daphne nor
autobahn registers one of its own for WebSockets; autobahn only *unregisters* whatever is
registered when it drops the connection (``WebSocketProtocol.dropConnection`` ->
``unregisterProducer``), which is harmless here. So the queue **chains**: it unregisters
the existing producer, registers a small producer of its own that forwards every
``pauseProducing``/``resumeProducing``/``stopProducing`` to that previous producer (the
upgraded channel keeps seeing exactly what it saw before; after the upgrade it only records
the state, as its request is never finished) and also pauses/resumes this queue, and puts
the previous producer back on :meth:`OutboundQueue.close`. Behind TLS the protocol's
transport is a ``TLSMemoryBIOProtocol``; the queue chains on the TCP transport beneath it
(where the encrypted bytes are buffered), next to the producer TLS registered there.

The alternative, reading the transport's buffered byte count
(``len(dataBuffer) - offset + _tempDataLen``), reads private attributes and needs a timer to
notice the buffer draining; the producer is Twisted's documented interface and wakes the
writer exactly when the buffer is empty again.

Reaching the transport: ``AsyncConsumer.__call__`` keeps the ``send`` it was given as
``self.base_send``. Under daphne that is the ``partial`` above, unless middleware wrapped it:
``SessionMiddleware`` (in ``AuthMiddlewareStack``) passes ``InstanceSessionWrapper.send``,
which keeps the original as ``real_send``; ``CookieMiddleware``, ``AuthMiddleware``,
``OriginValidator`` and the routers pass ``send`` through. The queue unwraps a bounded chain
of ``real_send`` attributes, ``__wrapped__`` attributes and ``functools.partial`` objects
until it finds a ``partial`` of a ``handle_reply`` method whose first argument has a
``transport``. Any other shape (another server, a test communicator, unknown middleware, a
transport without Twisted's producer attributes) falls back to awaiting ``send`` alone, with
a debug line on the ``pgbinding.outbound`` logger; under daphne that fallback means no
backpressure (the queue stays empty and Twisted buffers), so keep middleware that wraps
``send`` exposing the original as ``real_send`` or ``__wrapped__``.

"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol


class OutboundQueue(Protocol):
    """What the producer tells the queue (``pgbinding.websocket.outbound.OutboundQueue``)."""

    def transport_paused(self, paused: bool) -> None: ...

    def transport_lost(self) -> None: ...


logger = logging.getLogger("pgbinding.outbound")

#: The ASGI ``send`` callable.
Send = Callable[[dict[str, Any]], Awaitable[None]]
#: Most wrappers unwrapped when looking for daphne's protocol behind ``send``.
_UNWRAP_DEPTH = 8


class TransportWatch:
    """The ``IPushProducer`` chained onto a Twisted transport: tells the queue when the
    transport's buffer passes its high-water mark and when it is empty again, and forwards
    every call to the producer that was registered before (see the module docstring)."""

    def __init__(self, queue: OutboundQueue, transport: Any, previous: Any) -> None:
        self.queue: OutboundQueue | None = queue
        self.transport = transport
        self.previous = previous

    # IPushProducer, called by the transport
    def pauseProducing(self) -> None:
        if self.queue is not None:
            self.queue.transport_paused(True)
        if self.previous is not None:
            self.previous.pauseProducing()

    def resumeProducing(self) -> None:
        if self.queue is not None:
            self.queue.transport_paused(False)
        if self.previous is not None:
            self.previous.resumeProducing()

    def stopProducing(self) -> None:
        queue, self.queue = self.queue, None
        if queue is not None:
            queue.transport_lost()
        if self.previous is not None:
            self.previous.stopProducing()

    def detach(self) -> None:
        """Put the previous producer back (if we are still the registered one)."""
        self.queue = None
        transport = self.transport
        if getattr(transport, "producer", None) is not self:
            return
        try:
            transport.unregisterProducer()
            if self.previous is not None and not getattr(transport, "disconnected", False):
                transport.registerProducer(self.previous, True)
        except Exception:
            logger.debug("Could not restore the transport's producer", exc_info=True)


def _daphne_protocol(send: Any) -> Any:
    """The protocol object behind daphne's ``partial(server.handle_reply, protocol)``, looking
    through Channels' session wrapper (``real_send``), ``__wrapped__`` and partials; None if
    ``send`` has another shape."""
    fn = send
    for _ in range(_UNWRAP_DEPTH):
        if isinstance(fn, functools.partial):
            func = fn.func
            if (
                getattr(func, "__name__", None) == "handle_reply"
                and fn.args
                and hasattr(fn.args[0], "transport")
            ):
                return fn.args[0]
            fn = func
            continue
        inner = getattr(fn, "__wrapped__", None)
        if inner is None:
            inner = getattr(getattr(fn, "__self__", None), "real_send", None)
        if inner is None:
            return None
        fn = inner
    return None


def _producer_transport(protocol: Any) -> Any:
    """The transport that buffers the protocol's bytes and takes a producer: the TCP transport,
    beneath TLS (a protocol wrapper) if any."""
    transport = getattr(protocol, "transport", None)
    for _ in range(_UNWRAP_DEPTH):
        if transport is None:
            return None
        if all(
            hasattr(transport, name)
            for name in ("producer", "streamingProducer", "registerProducer", "unregisterProducer")
        ):
            return transport
        transport = getattr(transport, "transport", None)
    return None


def attach(queue: OutboundQueue, send: Send) -> TransportWatch | None:
    """Watch daphne's transport behind ``send`` for ``queue`` (None: not daphne's shape)."""
    protocol = _daphne_protocol(send)
    if protocol is None:
        logger.debug(
            "No Twisted transport behind send %r: backpressure from awaiting send only", send
        )
        return None
    transport = _producer_transport(protocol)
    if transport is None:
        logger.debug(
            "%r has no Twisted transport with a producer: backpressure from awaiting send only",
            protocol,
        )
        return None
    if getattr(transport, "disconnected", False):
        logger.debug("%r is disconnected: not watching its transport", protocol)
        return None
    previous = transport.producer
    if previous is not None and not transport.streamingProducer:
        logger.debug(
            "%r already has a pull producer %r: backpressure from awaiting send only",
            transport,
            previous,
        )
        return None
    watch = TransportWatch(queue, transport, previous)
    try:
        transport.unregisterProducer()
        transport.registerProducer(watch, True)
    except Exception:
        logger.debug("Could not register a producer on %r", transport, exc_info=True)
        if previous is not None and getattr(transport, "producer", None) is None:
            try:
                transport.registerProducer(previous, True)
            except Exception:
                logger.debug("Could not restore the producer of %r", transport, exc_info=True)
        return None
    queue.transport_paused(
        bool(previous is not None and getattr(transport, "producerPaused", False))
    )
    return watch
