"""Every use of aiohttp's internals, in one place: why, and what happens when they move.

The signaling endpoint handles a few thousand sockets on one core (docs/scaling.md). Through
aiohttp's public WebSocket API each message costs a queue, a future and a wake-up of the
handler task, and each send a trip through its writer; at that scale that is about a tenth of
a core. So, for data messages only:

- in: the socket's frame parser (``aiohttp._websocket.reader.WebSocketReader``, the C version
  when built) feeds an ``_Inbox`` of ours, a ``WebSocketDataQueue`` whose ``feed_data``
  handles a text or binary message right there, inside the parser's call. Control frames
  (ping, pong, close) queue as before, so aiohttp's closing handshake is unchanged. Installing
  it swaps ``ws._reader``, ``ws._parser`` and the protocol's ``_payload_parser``.
- out: ``text_frame`` builds a server frame that goes straight into the transport, and
  ``PING_FRAME`` is the sweep's ping (signaling/endpoint.py, ClientSocket and liveness_loop).
- after: ``release`` breaks the reference cycle aiohttp leaves behind a closed WebSocket.

Tested against the aiohttp minor that pyproject.toml pins (3.11 put these where they are).
Where they are not as expected, ``install`` changes nothing and returns False: messages then
take aiohttp's public path (slower, same behaviour). tests/test_endpoint.py asserts that the
fast path is the one in use, so a moved internal shows as a failing test, not a slow server.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from typing import Any

from aiohttp import WSMsgType, web

try:  # aiohttp's own frame parser and its message queue (the C versions when built)
    from aiohttp._websocket.reader import WebSocketDataQueue, WebSocketReader
except ImportError:  # pragma: no cover - an aiohttp without them: the public path
    WebSocketDataQueue = WebSocketReader = None  # type: ignore[assignment, misc]

# Called inside the parser with each data message and its size.
OnData = Callable[[bytes, int], None]

PING_FRAME = b"\x89\x00"


def text_frame(data: bytes) -> bytes:
    """A server-to-client WebSocket text frame: unmasked, uncompressed, unfragmented."""
    n = len(data)
    if n < 126:
        return bytes((0x81, n)) + data
    if n < 65536:
        return b"\x81\x7e" + n.to_bytes(2, "big") + data
    return b"\x81\x7f" + n.to_bytes(8, "big") + data


if WebSocketDataQueue is not None:

    class _Inbox(WebSocketDataQueue):  # type: ignore[misc, valid-type]
        """Where aiohttp's frame parser puts each complete message: a data message goes to
        ``on_data`` at once, in the handler task's context (its request id for the logs; the
        parser runs in the event loop's); control frames queue for the handler task."""

        def __init__(self, protocol: Any, loop: asyncio.AbstractEventLoop, on_data: OnData) -> None:
            super().__init__(protocol, 2**16, loop=loop)
            self.on_data = on_data
            self.context = contextvars.copy_context()

        def feed_data(self, data: Any, size: int) -> None:
            kind = data[0]
            if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
                self.context.run(self.on_data, data[1], size)
            else:
                super().feed_data(data, size)


def install(ws: web.WebSocketResponse, request: web.Request, max_msg_size: int, on_data: OnData) -> bool:
    """Give a prepared socket a parser that hands data messages to ``on_data``. False, and
    nothing changed, where aiohttp's internals are not as expected."""
    protocol = request.protocol
    old = getattr(ws, "_reader", None)
    if (WebSocketReader is None or protocol is None or old is None
            or getattr(protocol, "_payload_parser", None) is not getattr(ws, "_parser", ())):
        return False
    inbox = _Inbox(protocol, asyncio.get_running_loop(), on_data)
    parser = WebSocketReader(inbox, max_msg_size, compress=False, decode_text=False)
    ws._reader, ws._parser, protocol._payload_parser = inbox, parser, parser  # type: ignore[attr-defined]
    while old._buffer:  # what came in with the handshake
        inbox.feed_data(*old._buffer.popleft())
    return True


def release(request: web.Request) -> None:
    """Break the cycle aiohttp leaves behind a closed WebSocket (connection -> heartbeat
    callback -> response -> request -> connection), so reference counting frees the whole
    connection at once instead of leaving it for a full garbage collection, which would walk
    every live object with the loop stopped."""
    protocol = request.protocol
    if protocol is not None and hasattr(protocol, "_data_received_cb"):
        protocol._data_received_cb = None
