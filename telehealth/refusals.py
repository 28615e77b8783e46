"""Refused attempts by people without a credential, summarised for the audit log.

A bad link (``GET /j/<random>``, a WebSocket ``join`` with a forged token) or a failed
sign-in costs the sender nothing, so one entry each would let anyone grow the database
without bound and bury the events that matter (thousands of rows in seconds). They are
counted in memory instead and written once per window: one entry per kind, reason and
address, with the count in ``attempts``. Within a window at most ``max_keys`` addresses get
an entry of their own; the rest are added up under ``ip_hash: "other"``. So what
unauthenticated traffic adds to the audit log is bounded by the number of windows, whatever
it sends.

The address is never stored: ``ip_hash`` is a keyed hash (HMAC-SHA256, a key of this
process), enough to tell one address from another within the server's life.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import Counter

from telehealth.audit import AuditEvent, AuditLog

OTHER = "other"

_Key = tuple[AuditEvent, str, str | None, str]  # event, reason, actor, ip_hash


class RefusalTally:
    """Counts ``count()`` calls per (event, reason, actor, address) until ``flush()`` writes
    them to ``audit``; the app flushes every ``refusal_summary_seconds`` and at shutdown."""

    def __init__(self, audit: AuditLog, *, max_keys: int = 100) -> None:
        self.audit = audit
        self.max_keys = max_keys
        self._key = secrets.token_bytes(32)
        self._counts: Counter[_Key] = Counter()

    def ip_hash(self, address: str) -> str:
        return hmac.new(self._key, address.encode(), hashlib.sha256).hexdigest()[:16]

    def count(self, event: AuditEvent, reason: str, address: str, *, actor: str | None = None) -> None:
        key = (event, reason, actor, self.ip_hash(address))
        if key not in self._counts and len(self._counts) >= self.max_keys:
            key = (event, reason, actor, OTHER)
        self._counts[key] += 1

    def flush(self) -> int:
        """Write one audit entry per key counted since the last flush; the number written."""
        counts, self._counts = self._counts, Counter()
        for (event, reason, actor, ip_hash), attempts in counts.items():
            self.audit.append(event, actor=actor,
                              detail={"reason": reason, "ip_hash": ip_hash, "attempts": attempts})
        return len(counts)

    def __len__(self) -> int:
        return len(self._counts)
