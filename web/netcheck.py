"""The network check's HTTP side, behind each join link (the page's half is static/netcheck.js).

- ``GET  /j/{token}/netcheck``: the ICE servers and policy a call would use.
- ``POST /j/{token}/netcheck``: an SDP offer for the probe (media/probe.py); its answer.
  Round trip and loss are measured on that connection, the path a call's media takes.
- ``GET  /j/{token}/netcheck/down?bytes=N``: N incompressible bytes, as fast as TCP takes
  them; the page times their arrival (download speed). The socket's send buffer is sized to
  hold the whole body, so the kernel paces it from the first write on: a busy server loop
  cannot make a narrow link's figure lower than the link.
- ``POST /j/{token}/netcheck/up``: a body of up to ``MAX_TRANSFER_BYTES``, read and dropped;
  the reply says how many bytes came and how late the server's loop has been waking lately,
  so the page can tell a busy server from a slow network.

Throughput over plain HTTP costs the server a copy into the kernel per chunk, where the same
bytes through aiortc's SCTP and DTLS cost Python time per packet. Every request needs a live
link; at most ``NetworkProbe.max_transfers`` transfers run at once.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time

import msgspec
from aiohttp import web

from media.probe import NetworkProbe
from signaling.endpoint import SIGNALING
from telehealth.appkeys import CONFIG
from telehealth.errors import ErrorCode, LinkError, UserError
from web.pages import LINK_STATUS, checked_link, json_error, same_origin

PROBE = web.AppKey("probe", NetworkProbe)

MAX_TRANSFER_BYTES = 4 * 1024 * 1024
CHUNK_BYTES = 64 * 1024
# Random, so that no compressing proxy in front of us can make a slow link look fast.
PAYLOAD = os.urandom(CHUNK_BYTES)


async def netcheck_config(request: web.Request) -> web.StreamResponse:
    """The ICE servers a call would use, so the check takes the same path."""
    try:
        _, record, person = checked_link(request)
    except LinkError as exc:
        return json_error(exc.code, LINK_STATUS.get(exc.code, 400))
    servers, _ = request.app[SIGNALING].hub.extras(record, person, time.time())
    return web.json_response({"ice_servers": msgspec.to_builtins(servers),
                              "ice_transport_policy": request.app[SIGNALING].hub.ice_policy})


class _Offer(msgspec.Struct):
    type: str
    sdp: str


def _refused_request(request: web.Request, *, post: bool) -> web.Response | None:
    """Why a check request is refused (a POST from another site, a link that lets no one in),
    or None."""
    if post and not same_origin(request):
        return json_error(ErrorCode.FORBIDDEN, 403)
    try:
        checked_link(request)
    except LinkError as exc:
        return json_error(exc.code, LINK_STATUS.get(exc.code, 400))
    return None


def _refused(exc: UserError) -> web.Response:
    return json_error(exc.code, 429 if exc.code == ErrorCode.RATE_LIMITED else 400, exc.detail)


async def netcheck_offer(request: web.Request) -> web.StreamResponse:
    refused = _refused_request(request, post=True)
    if refused is not None:
        return refused
    try:
        offer = msgspec.json.decode(await request.read(), type=_Offer)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return json_error(ErrorCode.INVALID_MESSAGE, 400)
    try:
        answer = await request.app[PROBE].answer(offer.type, offer.sdp)
    except UserError as exc:
        return _refused(exc)
    return web.json_response({"type": answer.type, "sdp": answer.sdp})


def _wanted_bytes(request: web.Request) -> int | None:
    raw = request.query.get("bytes", "")
    if not raw.isdigit() or not 0 < int(raw) <= MAX_TRANSFER_BYTES:
        return None
    return int(raw)


async def netcheck_down(request: web.Request) -> web.StreamResponse:
    refused = _refused_request(request, post=False)
    if refused is not None:
        return refused
    size = _wanted_bytes(request)
    if size is None:
        return json_error(ErrorCode.INVALID_MESSAGE, 400, f"bytes must be 1 to {MAX_TRANSFER_BYTES}.")
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = size
    try:
        with request.app[PROBE].transfer():
            _buffer_whole_body(request, size)
            await response.prepare(request)
            left = size
            while left > 0:
                # write() waits while the socket's buffer is full: TCP paces, we do not.
                await response.write(PAYLOAD[:min(left, CHUNK_BYTES)])
                left -= CHUNK_BYTES
            await response.write_eof()
    except UserError as exc:
        return _refused(exc)
    except ConnectionError:
        # The page stops reading once it has timed enough; that ends the transfer early.
        pass
    return response


def _buffer_whole_body(request: web.Request, size: int) -> None:
    """Let the kernel take the whole body at once (up to net.core.wmem_max; Linux grants at
    least 200 KiB by default, which covers every download a narrow link gets), so that the
    transfer is paced by TCP alone, never by when this loop next gets the CPU."""
    sock = request.transport.get_extra_info("socket") if request.transport is not None else None
    if sock is None:
        return
    with contextlib.suppress(OSError):
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) < 2 * size:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size + CHUNK_BYTES)


async def netcheck_up(request: web.Request) -> web.StreamResponse:
    refused = _refused_request(request, post=True)
    if refused is not None:
        return refused
    length = request.content_length
    if length is None or not 0 < length <= MAX_TRANSFER_BYTES:
        return json_error(ErrorCode.INVALID_MESSAGE, 413 if length else 411,
                          f"The upload must say its length, 1 to {MAX_TRANSFER_BYTES} bytes.")
    probe = request.app[PROBE]
    try:
        with probe.transfer():
            received = 0
            async for chunk in request.content.iter_any():
                received += len(chunk)
                if received > MAX_TRANSFER_BYTES:
                    return json_error(ErrorCode.INVALID_MESSAGE, 413)
    except UserError as exc:
        return _refused(exc)
    return web.json_response({"bytes": received, "server_lag_ms": probe.lag.recent_ms()})


async def close_probe(app: web.Application) -> None:
    await app[PROBE].close()


def setup(app: web.Application) -> None:
    app.router.add_get("/j/{token}/netcheck", netcheck_config)
    app.router.add_post("/j/{token}/netcheck", netcheck_offer)
    app.router.add_get("/j/{token}/netcheck/down", netcheck_down)
    app.router.add_post("/j/{token}/netcheck/up", netcheck_up)
    app[PROBE] = NetworkProbe.from_config(app[CONFIG])
    app.on_cleanup.append(close_probe)
