"""A client that never reads must not grow the server: real daphne (and uvicorn) processes
serving ``slow_reader_app``, raw TCP clients that stop reading after the handshake, and the
server's RSS read with psutil. No database, no channel layer, no mocks.

Each measurement starts a fresh server (memory handed to the allocator is not given back, so
one process cannot measure two runs) and warms it up with a short reading client first.
"""

from __future__ import annotations

import base64
import importlib.util
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from devservers import free_port
from pgbinding.websocket.outbound import CLOSE_TOO_SLOW

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.e2e.slow_reader_app:application"
MB = 1024 * 1024
FRAMES = 60_000  # of 1 KB: ~60 MB when nothing bounds them
BOUNDED_GROWTH = 30 * MB

HAS_UVICORN = importlib.util.find_spec("uvicorn") is not None
HAS_TLS = all(importlib.util.find_spec(m) for m in ("OpenSSL", "service_identity", "cryptography"))
UVICORN_WS = ["websockets", "websockets-sansio", "wsproto"]


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Server:
    kind: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    tls: ssl.SSLContext | None = None  # the client's, when the server speaks TLS

    def lines(self, event: str) -> list[str]:
        prefix = f"slow-reader {event}"
        return [
            line
            for line in self.log.read_text(errors="replace").splitlines()
            if line.startswith(prefix)
        ]

    def wait_line(self, event: str, count: int = 1, timeout: float = 30) -> str:
        wait_for(
            lambda: len(self.lines(event)) >= count or self.proc.poll() is not None,
            f"'{event}' from {self.kind}",
            timeout,
        )
        assert self.proc.poll() is None, f"{self.kind} exited:\n{self.log.read_text()}"
        return self.lines(event)[count - 1]

    def listening(self) -> bool:
        return port_open(self.port) or self.proc.poll() is not None

    def rss(self) -> int:
        return int(psutil.Process(self.proc.pid).memory_info().rss)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Callable[[str], Server]]:
    """Starts daphne (``"daphne"``, ``"daphne-tls"``) or uvicorn (``"uvicorn:<ws
    implementation>"``) on a free port; every process started is stopped at the end, whatever
    happened."""
    started: list[Server] = []
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env["PYTHONUNBUFFERED"] = "1"

    def start(kind: str) -> Server:
        for attempt in range(3):  # the free port may be taken before the server binds it
            port = free_port()
            tls = None
            if kind == "daphne":
                args = ["-m", "daphne", "-b", "127.0.0.1", "-p", str(port), APP]
            elif kind == "daphne-tls":
                key, cert = self_signed(tmp_path)
                endpoint = f"ssl:{port}:interface=127.0.0.1:privateKey={key}:certKey={cert}"
                args = ["-m", "daphne", "-e", endpoint, APP]
                tls = ssl.create_default_context(cafile=cert)
                tls.check_hostname = False
            else:
                ws = kind.split(":", 1)[1]
                args = ["-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port)]
                args += ["--ws", ws, "--log-level", "warning", APP]
            log = tmp_path / f"{kind.replace(':', '-')}-{len(started)}-{attempt}.log"
            with log.open("w") as out:
                proc = subprocess.Popen(
                    [sys.executable, *args], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
                )
            server = Server(kind, port, proc, log, tls)
            started.append(server)
            wait_for(server.listening, f"{kind} to listen")
            if proc.poll() is None:
                return server
        raise AssertionError(f"{kind} did not start:\n{log.read_text()}")

    try:
        yield start
    finally:
        for server in started:
            server.stop()


def self_signed(directory: Path) -> tuple[Path, Path]:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = directory / "key.pem", directory / "cert.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def never_reading_client(server: Server, query: str) -> socket.socket:
    """Opens a WebSocket with a hand-built handshake, reads the 101 response and then nothing
    more; its receive buffer is shrunk so that little sits in the kernel."""
    port = server.port
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    if server.tls is not None:
        sock = server.tls.wrap_socket(sock)
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /slow/?{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    sock.sendall(request.encode())
    head = b""
    while not head.endswith(b"\r\n\r\n"):  # byte by byte: not one byte of a frame is read
        byte = sock.recv(1)
        assert byte, f"connection closed during the handshake: {head!r}"
        head += byte
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def read_all(server: Server, query: str) -> tuple[int, int | None]:
    """A client that reads: (frames received, close code received)."""
    frames, code = 0, None
    scheme = "ws" if server.tls is None else "wss"
    url = f"{scheme}://127.0.0.1:{server.port}/slow/?{query}"
    with connect(url, max_size=None, ssl=server.tls, open_timeout=30) as ws:
        try:
            while True:
                ws.recv(timeout=30)
                frames += 1
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else None
    return frames, code


def warm_up(server: Server, mode: str) -> None:
    assert read_all(server, f"mode={mode}&frames=200&close=1") == (200, 1000)
    server.wait_line("disconnected")


@dataclass
class Growth:
    base: int
    peak: int
    after_close: int

    def __str__(self) -> str:
        return (
            f"base {self.base / MB:.1f} MB, peak +{(self.peak - self.base) / MB:.1f} MB, "
            f"after close +{(self.after_close - self.base) / MB:.1f} MB"
        )


def slow_reader_run(server: Server, mode: str, until: str, server_closes: bool) -> Growth:
    """Warm up, then connect a never-reading client and sample RSS until ``until`` is logged
    and the server has settled; then close the client (unless the server closed it first)."""
    warm_up(server, mode)
    base = server.rss()
    disconnects, seen = len(server.lines("disconnected")), len(server.lines(until))
    sock = never_reading_client(server, f"mode={mode}&frames={FRAMES}")
    peak = base
    try:
        deadline = time.monotonic() + 60
        while len(server.lines(until)) == seen:
            assert time.monotonic() < deadline, f"no '{until}':\n{server.log.read_text()}"
            assert server.proc.poll() is None, server.log.read_text()
            peak = max(peak, server.rss())
            time.sleep(0.05)
        for _ in range(20):  # a second more: buffers that were still filling
            peak = max(peak, server.rss())
            time.sleep(0.05)
        if server_closes:
            # The server drops the connection by itself (no help from the client).
            server.wait_line("disconnected", disconnects + 1, timeout=30)
            assert_closed_by_server(sock)
    finally:
        sock.close()
    server.wait_line("disconnected", disconnects + 1, timeout=30)
    time.sleep(0.5)
    return Growth(base, max(peak, server.rss()), server.rss())


def assert_closed_by_server(sock: socket.socket) -> None:
    """Reading now reaches the end of the stream (FIN or RST) instead of blocking."""
    sock.settimeout(10)
    try:
        while sock.recv(1 << 16):
            pass
    except ConnectionResetError:
        pass


@pytest.mark.parametrize("kind", ["daphne", "daphne-tls"])
def test_daphne_bounds_a_client_that_never_reads(
    servers: Callable[[str], Server], kind: str
) -> None:
    if kind == "daphne-tls" and not HAS_TLS:
        pytest.skip("daphne's TLS needs pyOpenSSL, service_identity and cryptography")
    server = servers(kind)
    growth = slow_reader_run(server, "queue", until="overflow", server_closes=True)
    print(f"\n{kind}, OutboundQueue (4 MiB): {growth}")
    connected = server.lines("connected")[-1]
    assert "backpressure=transport" in connected, connected  # seen through SessionMiddleware
    # It overflowed after the kernel, Twisted's 64 KiB and the queue's 4 MiB filled: far from
    # all 60,000 frames.
    sent = int(server.lines("overflow")[-1].split("frames=")[1].split()[0])
    assert sent < FRAMES / 2, sent
    assert growth.peak - growth.base < BOUNDED_GROWTH, growth
    assert growth.after_close - growth.base < BOUNDED_GROWTH, growth


def test_daphne_without_the_queue_grows_without_bound(servers: Callable[[str], Server]) -> None:
    """The control: the same client and frames, sent straight to daphne's send."""
    server = servers("daphne")
    growth = slow_reader_run(server, "direct", until="produced", server_closes=False)
    print(f"\ndaphne, direct send: {growth}")
    assert f"frames={FRAMES}" in server.lines("produced")[-1]
    assert growth.peak - growth.base > 45 * MB, growth  # every frame sits in Twisted's buffer
    assert growth.after_close - growth.base > 45 * MB, growth  # and is not given back


@pytest.mark.parametrize("kind", ["daphne"] + [f"uvicorn:{ws}" for ws in UVICORN_WS])
def test_a_reading_client_gets_close_4008_on_overflow(
    servers: Callable[[str], Server], kind: str
) -> None:
    if kind.startswith("uvicorn") and not HAS_UVICORN:
        pytest.skip("uvicorn is not installed")
    server = servers(kind)
    # 100 frames put at once into a 10,000-byte queue: it overflows on the tenth.
    frames, code = read_all(server, "burst=1&frames=100&max_bytes=10000")
    assert code == CLOSE_TOO_SLOW
    assert frames == 0  # what was queued is dropped; the client resumes with `since`
    assert "frames=9 " in server.wait_line("overflow") + " "
    server.wait_line("disconnected")


@pytest.mark.skipif(not HAS_UVICORN, reason="uvicorn is not installed")
@pytest.mark.parametrize("ws", UVICORN_WS)
def test_uvicorn_bounds_a_client_that_never_reads(
    servers: Callable[[str], Server], ws: str
) -> None:
    """uvicorn's send waits for the transport to drain, so the writer task waits and the
    queue in front of it fills: the bound is what catches the client."""
    server = servers(f"uvicorn:{ws}")
    growth = slow_reader_run(server, "queue", until="overflow", server_closes=False)
    print(f"\nuvicorn --ws {ws}, OutboundQueue (4 MiB): {growth}")
    assert "backpressure=send" in server.lines("connected")[-1]
    assert growth.peak - growth.base < BOUNDED_GROWTH, growth
    assert growth.after_close - growth.base < BOUNDED_GROWTH, growth


@pytest.mark.skipif(not HAS_UVICORN, reason="uvicorn is not installed")
def test_uvicorn_without_the_queue_blocks_the_consumer(servers: Callable[[str], Server]) -> None:
    """The control under uvicorn: memory does not grow, because ``await send`` stops the
    consumer (in pgbinding the channel layer then fills up and drops messages)."""
    server = servers("uvicorn:websockets-sansio")
    warm_up(server, "direct")
    base = server.rss()
    sock = never_reading_client(server, f"mode=direct&frames={FRAMES}")
    try:
        time.sleep(3)
        assert len(server.lines("produced")) == 1  # the warm-up's: stuck in send, ~2,800 in
        growth = server.rss() - base
    finally:
        sock.close()
    line = server.wait_line("disconnected", 2)
    print(f"\nuvicorn --ws websockets-sansio, direct send: +{growth / MB:.1f} MB, {line}")
    assert growth < BOUNDED_GROWTH
    assert int(line.split("frames=")[1]) < FRAMES / 2
