"""The control protocol between `hwsflow enable|disable|status` and the running agent.

Pure: requests and replies as bytes in, objects out, and back.  One request is
one JSON object on one line (at most MAX_REQUEST bytes); the reply is one JSON
object on one line, then the agent closes the connection.  Every malformed
request becomes a RequestError whose text is sent back to the client, never an
exception escaping into the agent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from hwsflow.core.model import DIRECTION_CHOICES, HEADER_MAX, HEADER_MIN, U32_MAX, DirectionChoice, is_ifname

MAX_REQUEST = 4096  # bytes, newline included: a request is a few names and numbers
MAX_REPLY = 1 << 24  # bytes: a status of tens of thousands of ports still fits


class RequestError(Exception):
    """A request the agent cannot act on; str() is what the client prints."""


@dataclass(frozen=True)
class Status:
    pass


@dataclass(frozen=True)
class Enable:
    port: str
    rate: int
    direction: DirectionChoice | None = None  # None: the port's configured direction, or the default
    header: int | None = None


@dataclass(frozen=True)
class Disable:
    port: str


Request = Status | Enable | Disable


def _port(obj: dict[str, Any]) -> str:
    port = obj.get("port")
    if not isinstance(port, str) or not is_ifname(port):
        raise RequestError(f"`port` must be an interface name (1 to 15 characters), got {port!r}"[:200])
    return port


def _int(obj: dict[str, Any], key: str, lo: int, hi: int, required: bool) -> int | None:
    value = obj.get(key)
    if value is None and not required:
        return None
    if type(value) is not int or not lo <= value <= hi:  # bool is an int subclass: not a number here
        raise RequestError(f"`{key}` must be an integer from {lo} to {hi}, got {value!r}"[:200])
    return value


def _shown(text: str) -> str:
    """A client's string as an error quotes it: escaped unless printable, so the reply stays one clean line."""
    return text if text.isprintable() else repr(text)


def _check_keys(obj: dict[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = sorted(_shown(k) for k in obj if k not in allowed)
    if unknown:
        raise RequestError(f"unknown field(s) for `{obj['cmd']}`: {', '.join(unknown)}"[:200])


def parse_request(data: bytes) -> Request:
    """The request in one received line (trailing newline optional)."""
    if len(data) > MAX_REQUEST:
        raise RequestError(f"request too long ({len(data)} bytes; at most {MAX_REQUEST})")
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise RequestError("request is not a JSON object") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("cmd"), str):
        raise RequestError("request must be a JSON object with a string `cmd`")
    cmd = obj["cmd"]
    if cmd == "status":
        _check_keys(obj, ("cmd",))
        return Status()
    if cmd == "enable":
        _check_keys(obj, ("cmd", "port", "rate", "direction", "header"))
        direction = obj.get("direction")
        if direction is not None and direction not in DIRECTION_CHOICES:
            raise RequestError(f"`direction` must be one of {', '.join(DIRECTION_CHOICES)}, got {direction!r}"[:200])
        rate = _int(obj, "rate", 1, U32_MAX, required=True)
        header = _int(obj, "header", HEADER_MIN, HEADER_MAX, required=False)
        return Enable(_port(obj), rate, direction, header)  # type: ignore[arg-type]  # checked against DIRECTIONS above
    if cmd == "disable":
        _check_keys(obj, ("cmd", "port"))
        return Disable(_port(obj))
    raise RequestError(f"unknown command {cmd[:40]!r}; known: enable, disable, status"[:200])


def encode_request(request: Request) -> bytes:
    """The line the CLI sends for request."""
    if isinstance(request, Status):
        obj: dict[str, Any] = {"cmd": "status"}
    elif isinstance(request, Enable):
        obj = {"cmd": "enable", "port": request.port, "rate": request.rate}
        if request.direction is not None:
            obj["direction"] = request.direction
        if request.header is not None:
            obj["header"] = request.header
    else:
        obj = {"cmd": "disable", "port": request.port}
    return json.dumps(obj).encode() + b"\n"


def ok_reply(**fields: object) -> bytes:
    return json.dumps({"ok": True, **fields}, separators=(",", ":")).encode() + b"\n"


def error_reply(message: str) -> bytes:
    return json.dumps({"ok": False, "error": message}).encode() + b"\n"


def parse_reply(data: bytes) -> dict[str, Any]:
    """The agent's reply; RequestError if it is not one (a truncated or foreign answer)."""
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise RequestError("the agent's reply is not JSON (truncated?)") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("ok"), bool):
        raise RequestError("the agent's reply has no `ok` field")
    return obj
