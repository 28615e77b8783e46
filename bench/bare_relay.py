"""The floor for Python: a bare aiohttp WebSocket relay with no validation and no room logic.

A socket names itself with ``{"type": "join", "id": ...}`` and gets ``{"type": "welcome"}``;
any message with a ``to`` goes, as received, to the socket of that id; everything else (stats)
is decoded and dropped. It runs on the same runtime as ``telehealth serve`` (uvloop when
installed, the same garbage-collector settings), so the difference between the two is our
own logic: validation, rooms, the hub, the writer queues and the quality monitor.

Usage: python -m bench.bare_relay --port PORT
"""

from __future__ import annotations

import argparse

import msgspec
from aiohttp import WSMsgType, web

from telehealth.server import OPEN_CONNECTIONS, collector, tune_runtime

WELCOME = b'{"type":"welcome"}'
SOCKETS = web.AppKey("sockets", dict)


class Route(msgspec.Struct):
    type: str = ""
    to: str | None = None
    id: str | None = None


async def relay(request: web.Request) -> web.WebSocketResponse:
    sockets: dict[str, web.WebSocketResponse] = request.app[SOCKETS]
    route = msgspec.json.Decoder(Route)
    ws = web.WebSocketResponse(compress=False, decode_text=False, heartbeat=15.0)
    await ws.prepare(request)
    me: str | None = None
    try:
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT and msg.type is not WSMsgType.BINARY:
                break
            head = route.decode(msg.data)
            if head.to is not None:
                peer = sockets.get(head.to)
                if peer is not None:
                    await peer.send_frame(msg.data, WSMsgType.TEXT)
            elif head.type == "join" and head.id is not None:
                me = head.id
                sockets[me] = ws
                await ws.send_frame(WELCOME, WSMsgType.TEXT)
    except (ConnectionError, RuntimeError):
        pass
    finally:
        if me is not None and sockets.get(me) is ws:
            del sockets[me]
    return ws


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    tune_runtime()
    app = web.Application()
    app[SOCKETS] = {}
    app[OPEN_CONNECTIONS] = lambda: len(app[SOCKETS])
    app.cleanup_ctx.append(collector)
    app.router.add_get("/ws", relay)
    app.router.add_get("/healthz", healthz)
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
