"""Phone dialers for the phone step: how the therapist's call to a partner gets placed.

- ``TelDialer``: the default. The therapist's page shows a one-click ``tel:`` link; the
  therapist's own phone places the call. Nothing leaves the server.
- ``WebhookDialer``: sends an HMAC-signed JSON request to the clinic's phone system, which
  places the call. Retries with backoff on network errors and 5xx answers.

The webhook carries the partner's number (the phone system needs it) to the clinic's own
endpoint only; it is never logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass
from typing import Protocol

import aiohttp

log = logging.getLogger("telehealth.dialer")

SIGNATURE_HEADER = "X-Telehealth-Signature"
TIMESTAMP_HEADER = "X-Telehealth-Timestamp"


@dataclass(frozen=True, slots=True)
class CallRequest:
    room_id: str
    callee_id: str
    phone: str | None
    therapist_id: str
    at: float


class Dialer(Protocol):
    async def dial(self, request: CallRequest) -> bool: ...


class TelDialer:
    """The therapist dials from their own phone via the tel: link on their page."""

    async def dial(self, request: CallRequest) -> bool:
        return True


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>`` over ``timestamp.body``: a receiver can reject replays by time."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


class WebhookDialer:
    def __init__(self, url: str, secret: str, *, attempts: int = 4, backoff_s: float = 0.5,
                 timeout_s: float = 5.0) -> None:
        self.url = url
        self.secret = secret
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def dial(self, request: CallRequest) -> bool:
        body = json.dumps({
            "event": "phone_fallback", "room_id": request.room_id, "callee_id": request.callee_id,
            "phone": request.phone, "therapist_id": request.therapist_id, "at": request.at,
        }).encode()
        delay = self.backoff_s
        async with aiohttp.ClientSession(timeout=self.timeout) as session:
            for attempt in range(1, self.attempts + 1):
                stamp = str(int(time.time()))
                headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: stamp,
                           SIGNATURE_HEADER: sign(self.secret, stamp, body)}
                try:
                    async with session.post(self.url, data=body, headers=headers) as response:
                        if response.status < 300:
                            return True
                        if response.status < 500 and response.status != 429:
                            log.warning("phone system refused the call request: HTTP %s", response.status,
                                        extra={"room_id": request.room_id})
                            return False
                except (TimeoutError, aiohttp.ClientError):
                    pass
                if attempt < self.attempts:
                    await asyncio.sleep(delay)
                    delay *= 2
        log.warning("phone system unreachable after %d attempts", self.attempts,
                    extra={"room_id": request.room_id})
        return False
