"""OutboundQueue with fake ASGI sends: order, the byte bound, overflow, close and cancellation,
and the Twisted producer it chains onto daphne's transport (a real Twisted FileDescriptor)."""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, cast

import pytest
from twisted.internet.abstract import FileDescriptor
from twisted.internet.interfaces import IProducer, IReactorFDSet

from pgbinding.websocket.outbound import CLOSE_TOO_SLOW, OutboundQueue


class FakeSend:
    """An ASGI send that records messages; ``gate`` cleared makes frames wait like uvicorn's
    ``send`` on a transport above its high-water mark (a close does not wait)."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.waiting = 0
        self.cancelled = 0
        self.fail: Exception | None = None

    async def __call__(self, message: dict[str, Any]) -> None:
        if self.fail is not None:
            raise self.fail
        self.messages.append(message)
        if message["type"] == "websocket.send" and not self.gate.is_set():
            self.waiting += 1
            try:
                await self.gate.wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
            finally:
                self.waiting -= 1

    def texts(self) -> list[str]:
        return [m["text"] for m in self.messages if m["type"] == "websocket.send"]

    def closes(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == "websocket.close"]


class CountingEvent(asyncio.Event):
    """Counts waits: a writer that spins would wait (or not) thousands of times."""

    waits = 0

    async def wait(self) -> Any:
        self.waits += 1
        return await super().wait()


async def settle() -> None:
    """Let the writer task run until it has nothing left to do (it gives the loop back every
    FRAMES_PER_TURN frames)."""
    for _ in range(5000):
        await asyncio.sleep(0)


async def test_frames_go_out_in_order_and_the_queue_empties() -> None:
    send = FakeSend()
    queue = OutboundQueue(send, max_bytes=1 << 20)
    queue.start()
    assert queue.backpressure == "send"
    frames = [f'{{"n": {n}}}' for n in range(2000)]
    for text in frames:
        assert queue.put(text)
    await settle()
    assert send.texts() == frames
    assert queue.queued_bytes == 0
    await queue.close()


async def test_frames_put_before_start_wait_for_it() -> None:
    send = FakeSend()
    queue = OutboundQueue(send, max_bytes=100)
    assert queue.put("a") and queue.put("b")
    await settle()
    assert send.messages == []
    queue.start()
    await settle()
    assert send.texts() == ["a", "b"]
    await queue.close()


async def test_the_bound_is_exact_in_utf8_bytes() -> None:
    queue = OutboundQueue(FakeSend(), max_bytes=10)  # not started: nothing drains
    assert queue.put("aaaa")
    assert queue.put("é" * 3)  # 6 bytes in UTF-8, 3 characters
    assert queue.queued_bytes == 10
    assert not queue.put("x")
    assert queue.overflowed
    assert queue.queued_bytes == 0  # dropped at once

    queue = OutboundQueue(FakeSend(), max_bytes=10)
    assert queue.put("aaaa") and queue.put("bbbbb")
    assert queue.put("c")  # exactly 10: accepted
    assert not queue.overflowed
    assert not queue.put("d")
    assert queue.overflowed


async def test_a_frame_in_flight_counts_until_send_returns() -> None:
    send = FakeSend()
    send.gate.clear()  # the server is not ready
    queue = OutboundQueue(send, max_bytes=10)
    queue.start()
    assert queue.put("a" * 6)
    await settle()
    assert send.waiting == 1
    assert queue.queued_bytes == 6  # handed over, but to a server that is not ready
    assert queue.put("b" * 4)
    assert queue.queued_bytes == 10
    send.gate.set()
    await settle()
    assert queue.queued_bytes == 0
    assert send.texts() == ["a" * 6, "b" * 4]
    await queue.close()


async def test_one_frame_bigger_than_the_bound_goes_out_when_the_queue_is_empty() -> None:
    send = FakeSend()
    send.gate.clear()
    queue = OutboundQueue(send, max_bytes=10)
    queue.start()
    assert queue.put("x" * 100)  # alone: accepted, or it could never be delivered
    await settle()
    assert not queue.put("y")  # anything behind it passes the bound
    assert queue.overflowed
    await queue.close()


async def test_overflow_is_reported_once_and_closes_with_4008() -> None:
    send = FakeSend()
    calls: list[int] = []
    queue = OutboundQueue(send, max_bytes=100, on_overflow=lambda: calls.append(1))
    for n in range(10):
        assert queue.put(f"{n:010d}")
    assert not queue.put("overflow")
    for _ in range(100):
        assert not queue.put("more")
    assert calls == [1]
    assert not queue.accepting
    queue.start()
    await asyncio.wait_for(queue.join(), 1)
    # the frames queued before the overflow were dropped; the close went out, once
    assert send.texts() == []
    assert send.closes() == [
        {
            "type": "websocket.close",
            "code": CLOSE_TOO_SLOW,
            "reason": "too slow: outbound queue full; resume with since",
        }
    ]
    assert not queue.put("after")
    await queue.close()
    assert len(send.closes()) == 1


async def test_overflow_abandons_a_send_waiting_for_the_server() -> None:
    """uvicorn: the writer waits in send() for a transport that never drains; the close must
    not wait behind it (nor be sent concurrently with it)."""
    send = FakeSend()
    send.gate.clear()
    queue = OutboundQueue(send, max_bytes=5)
    queue.start()
    assert queue.put("abc")
    await settle()
    assert send.waiting == 1
    assert queue.put("de")
    assert not queue.put("f")
    await asyncio.wait_for(queue.join(), 1)
    assert send.cancelled == 1
    assert send.texts() == ["abc"]
    assert send.closes()[0]["code"] == CLOSE_TOO_SLOW
    assert queue._task is not None and queue._task.done() and not queue._task.cancelled()
    await queue.close()


async def test_overflow_callback_errors_are_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def boom() -> None:
        raise RuntimeError("boom")

    queue = OutboundQueue(FakeSend(), max_bytes=1, on_overflow=boom)
    with caplog.at_level(logging.ERROR, "pgbinding.outbound"):
        assert queue.put("a")
        assert not queue.put("b")
    assert "on_overflow callback failed" in caplog.text


async def test_put_close_goes_after_the_queued_frames() -> None:
    send = FakeSend()
    queue = OutboundQueue(send, max_bytes=100)
    queue.start()
    assert queue.put("one") and queue.put("two")
    queue.put_close(1009, "big")
    assert not queue.put("three")
    assert not queue.overflowed
    await asyncio.wait_for(queue.join(), 1)
    assert send.messages == [
        {"type": "websocket.send", "text": "one"},
        {"type": "websocket.send", "text": "two"},
        {"type": "websocket.close", "code": 1009, "reason": "big"},
    ]
    await queue.close()


async def test_close_stops_a_writer_waiting_in_send_and_drops_the_rest() -> None:
    send = FakeSend()
    send.gate.clear()
    queue = OutboundQueue(send, max_bytes=100)
    queue.start()
    for text in ("a", "b", "c"):
        queue.put(text)
    await settle()
    assert send.waiting == 1
    await asyncio.wait_for(queue.close(), 1)
    assert queue._task is not None and queue._task.done()
    assert send.cancelled == 1
    assert queue.queued_bytes == 0
    assert not queue.put("d")
    send.gate.set()
    await settle()
    assert send.texts() == ["a"]
    await queue.close()  # idempotent
    await asyncio.wait_for(queue.join(), 1)


async def test_close_before_start_and_start_after_close() -> None:
    send = FakeSend()
    queue = OutboundQueue(send, max_bytes=100)
    queue.put("a")
    await queue.close()
    queue.start()
    await settle()
    assert queue._task is None
    assert send.messages == []


async def test_a_failing_send_stops_the_writer_quietly(caplog: pytest.LogCaptureFixture) -> None:
    send = FakeSend()
    send.fail = ConnectionResetError("gone")
    queue = OutboundQueue(send, max_bytes=100)
    queue.start()
    with caplog.at_level(logging.DEBUG, "pgbinding.outbound"):
        queue.put("a")
        await asyncio.wait_for(queue.join(), 1)
    assert "Outbound send failed" in caplog.text
    assert not queue.put("b")
    assert not queue.overflowed
    await queue.close()


async def test_the_writer_ends_with_the_task_that_started_it() -> None:
    send = FakeSend()
    send.gate.clear()
    queues: list[OutboundQueue] = []

    async def application() -> None:  # a Channels application instance that never closes it
        queue = OutboundQueue(send, max_bytes=100)
        queue.start()
        queue.put("a")
        queues.append(queue)
        await asyncio.sleep(3600)

    app = asyncio.create_task(application())
    await settle()
    app.cancel()
    await asyncio.wait([app])
    await settle()
    queue = queues[0]
    assert queue._task is not None and queue._task.done()
    assert not queue.put("b")


async def test_cancelling_the_writer_from_outside_is_not_swallowed() -> None:
    send = FakeSend()
    send.gate.clear()
    queue = OutboundQueue(send, max_bytes=5)
    queue.start()
    queue.put("abc")
    await settle()
    assert queue._task is not None
    queue._task.cancel()  # someone else's cancellation, then an overflow's
    queue.put("de")
    assert not queue.put("f")
    await asyncio.wait([queue._task])
    assert queue._task.cancelled()
    assert send.closes() == []
    await queue.close()


async def test_no_busy_loop_while_idle_or_paused() -> None:
    send = FakeSend()
    queue = OutboundQueue(send, max_bytes=1 << 20)
    wake = CountingEvent()
    queue._wake = wake
    queue.start()
    for n in range(100):
        queue.put(str(n))
    await asyncio.sleep(0.05)
    assert len(send.texts()) == 100
    assert wake.waits <= 3  # one batch, then asleep
    # paused by the transport with frames waiting: asleep too
    queue.transport_paused(True)
    for n in range(100):
        queue.put(str(n))
    before = wake.waits
    await asyncio.sleep(0.05)
    assert wake.waits - before <= 2
    assert len(send.texts()) == 100
    queue.transport_paused(False)
    await settle()
    assert len(send.texts()) == 200
    await queue.close()


# -- daphne's shape: partial(server.handle_reply, protocol), protocol.transport a Twisted
# -- FileDescriptor whose write() and doWrite() are Twisted's own


class FakeTCPTransport(FileDescriptor):
    """Twisted's FileDescriptor buffering and flow control, with a socket we drain by hand."""

    connected = 1

    def __init__(self) -> None:
        # No reactor: the methods that would use one are overridden below.
        super().__init__(reactor=cast(IReactorFDSet, object()))
        self.wire: list[bytes] = []
        self.accept = 0  # bytes the "socket" takes on the next doWrite

    def startWriting(self) -> None:
        pass

    def stopWriting(self) -> None:
        pass

    def startReading(self) -> None:
        pass

    def stopReading(self) -> None:
        pass

    def writeSomeData(self, data: bytes) -> int:
        n = min(len(data), self.accept)
        self.wire.append(bytes(data[:n]))
        return n

    def buffered(self) -> int:
        return len(self.dataBuffer) - self.offset + self._tempDataLen

    def drain(self) -> None:
        self.accept = 1 << 30
        self.doWrite()  # type: ignore[no-untyped-call]  # Twisted leaves it unannotated
        self.accept = 0


