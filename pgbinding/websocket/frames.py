"""Reading client frames safely, and encoding ours.

Every inbound frame is checked before anything acts on it: size, strict JSON (no ``NaN`` or
``Infinity``, no number JSON cannot hold), nesting depth, and strings that are valid Unicode
(a lone surrogate cannot be stored or echoed). A frame that fails gets a 4xx reply; the socket
stays open and nothing is written.
"""

from __future__ import annotations

import json
import math
from typing import Any

from ..exceptions import RequestError

#: Deepest nesting of arrays and objects accepted in a frame.
MAX_DEPTH = 32
REQUEST_ID_MAX = 100


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text} is too large")
    return value


_DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite)
#: Outbound frames are strict JSON: a value JSON cannot hold (NaN) is a bug, not a frame.
_ENCODER = json.JSONEncoder(allow_nan=False)
encode = _ENCODER.encode


def stream_frame(stream: str, payload: str) -> str:
    """The frame ``{"stream": stream, "payload": ...}`` around a payload already encoded, as
    :func:`encode` would write it whole."""
    return f'{{"stream": {encode(stream)}, "payload": {payload}}}'


def parse_frame(text: str) -> Any:
    """A frame's JSON value, or :class:`RequestError` (400) saying what is wrong with it."""
    try:
        value = _DECODER.decode(text)
    except RecursionError:
        raise RequestError(400, f"Frame nested too deeply (at most {MAX_DEPTH} levels).") from None
    except ValueError as exc:
        raise RequestError(400, f"Malformed JSON: {exc}") from None
    _check_structure(value)
    return value


def _check_structure(value: Any) -> None:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            _check_text(item)
        elif isinstance(item, dict | list):
            if depth > MAX_DEPTH:
                raise RequestError(400, f"Frame nested too deeply (at most {MAX_DEPTH} levels).")
            if isinstance(item, dict):
                for key, child in item.items():
                    _check_text(key)
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in item)


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise RequestError(
            400,
            "Strings must be valid Unicode; the frame holds a lone surrogate (\\ud800-\\udfff).",
        ) from None


def check_request_id(request_id: Any, stream: Any, action: Any) -> None:
    if request_id is not None and (
        isinstance(request_id, bool)
        or not isinstance(request_id, str | int)
        or len(str(request_id)) > REQUEST_ID_MAX
    ):
        raise RequestError(
            400,
            f"'request_id' must be a string or an integer of at most {REQUEST_ID_MAX} characters.",
            stream=stream,
            action=action,
        )
