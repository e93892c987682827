"""Every example frame in docs/protocol.md, replayed against the real consumer.

An example starts at ``<!-- example: NAME [PATH] [anonymous] [SETTING=VALUE ...] -->`` and runs
to the next example or heading. Its ```json blocks are frames: a block is one the server sends
if its payload has a ``status`` (a reply) or a ``position`` (an event), or if it is the ASGI
close message; any other block is sent by the client (verbatim if it is not valid JSON).
``<!-- do: STEP -->`` comments are done between frames (see ``do`` below). In expected frames
``"<any>"`` matches any value, and inside a string any text; in sent frames ``"<position>"`` is
the last position received and ``"<N characters>"`` a string of N characters.
"""

from __future__ import annotations

import json
import re
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.db import connection

from tests.testapp.models import Item

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
TOKEN = re.compile(r"<!-- (example|do): (.*?) -->|^```json\n(.*?)^```|^#+ ", re.S | re.M)
CONSTRAINT = "item_value_not_negative"
# What examples change outside the flushed tables (and test_consumer's resync test leaves).
CLEANUP = (
    "ALTER TABLE testapp_item DROP CONSTRAINT IF EXISTS item_value_not_negative;"
    " UPDATE pgbinding_state SET pruned_through = 0"
)

pytestmark = pytest.mark.django_db(transaction=True, reset_sequences=True)


def parse(text: str) -> tuple[dict[str, dict[str, Any]], int]:
    """{name: {"options": [...], "steps": [(kind, value)]}}, and the count of orphan blocks."""
    examples: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    orphans = 0
    for m in TOKEN.finditer(text):
        kind, arg, block = m.group(1), m.group(2), m.group(3)
        if kind == "example":
            name, *options = arg.split()
            assert name not in examples, f"two examples named {name!r}"
            current = examples[name] = {"options": options, "steps": []}
        elif current is None:
            orphans += block is not None
        elif kind == "do":
            current["steps"].append(("do", arg.strip()))
        elif block is not None:
            current["steps"].append(("frame", block.strip()))
        else:
            current = None  # a heading ends the example
    return examples, orphans


EXAMPLES, ORPHANS = parse(DOC.read_text())


def is_from_server(frame: Any) -> bool:
    if not isinstance(frame, dict):
        return False
    payload = frame.get("payload")
    return frame.get("type") == "websocket.close" or (
        isinstance(payload, dict) and ("status" in payload or "position" in payload)
    )


def fill(value: Any, position: Any) -> Any:
    """A sent frame with its placeholders replaced."""
    if isinstance(value, dict):
        return {k: fill(v, position) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, position) for v in value]
    if value == "<position>":
        return position
    if isinstance(value, str) and (m := re.fullmatch(r"<(\d+) characters>", value)):
        return "x" * int(m.group(1))
    return value


def fit(expected: Any, actual: Any) -> Any:
    """``actual`` with the parts ``expected`` leaves open replaced by the placeholders, so a
    plain ``==`` (and pytest's diff) compares the rest."""
    if expected == "<any>":
        return expected
    if isinstance(expected, str) and "<any>" in expected and isinstance(actual, str):
        pattern = ".*".join(map(re.escape, expected.split("<any>")))
        return expected if re.fullmatch(pattern, actual, re.S) else actual
    if isinstance(expected, dict) and isinstance(actual, dict):
        return {k: fit(expected[k], v) if k in expected else v for k, v in actual.items()}
    if isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        return [fit(e, a) for e, a in zip(expected, actual, strict=True)]
    return actual


def position_in(frame: dict[str, Any]) -> Any:
    payload = frame.get("payload") or {}
    data = payload.get("data")
    return payload.get("position") or (data.get("position") if isinstance(data, dict) else None)


@sync_to_async
def seed() -> User:
    Item.objects.create(
        name="widget", value=1, price=Decimal("9.50"), uid=uuid.UUID(int=1), secret="s3cret"
    )
    Item.objects.create(
        name="gadget", value=7, status="done", price=Decimal("20"), uid=uuid.UUID(int=2)
    )
    return User.objects.create(username="staff", is_staff=True)


@sync_to_async
def sql(statement: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(statement)


@sync_to_async
def update_item(pk: int, field: str, value: Any) -> None:
    Item.objects.filter(pk=pk).update(**{field: value})


class Run:
    def __init__(self, live: Any, path: str, user: Any) -> None:
        self.live, self.path, self.user = live, path, user
        self.socket: Any = None
        self.position: Any = None

    async def connect(self) -> None:
        self.socket = await self.live.connect(self.path, self.user)

    async def do(self, step: str) -> None:
        if m := re.fullmatch(r"update item (\d+) (\w+)=(.+)", step):
            await update_item(int(m.group(1)), m.group(2), json.loads(m.group(3)))
        elif step == "truncate items":
            await sql("TRUNCATE testapp_item")
        elif step == "prune the change log":
            await sql(
                "UPDATE pgbinding_state SET pruned_through = (SELECT max(id) FROM pgbinding_change)"
            )
        elif step == f"add constraint {CONSTRAINT}":
            await sql(f"ALTER TABLE testapp_item ADD CONSTRAINT {CONSTRAINT} CHECK (value >= 0)")
        elif m := re.fullmatch(r"hold (\d+) subscriptions", step):
            for n in range(1, int(m.group(1)) + 1):
                payload = {"action": "subscribe", "request_id": f"s{n}", "pk": 1}
                await self.socket.send({"stream": "items", "payload": payload})
                reply = await self.socket.c.receive_json_from(timeout=10)
                assert reply["payload"]["status"] == 200, reply
        elif step == "reconnect":
            await self.socket.c.disconnect()
            self.live.sockets.remove(self.socket.c)
            await self.connect()
        else:
            raise AssertionError(f"unknown step {step!r}")
        await self.live.settle()

    async def send(self, text: str) -> None:
        try:
            frame = json.loads(text)
        except ValueError:
            await self.socket.c.send_to(text_data=text)
        else:
            await self.socket.send(fill(frame, self.position))

    async def expect(self, expected: dict[str, Any]) -> None:
        out = await self.socket.c.receive_output(timeout=10)
        if out["type"] == "websocket.close":
            assert out == expected
            return
        frame = json.loads(out["text"])
        assert fit(expected, frame) == expected
        self.position = position_in(frame) or self.position


def test_every_json_block_is_in_an_example() -> None:
    assert EXAMPLES and ORPHANS == 0


@pytest.mark.parametrize("name", sorted(EXAMPLES))
async def test_example(live: Any, settings: Any, name: str) -> None:
    options = EXAMPLES[name]["options"]
    overrides = dict(o.split("=", 1) for o in options if "=" in o)
    settings.PGBINDING = {**settings.PGBINDING, **{k: float(v) for k, v in overrides.items()}}
    await sql(CLEANUP)
    staff = await seed()
    await live.settle()
    path = next((o for o in options if o.startswith("/")), "/all/")
    run = Run(live, path, None if "anonymous" in options else staff)
    await run.connect()
    try:
        for kind, value in EXAMPLES[name]["steps"]:
            if kind == "do":
                await run.do(value)
                continue
            try:
                frame = json.loads(value)
            except ValueError:
                frame = None
            if is_from_server(frame):
                await run.expect(frame)
            else:
                await run.send(value)
        await live.settle()
        assert await run.socket.c.receive_nothing(0.3), "a frame the example does not show"
    finally:
        await sql(CLEANUP)