class RecordingProducer:
    """Stands for Twisted's HTTPChannel, left registered on the transport by the upgrade."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")

    def stopProducing(self) -> None:
        self.calls.append("stop")


class FakeProtocol:
    def __init__(self, transport: FakeTCPTransport) -> None:
        self.transport = transport
        self.closed = False

    def handle_reply(self, message: dict[str, Any]) -> None:
        if self.closed:  # autobahn's sendMessage once the socket is closing
            raise RuntimeError("Attempt to send on a closed protocol")
        if message["type"] == "websocket.send":
            self.transport.write(message["text"].encode())
        else:
            self.transport.write(b"CLOSE %d" % message["code"])


class FakeServer:
    async def handle_reply(self, protocol: FakeProtocol, message: dict[str, Any]) -> None:
        protocol.handle_reply(message)


class SessionWrapper:
    """Like channels.sessions.InstanceSessionWrapper: a bound send keeping ``real_send``."""

    def __init__(self, send: Any) -> None:
        self.real_send = send

    async def send(self, message: dict[str, Any]) -> None:
        await self.real_send(message)


def daphne_shape() -> tuple[FakeTCPTransport, RecordingProducer, Any]:
    transport = FakeTCPTransport()
    channel = RecordingProducer()
    transport.registerProducer(cast(IProducer, channel), True)  # IPushProducer by duck typing
    send = functools.partial(FakeServer().handle_reply, FakeProtocol(transport))
    return transport, channel, send


@pytest.mark.parametrize("wrapped", [False, True])
async def test_daphne_transport_pauses_and_resumes_the_writer(wrapped: bool) -> None:
    transport, channel, send = daphne_shape()
    if wrapped:  # AuthMiddlewareStack's SessionMiddleware wraps send
        send = SessionWrapper(send).send
    queue = OutboundQueue(send, max_bytes=200_000)
    queue.start()
    assert queue.backpressure == "transport"
    assert transport.producer is not channel  # chained in front of it
    frame = "x" * 1000
    for _ in range(150):
        assert queue.put(frame)
    await settle()
    # The transport passed its 64 KiB high-water mark on the 66th frame and paused us there.
    assert transport.buffered() == 66 * 1000
    assert queue.queued_bytes == 84 * 1000
    assert channel.calls == ["pause"]  # the previous producer still hears about it
    transport.drain()  # the client reads: Twisted resumes the producer
    assert channel.calls == ["pause", "resume"]
    await settle()
    assert transport.buffered() == 66 * 1000
    assert queue.queued_bytes == 18 * 1000
    transport.drain()
    await settle()
    assert queue.queued_bytes == 0
    transport.drain()
    assert b"".join(transport.wire) == frame.encode() * 150
    await queue.close()
    assert transport.producer is channel  # put back


async def test_daphne_client_that_never_reads_overflows_and_gets_the_close() -> None:
    transport, _channel, send = daphne_shape()
    queue = OutboundQueue(send, max_bytes=10_000)
    queue.start()
    frame = "y" * 1000
    results = []
    for _ in range(66):  # one at a time, written at once: the 66th passes the high-water mark
        results.append(queue.put(frame))
        await settle()
    assert queue.queued_bytes == 0
    results += [queue.put(frame) for _ in range(20)]
    assert results == [True] * 76 + [False] * 10
    await asyncio.wait_for(queue.join(), 1)
    # Bounded: the high-water mark plus one frame in Twisted, then the close frame (written
    # although paused: autobahn drops the connection if the close handshake does not finish).
    assert transport.buffered() == 66 * 1000 + len(b"CLOSE 4008")
    assert transport._tempDataBuffer[-1] == b"CLOSE 4008"
    await queue.close()


async def test_daphne_connection_lost_stops_the_writer() -> None:
    transport, channel, send = daphne_shape()
    queue = OutboundQueue(send, max_bytes=100_000)
    queue.start()
    for _ in range(70):
        queue.put("z" * 1000)
    await settle()
    # Calls producer.stopProducing(), drops the producer (Twisted leaves it unannotated).
    transport.connectionLost(None)  # type: ignore[no-untyped-call]
    await asyncio.wait_for(queue.join(), 1)
    assert channel.calls == ["pause", "stop"]
    assert not queue.put("z")
    await queue.close()
    assert transport.producer is None


async def test_daphne_producer_already_paused_when_attaching() -> None:
    transport, channel, send = daphne_shape()
    transport.write(b"q" * 70_000)  # over the high-water mark before the queue starts
    assert transport.producerPaused and channel.calls == ["pause"]
    queue = OutboundQueue(send, max_bytes=100_000)
    queue.start()
    queue.put("a")
    await settle()
    assert queue.queued_bytes == 1  # waits for the transport
    transport.drain()
    await settle()
    assert queue.queued_bytes == 0
    await queue.close()


async def test_other_shapes_fall_back_to_awaiting_send(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, "pgbinding.outbound"):
        queue = OutboundQueue(FakeSend(), max_bytes=100)
        queue.start()
    assert queue.backpressure == "send"
    assert "backpressure from awaiting send only" in caplog.text
    await queue.close()

    # daphne's shape, but a transport without Twisted's producer attributes
    class Bare:
        def write(self, data: bytes) -> None:
            pass

    bare = FakeProtocol(FakeTCPTransport())
    bare.transport = Bare()  # type: ignore[assignment]
    queue = OutboundQueue(functools.partial(FakeServer().handle_reply, bare), max_bytes=100)
    queue.start()
    assert queue.backpressure == "send"
    queue.put("a")
    await settle()
    await queue.close()

    # a pull producer already registered: left alone
    transport = FakeTCPTransport()
    pull = RecordingProducer()
    transport.registerProducer(cast(IProducer, pull), False)  # IPullProducer by duck typing
    send = functools.partial(FakeServer().handle_reply, FakeProtocol(transport))
    queue = OutboundQueue(send, max_bytes=100)
    queue.start()
    assert queue.backpressure == "send"
    assert transport.producer is pull
    await queue.close()


def test_max_bytes_must_be_positive() -> None:
    with pytest.raises(ValueError):
        OutboundQueue(FakeSend(), max_bytes=0)


async def test_send_hands_frames_over_inline_under_daphne_and_keeps_order() -> None:
    transport, _channel, send = daphne_shape()
    queue = OutboundQueue(send, max_bytes=200_000)
    wake = CountingEvent()
    queue._wake = wake
    queue.start()
    await settle()
    waits = wake.waits
    frames = [f"{n:04d}" + "x" * 996 for n in range(150)]
    for text in frames[:66]:
        assert await queue.send(text)
    # written in the caller's task, the writer never woken; the 66th paused the transport
    assert wake.waits == waits
    assert transport.buffered() == 66 * 1000 and queue._paused
    for text in frames[66:]:
        assert await queue.send(text)  # paused: queued
    assert queue.queued_bytes == 84 * 1000
    for _ in range(3):
        transport.drain()
        await settle()
    transport.drain()
    assert b"".join(transport.wire) == "".join(frames).encode()
    await queue.close()


async def test_send_is_put_where_send_may_wait() -> None:
    send = FakeSend()
    send.gate.clear()  # uvicorn, transport full
    queue = OutboundQueue(send, max_bytes=10)
    queue.start()
    assert await asyncio.wait_for(queue.send("a" * 6), 1)  # does not wait for the server
    assert await asyncio.wait_for(queue.send("b" * 4), 1)
    await settle()
    assert not await queue.send("c")
    assert queue.overflowed
    await asyncio.wait_for(queue.join(), 1)
    assert send.closes()[0]["code"] == CLOSE_TOO_SLOW


async def test_send_failing_inline_stops_the_queue() -> None:
    _transport, _channel, send = daphne_shape()
    queue = OutboundQueue(send, max_bytes=1000)
    queue.start()
    send.args[0].closed = True
    assert not await queue.send("a")
    await asyncio.wait_for(queue.join(), 1)
    assert not queue.put("b")
    await queue.close()


async def test_long_sends_pause_while_other_requests_are_in_flight(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every FRAMES_PER_TURN frames a long send yields; while another socket's request is being
    served (its database call included) it waits GIL_PAUSE instead, so that request gets the
    CPU and the GIL (bench/replay.py measured other sockets' ``list`` at 31-54 ms p99 during a
    10,000-frame replay sent flat out, 12 ms without a replay). Alone, with only its own
    request in flight (a replay's ``subscribe``), or beside the listener's work, it goes flat
    out."""
    from pgbinding.websocket import outbound

    real_sleep = asyncio.sleep
    pauses: list[float] = []

    async def recording_sleep(delay: float, *args: Any) -> Any:
        pauses.append(delay)
        return await real_sleep(delay, *args)

    transport, _channel, send = daphne_shape()
    queue = OutboundQueue(send, max_bytes=10_000_000)
    queue.start()
    await settle()
    monkeypatch.setattr(asyncio, "sleep", recording_sleep)

    async def send_two_turns(label: str) -> list[float]:
        pauses.clear()
        for n in range(2 * outbound.FRAMES_PER_TURN):
            assert await queue.send(f"{label} {n}")
        return pauses[:2]

    assert await send_two_turns("alone") == [0, 0]
    with queue.serving_request():
        assert await send_two_turns("own request") == [0, 0]

    other_socket = OutboundQueue(FakeSend(), max_bytes=1000)
    other_started, other_done = asyncio.Event(), asyncio.Event()

    async def another_sockets_request() -> None:
        with other_socket.serving_request():
            other_started.set()
            await other_done.wait()

    other = asyncio.ensure_future(another_sockets_request())
    await other_started.wait()
    assert await send_two_turns("other request") == [outbound.GIL_PAUSE] * 2
    with queue.serving_request():
        assert await send_two_turns("both") == [outbound.GIL_PAUSE] * 2
    other_done.set()
    await other

    # The listener's work on the database threads (building messages, judging events) is not
    # a request: a socket draining a backlog of events does not slow down for it.
    import threading

    from pgbinding import threads

    release, started = threading.Event(), threading.Event()

    def listener_build() -> None:
        started.set()
        release.wait(10)

    work = asyncio.ensure_future(threads.in_thread(listener_build)())
    assert await asyncio.to_thread(started.wait, 10)
    assert await send_two_turns("listener work") == [0, 0]
    release.set()
    await work
    assert not queue.others_busy()
    transport.drain()
    await queue.close()

    # Where frames go out through the writer task (uvicorn's shape), that task is not the
    # request's: the socket's own request still does not make it pause.
    writer_sent = FakeSend()
    written = OutboundQueue(writer_sent, max_bytes=10_000_000)
    written.start()
    pauses.clear()
    with written.serving_request():
        for n in range(2 * outbound.FRAMES_PER_TURN + 1):
            assert written.put(f"queued {n}")
        await settle()
    assert len(writer_sent.texts()) == 2 * outbound.FRAMES_PER_TURN + 1
    assert outbound.GIL_PAUSE not in pauses
    await written.close()
