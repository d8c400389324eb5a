"""OVSDB's JSON-RPC (RFC 7047 section 4): messages and their framing on a stream.

Pure code over bytes.  ovsdb-server writes one JSON object per message, back to
back with no separator or length (recorded from Open vSwitch 3.1's server:
tests/unit/wire/ovsdb_session.jsonrpc), so MessageStream finds where each object
ends by counting braces outside strings, then parses it whole.  A request has a
method and an id, a notification a method and a null id, a reply an id and a
result or an error (an error reply may carry no result at all).
"""

from __future__ import annotations

import codecs
import json
import re
from dataclasses import dataclass
from typing import Any

# bytes one message may take: a host's whole Bridge/Port/Interface tables (the initial monitor reply) are
# a few MB even with thousands of ports; beyond this the peer is not an ovsdb-server talking sense
MAX_MESSAGE = 64 << 20

# inside a message: an escape (two characters, so an escaped quote is skipped), a quote or a brace
_TOKEN = re.compile(r'\\.|["{}]', re.DOTALL)
_SPACE = re.compile(r"[ \t\r\n]*")


class ProtocolError(Exception):
    """The peer sent something that is not RFC 7047 JSON-RPC (or not what was asked for)."""


@dataclass(frozen=True)
class Request:
    method: str
    params: list[Any]
    id: Any  # any JSON value but null


@dataclass(frozen=True)
class Notification:
    method: str
    params: list[Any]


@dataclass(frozen=True)
class Reply:
    id: Any
    result: Any
    error: Any  # None when the request succeeded


Message = Request | Notification | Reply


def encode_request(method: str, params: list[Any], request_id: Any) -> bytes:
    return json.dumps({"method": method, "params": params, "id": request_id}, separators=(",", ":")).encode()


def encode_reply(request_id: Any, result: Any) -> bytes:
    return json.dumps({"result": result, "error": None, "id": request_id}, separators=(",", ":")).encode()


def message_of(value: object) -> Message:
    """The message a decoded JSON object is; ProtocolError for any other shape."""
    if not isinstance(value, dict):
        raise ProtocolError(f"a JSON-RPC message must be an object, got {type(value).__name__}")
    if "method" in value:
        method, params = value["method"], value.get("params")
        if not isinstance(method, str) or not isinstance(params, list):
            raise ProtocolError(f"a request needs a string method and a list of params: {_excerpt(value)}")
        request_id = value.get("id")
        return Notification(method, params) if request_id is None else Request(method, params, request_id)
    if "id" in value and ("result" in value or "error" in value):
        return Reply(value["id"], value.get("result"), value.get("error"))
    raise ProtocolError(f"neither a request nor a reply: {_excerpt(value)}")


def _excerpt(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 120 else text[:120] + "..."


class MessageStream:
    """Bytes in as they arrive, whole messages out: a message split across reads (or a UTF-8 character
    split across them) waits for its end, several in one read all come out."""

    def __init__(self, limit: int = MAX_MESSAGE) -> None:
        self.limit = limit
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._text = ""
        self._scan = 0  # where the brace count goes on in _text
        self._depth = 0
        self._in_string = False

    def feed(self, data: bytes) -> list[Message]:
        try:
            self._text += self._utf8.decode(data)
        except UnicodeDecodeError as err:
            raise ProtocolError(f"not UTF-8: {err.reason}") from None
        messages = []
        while True:
            end = self._message_end()
            if end is None:
                break
            text, self._text, self._scan = self._text[:end], self._text[end:], 0
            try:
                value = json.loads(text)
            except ValueError as err:
                raise ProtocolError(f"invalid JSON: {err}") from None
            messages.append(message_of(value))
        if len(self._text) > self.limit:
            raise ProtocolError(f"a message longer than {self.limit} characters")
        return messages

    def _message_end(self) -> int | None:
        """Where the first complete message in _text ends, or None while it is incomplete."""
        if self._scan == 0:
            start = _SPACE.match(self._text).end()  # type: ignore[union-attr]  # always matches
            self._text = self._text[start:]
            if not self._text:
                return None
            if self._text[0] != "{":
                raise ProtocolError(f"a message must be a JSON object, it starts with {self._text[:20]!r}")
        for token in _TOKEN.finditer(self._text, self._scan):
            self._scan = token.end()
            char = token.group()
            if char == '"':
                self._in_string = not self._in_string
            elif self._in_string or len(char) == 2:
                continue  # a brace inside a string, or an escape (which json.loads judges)
            elif char == "{":
                self._depth += 1
            else:
                self._depth -= 1
                if self._depth == 0:
                    return self._scan
        return None
