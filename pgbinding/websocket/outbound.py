"""A bounded outbound queue per WebSocket: a client too slow to read is closed, not buffered.

Why
---
A consumer that awaits the ASGI ``send`` for every frame hands the server's slowness to its
caller, and the servers differ:

- **daphne** never waits. Its ``send`` is ``functools.partial(server.handle_reply, protocol)``
  (``daphne/server.py``, ``create_application``: ``send=partial(self.handle_reply,
  protocol)``), an ``async def`` with no ``await`` in it that ends in autobahn's
  ``sendMessage`` -> ``sendData`` -> ``self.transport.write(data)``
  (``autobahn/websocket/protocol.py``, ``sendData``). Twisted's ``FileDescriptor.write`` appends
  to ``_tempDataBuffer`` without limit (``twisted/internet/abstract.py``, ``write``): a client
  that never reads grows the server by every frame sent to it, and the memory is not returned
  after the socket closes (60,000 frames of 1 KB: 88 -> 225 MB with pgbinding's consumer;
  +58-60 MB with the bare consumer of ``tests/e2e/slow_reader_app.py``).
- **uvicorn** waits: its ``websockets`` implementation writes the frame, then awaits
  ``drain()`` (``websockets/legacy/protocol.py``, ``write_frame``: ``write_frame_sync(...)``
  then ``await self.drain()``), and its ``websockets-sansio`` and ``wsproto`` implementations
  await ``self.writable.wait()`` before writing (``uvicorn/protocols/websockets/
  websockets_sansio_impl.py`` and ``wsproto_impl.py``, ``send``; ``pause_writing`` clears the
  event, ``resume_writing`` sets it). Waiting blocks the consumer, so messages pile up in the
  channel layer, which drops them silently when full (channels_redis ``capacity``).

:class:`OutboundQueue` sits between the consumer and ``send``: the consumer puts frames
without waiting, a writer task hands them to ``send`` while the server is ready, and the bytes
put but not yet taken by a ready server are bounded. Past the bound the queue drops what it
holds and closes the socket with :data:`CLOSE_TOO_SLOW` (4008); the client reconnects and
resumes its subscriptions with ``since`` set to the last ``position`` it received, so nothing is
lost silently and the server's memory stays bounded.

Backpressure, per server
------------------------
- **uvicorn** (all three implementations): the writer task awaiting ``send`` *is* the
  backpressure. While the transport is above its high-water mark (asyncio's default: 64 KiB),
  ``send`` does not return, frames stay in this queue, and the bound catches a client that
  does not read. Nothing server-specific is needed.

- **daphne**: ``send`` always returns at once, so the queue learns that the server is not ready
  from Twisted's documented flow control instead: a streaming producer (``IPushProducer``)
  registered on the transport gets ``pauseProducing()`` when the transport's buffer passes
  ``bufferSize`` (64 KiB; ``FileDescriptor._maybePauseProducer``, called from ``write``) and
  ``resumeProducing()`` when the buffer has been written out (``FileDescriptor.doWrite``).
  While paused the writer hands nothing to ``send``. The pause comes synchronously from inside
  the ``send`` that filled the buffer, so at most one frame goes past the high-water mark.

  How the queue reaches daphne's transport, and why chaining a producer there is safe:
  :mod:`pgbinding.websocket.transport`.

What counts against the bound
-----------------------------
The UTF-8 bytes of the frames put but not yet handed to a server that is ready: those waiting
in the queue, plus the frame the writer is handing over while ``send`` has not returned
(uvicorn waiting for its buffer to drain). Under daphne the transport holds at most its
64 KiB high-water mark plus one frame beyond what the queue counts. A frame is always accepted
into an empty queue, whatever its size (a single frame above the bound would otherwise close
every socket it is sent to, again after every resume); so the queue holds at most
``max(max_bytes, largest frame)``. Python's per-frame overhead (~90 bytes: the ``str`` header
and a tuple) is not counted.

Overflow
--------
When a frame would take the queue past ``max_bytes``, :meth:`OutboundQueue.put` (and
:meth:`OutboundQueue.send`) returns False and the queue overflows, once: it drops the frames it
holds (and abandons the frame whose ``send`` is waiting, if any), refuses every later frame,
calls ``on_overflow``, and its writer sends ``{"type": "websocket.close", "code": 4008}``
(without waiting for the transport to drain: under daphne autobahn then drops the TCP
connection if the client does not answer the close within its ``closeHandshakeTimeout`` of
1 s, which frees the transport's buffer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Final

from .transport import TransportWatch, attach

logger = logging.getLogger("pgbinding.outbound")

#: WebSocket close code sent when a socket's outbound queue passes its bound: the client reads
#: too slowly (or not at all). 4000-4999 are for applications (RFC 6455, 7.4.2); 4008 echoes
#: 1008 (policy violation) and tells the client to reconnect and resume with ``since``.
CLOSE_TOO_SLOW: Final = 4008
#: Reason sent with :data:`CLOSE_TOO_SLOW` (servers that support close reasons pass it on).
CLOSE_TOO_SLOW_REASON: Final = "too slow: outbound queue full; resume with since"
#: A task that sends many frames in a row (a replay, a coalesced run of group events, the writer
#: draining a long queue) gives the event loop back after this many: under daphne handing a
#: frame to ``send`` never waits, so 10,000 frames in one go held every other socket of the
#: process for their whole duration. Each frame costs daphne ~20 us, and another socket's
#: request needs several turns of the loop (its frame read, its database call's return, its
#: reply), each waiting for one such run: with 32, other sockets' ``list`` replies sent while a
#: 10,000-frame replay went out were slow (over 18 ms, ~9 without a replay) for 65 of 202
#: requests, with 8 for 21 of 240, with 4 for 6 of 266 (bench/replay.py, 3 runs each). 4 was
#: better still for them (pooled p99 22.2 and 20.9 ms against 26.6 and 27.3 with 8, ~15 without
#: a replay), but let daphne's memory grow by 7-14 MB in 3 of 4 runs of
#: tests/faults/test_slow_client.py (bound 8 MB), where 8 and 32 stayed within 1 MB in 4 of 4;
#: why was not found. With 8, one socket draining a burst loses no measurable speed.
FRAMES_PER_TURN = 8
#: ... and, while other sockets of the process have requests in flight (their database calls
#: included), it waits this long (seconds) instead of only yielding, so they get the CPU and
#: the GIL: a 10,000-frame replay sent flat out took other sockets' ``list`` from 12 to 31-54
#: ms p99 on the 2-core benchmark machine, and 19-31 ms with the pause. Those p99s were of the
#: ~20 requests one replay overlaps (bench/replay.py's old measurement); the pause's own effect
#: has not been measured again with the pooled one (bench/analysis.md, section 8). Alone, it
#: goes flat out.
GIL_PAUSE = 0.002
#: Proposed default of ``PGBINDING["MAX_OUTBOUND_BYTES"]``.
DEFAULT_MAX_OUTBOUND_BYTES: Final = 4 * 1024 * 1024


#: Requests being served by this process's consumers (they run on its one event loop).
_requests = 0


#: The ASGI ``send`` callable.
Send = Callable[[dict[str, Any]], Awaitable[None]]


class OutboundQueue:
    """A socket's outbound frames, bounded in bytes, written to ASGI ``send`` by a task.

    ``send`` is the ASGI send callable (a Channels consumer's ``self.base_send``);
    ``max_bytes`` the bound; ``close_code`` and ``close_reason`` go in the ``websocket.close``
    sent on overflow; ``on_overflow`` is called once, synchronously from the :meth:`put` (or
    :meth:`send`) that overflowed, after the queue has dropped its frames (it must not block;
    to do async work, start a task).

    In a Channels ``AsyncJsonWebsocketConsumer``::

        async def accept(self, subprotocol=None, headers=None):
            await super().accept(subprotocol, headers)
            self.outbound = OutboundQueue(self.base_send, max_bytes, on_overflow=...)
            self.outbound.start()

        async def send_json(self, content, close=False):
            await self.outbound.send(await self.encode_json(content))  # never waits
            if close:
                await self.close()

        async def close(self, code=None, reason=None):
            if getattr(self, "outbound", None) is None:  # not accepted: a rejection
                await super().close(code, reason)
            else:
                self.outbound.put_close(code or 1000, reason)  # after the queued frames

        async def disconnect(self, code):
            await self.outbound.close()

    Use from one event loop (the one :meth:`start` runs on). :meth:`start` ties the queue to
    the task that calls it: when that task ends (a Channels application instance finishing or
    being cancelled) the writer is stopped even if :meth:`close` was never awaited.
    """

    def __init__(
        self,
        send: Send,
        max_bytes: int,
        *,
        close_code: int = CLOSE_TOO_SLOW,
        close_reason: str = CLOSE_TOO_SLOW_REASON,
        on_overflow: Callable[[], object] | None = None,
    ) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, got {max_bytes!r}")
        self._send = send
        self._max_bytes = max_bytes
        self._close_code = close_code
        self._close_reason = close_reason
        self._on_overflow = on_overflow
        self._frames: deque[tuple[str, int]] = deque()
        self._queued = 0  # bytes in _frames
        self._inflight = 0  # bytes of the frame whose send has not returned
        self._wake = asyncio.Event()
        self._done = asyncio.Event()
        self._paused = False  # the Twisted transport asked us to stop
        self._overflowed = False
        self._close_message: dict[str, Any] | None = None  # to send once the frames are out
        self._stopped = False  # nothing more will be sent
        self._interrupting = False  # put() cancelled the writer's pending send
        self._sending = False  # the writer awaits send()
        self._inline = False  # send() hands a frame to the server in the caller's task
        self._sends = 0  # calls of send(), for FRAMES_PER_TURN
        self._requests = 0  # this socket's requests being served (serving_request)
        self._task: asyncio.Task[None] | None = None
        self._owner: asyncio.Task[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = 0
        self._watch: TransportWatch | None = None

    # -- state -----------------------------------------------------------------------------

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    @property
    def queued_bytes(self) -> int:
        """Bytes put and not yet taken by a ready server (queued, plus a pending ``send``)."""
        return self._queued + self._inflight

    @property
    def overflowed(self) -> bool:
        """True once a frame passed the bound (the socket is being closed)."""
        return self._overflowed

    @property
    def accepting(self) -> bool:
        """False after an overflow, :meth:`put_close`, :meth:`close`, or a failed ``send``."""
        return not (self._stopped or self._close_message is not None)

    @property
    def backpressure(self) -> str:
        """Where the queue learns that the server is not ready: ``"transport"`` (a Twisted
        producer on daphne's transport) or ``"send"`` (awaiting ``send`` only)."""
        return "transport" if self._watch is not None else "send"

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Attach to the server's transport (daphne) and start the writer task.

        Call it from a coroutine, after the socket was accepted (frames may be put before:
        they wait). Calling it again does nothing.
        """
        if self._task is not None or self._stopped:
            return
        loop = asyncio.get_running_loop()
        self._loop, self._thread = loop, threading.get_ident()
        self._watch = attach(self, self._send)
        self._task = loop.create_task(self._run(), name="pgbinding-outbound")
        owner = asyncio.current_task()
        if owner is not None:
            self._owner = owner
            owner.add_done_callback(self._owner_done)

    @contextlib.contextmanager
    def serving_request(self) -> Iterator[None]:
        """Count one of this socket's requests as in flight while the block runs (the
        consumer wraps each): long sends of the other sockets leave it room."""
        global _requests
        _requests += 1
        self._requests += 1
        try:
            yield
        finally:
            _requests -= 1
            self._requests -= 1

    def others_busy(self) -> bool:
        """Are other sockets' requests being served in this process? (Not this socket's own,
        such as the ``subscribe`` whose replay it sends, nor the listener's work.)"""
        return _requests > self._requests

    async def _give_turn(self) -> None:
        """Let the loop's other tasks run; while other sockets' requests are in flight, leave
        them the CPU and the GIL for :data:`GIL_PAUSE`."""
        await asyncio.sleep(GIL_PAUSE if self.others_busy() else 0)

    async def send(self, text: str) -> bool:
        """Like :meth:`put` (same result, never waits for the client), but when the server is
        known not to wait (daphne, its transport watched) and nothing is queued or paused, the
        frame is handed to ``send`` at once, in the caller's task: this saves waking the writer
        task for every frame (~6 us an event). Elsewhere it is :meth:`put`. Every
        FRAMES_PER_TURN calls it lets the loop's other tasks run."""
        sent = await self._hand_over(text)
        self._sends += 1
        if self._sends % FRAMES_PER_TURN == 0:
            await self._give_turn()
        return sent

    async def _hand_over(self, text: str) -> bool:
        if (
            self._watch is None
            or self._frames
            or self._paused
            or self._inflight
            or self._task is None
            or self._stopped
            or self._close_message is not None
        ):
            return self.put(text)
        self._inflight = len(text) if text.isascii() else len(text.encode())
        self._inline = True
        try:
            await self._send({"type": "websocket.send", "text": text})
        except Exception as exc:
            logger.debug("Outbound send failed, stopping the writer: %r", exc)
            self._stop()
            return False
        finally:
            self._inflight = 0
            self._inline = False
            if self._frames or self._close_message is not None or self._stopped:
                self._wake.set()
        return True

    def put(self, text: str) -> bool:
        """Queue a text frame. True if queued; False if refused: the bound would be passed (the
        queue overflows, see the module docstring) or the queue no longer accepts frames."""
        if self._stopped or self._close_message is not None:
            return False
        size = len(text) if text.isascii() else len(text.encode())
        queued = self._queued + self._inflight
        if queued and queued + size > self._max_bytes:
            self._overflow(queued + size)
            return False
        self._frames.append((text, size))
        self._queued += size
        self._wake.set()
        return True

    def put_close(self, code: int = 1000, reason: str | None = None) -> None:
        """Send ``websocket.close`` after the frames queued so far; later frames are refused.

        Use it for closes the consumer decides (so the close cannot overtake queued frames).
        Does nothing if a close is already queued or the queue is closed.
        """
        if self._stopped or self._close_message is not None:
            return
        message: dict[str, Any] = {"type": "websocket.close", "code": code}
        if reason:
            message["reason"] = reason
        self._close_message = message
        self._wake.set()

    async def join(self) -> None:
        """Wait until the writer has stopped: the close (queued or on overflow) was handed to
        ``send``, ``send`` failed, or :meth:`close` was called."""
        await self._done.wait()

    async def close(self) -> None:
        """Stop now: drop unsent frames, stop the writer, detach from the transport.

        Call it when the socket is gone (the consumer's ``disconnect``). Idempotent; safe
        before :meth:`start`.
        """
        self._stop()
        task = self._task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
            await asyncio.wait([task])
        if self._owner is not None:
            self._owner.remove_done_callback(self._owner_done)
            self._owner = None

    # -- internals -----------------------------------------------------------------------------

    def _stop(self) -> None:
        self._stopped = True
        self._frames.clear()
        self._queued = 0
        self._detach()
        self._done.set()

    def _detach(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.detach()

    def _owner_done(self, _task: asyncio.Task[Any]) -> None:
        self._owner = None
        self._stop()
        if self._task is not None:
            self._task.cancel()

    def _overflow(self, would_be: int) -> None:
        self._overflowed = True
        dropped = len(self._frames)
        self._frames.clear()
        self._queued = 0
        self._close_message = {
            "type": "websocket.close",
            "code": self._close_code,
            "reason": self._close_reason,
        }
        if self._sending and self._task is not None:
            # The writer waits in send() for the server's buffer to drain (uvicorn): abandon
            # that frame, so the close goes out now. Under daphne send never waits.
            self._interrupting = True
            self._task.cancel()
        self._wake.set()
        logger.info(
            "Closing a socket (code %d): its outbound queue would hold %d bytes, over the "
            "limit of %d; dropped %d queued frames",
            self._close_code,
            would_be,
            self._max_bytes,
            dropped + (1 if self._interrupting else 0),
        )
        if self._on_overflow is not None:
            try:
                self._on_overflow()
            except Exception:
                logger.exception("on_overflow callback failed")

    def transport_paused(self, paused: bool) -> None:
        """From the transport's producer (daphne's reactor thread: the event loop's)."""
        if threading.get_ident() != self._thread and self._loop is not None:
            self._loop.call_soon_threadsafe(self.transport_paused, paused)
            return
        self._paused = paused
        if not paused:
            self._wake.set()

    def transport_lost(self) -> None:
        """The transport lost its connection (producer ``stopProducing``)."""
        if threading.get_ident() != self._thread and self._loop is not None:
            self._loop.call_soon_threadsafe(self.transport_lost)
            return
        self._watch = None  # the transport dropped its producer itself
        self._stop()
        self._wake.set()

    async def _run(self) -> None:
        sent = 0
        try:
            while not self._stopped:
                if self._frames and not self._paused and not self._inline:
                    sent += 1
                    if sent % FRAMES_PER_TURN == 0:
                        await self._give_turn()
                        continue
                    text, size = self._frames.popleft()
                    self._queued -= size
                    self._inflight, self._sending = size, True
                    try:
                        await self._send({"type": "websocket.send", "text": text})
                    except asyncio.CancelledError:
                        if not self._uncancel():
                            raise
                    finally:
                        self._inflight, self._sending = 0, False
                    continue
                if self._close_message is not None and not self._frames and not self._inline:
                    await self._send(self._close_message)
                    break
                self._wake.clear()
                await self._wake.wait()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the connection is gone (daphne: Disconnected; uvicorn:
            # ClientDisconnected); the consumer gets websocket.disconnect
            logger.debug("Outbound send failed, stopping the writer: %r", exc)
        finally:
            self._stop()

    def _uncancel(self) -> bool:
        """After a cancellation in ``send``: True if it was only :meth:`_overflow`'s."""
        if not self._interrupting:
            return False
        self._interrupting = False
        task = asyncio.current_task()
        return task is not None and task.uncancel() == 0
