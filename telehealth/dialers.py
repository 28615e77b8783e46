"""Phone dialers for the phone step: how the therapist's call to a partner gets placed.

- ``TelDialer``: the default. The therapist's page shows a one-click ``tel:`` link; the
  therapist's own phone places the call. Nothing leaves the server.
- ``WebhookDialer``: sends an HMAC-signed JSON request to the clinic's phone system, which
  places the call. Retries with backoff on network errors, 429 and 5xx answers. Signed and
  sent as the ops webhooks are (telehealth/webhooks.py, ``post_signed``).

The webhook carries the partner's number (the phone system needs it) to the clinic's own
endpoint only; it is never logged.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from telehealth.webhooks import post_signed

log = logging.getLogger("telehealth.dialer")


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
        async with aiohttp.ClientSession(timeout=self.timeout) as session:
            status = await post_signed(session, self.url, self.secret, body, attempts=self.attempts,
                                       backoff_s=self.backoff_s, clock=time.time)
        if status is not None and status < 300:
            return True
        if status is not None:
            log.warning("phone system refused the call request: HTTP %s", status,
                        extra={"room_id": request.room_id})
            return False
        log.warning("phone system unreachable after %d attempts", self.attempts,
                    extra={"room_id": request.room_id})
        return False
