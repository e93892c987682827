"""Outbound frame encoding: a replayed event, encoded on its own (in a worker process, see
pgbinding.processes) and wrapped in its frame, is the text encoding the whole frame gives."""

from __future__ import annotations

import json

import pytest

from pgbinding.websocket import frames

PAYLOADS = [
    {"action": "update", "pk": 1, "data": {"name": 'é \u2028 "q"', "n": 1.5, "x": None}},
    {"action": "delete", "pk": "a/b", "position": "12:3-4"},
    {"action": "reload", "reason": "truncate", "data": [1, [2, {"k": True}]]},
]


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("stream", ["items", 'we"ird\\stream', "ünï"])
def test_a_payload_wrapped_in_its_frame_reads_as_the_frame_encoded_whole(
    stream: str, payload: dict[str, object]
) -> None:
    whole = frames.encode({"stream": stream, "payload": payload})
    assert frames.stream_frame(stream, frames.encode(payload)) == whole
    assert json.loads(whole) == {"stream": stream, "payload": payload}


def test_outbound_frames_refuse_values_json_cannot_hold() -> None:
    with pytest.raises(ValueError):
        frames.encode({"stream": "items", "payload": {"value": float("nan")}})
