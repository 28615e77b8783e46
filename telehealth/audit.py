"""The audit log: an append-only, hash-chained record of security events.

Each entry carries the SHA-256 of the entry before it, so altering, deleting or reordering an
entry breaks the chain at that entry. A one-row ``audit_head`` table, updated in the same
transaction as every append, holds the number of entries and the last hash, so cutting
entries off the end is caught too. Two triggers refuse UPDATE and DELETE on ``audit``: they
stop honest mistakes, not an attacker, whom only the chain can catch.

What the chain cannot catch: someone who rewrites every entry after the one they changed and
then the head. Against that, record ``VerifyResult.head_hash`` somewhere else now and then
(a ticket, a signed email); a later verify whose chain no longer passes through it is proof.

Entries hold opaque ids only. ``detail`` takes an allow-list of keys whose values are numbers,
booleans or short id-like strings, so a name or a phone number cannot slip in by accident.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import math
import re
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from telehealth.errors import ErrorCode

GENESIS_HASH = "0" * 64

# Keys a detail may carry. Each is an id, an enum value or a number; adding one is a
# privacy decision, so it is made here, in review, not at the call site.
DETAIL_KEYS = frozenset({
    "reason",       # LinkRejectReason, or why a login failed
    "code",         # an ErrorCode value
    "role",         # therapist, partner, ops
    "state",        # a participant's state after the event
    "mode",         # phone_switch: "phone" or "video"
    "request_id",
    "method",       # ops_access: HTTP method
    "path",         # ops_access: route, never a query string
    "ip_hash",      # a keyed hash of the client address, never the address
    "link_hash",    # a prefix of the link's token hash
    "attempts",
    "retry_after",
    "rooms",        # purge counts
    "people",
    "links",
    "values",       # key_rotated: values re-encrypted
    "cutoff",
    "older_than",
    "old_key_id",
    "new_key_id",
    "smtp_code",    # email_failed: the SMTP reply code (e.g. 550), never its text
})

# Ids, enum values, routes, hashes: no spaces, no "+" or "@", so no phone number in its usual
# written form, no e-mail address and no full name.
_OPAQUE = re.compile(r"^[A-Za-z0-9_.:/-]{0,64}$")
_PAGE = 500


class AuditEvent(str, enum.Enum):
    ROOM_CREATED = "room_created"
    ROOM_ENDED = "room_ended"
    LINK_ISSUED = "link_issued"
    LINK_OPENED = "link_opened"
    LINK_REJECTED = "link_rejected"
    PARTICIPANT_ADMITTED = "participant_admitted"
    PARTICIPANT_REMOVED = "participant_removed"
    PHONE_SWITCH = "phone_switch"
    LOGIN_OK = "login_ok"
    LOGIN_FAILED = "login_failed"
    OPS_ACCESS = "ops_access"
    # A staff account refused by the console: another role, or a room it does not own.
    ACCESS_REFUSED = "access_refused"
    KEY_ROTATED = "key_rotated"
    PURGE = "purge"
    # A partner confirmed the number the therapist would call, or gave another one.
    PHONE_CONFIRMED = "phone_confirmed"
    PHONE_CHANGED = "phone_changed"
    EMAIL_QUEUED = "email_queued"
    EMAIL_SENT = "email_sent"
    EMAIL_FAILED = "email_failed"


class LinkRejectReason(str, enum.Enum):
    """``detail["reason"]`` of a link_rejected entry."""

    FORGED = "forged"
    EXPIRED = "expired"
    REVOKED = "revoked"
    RATE_LIMITED = "rate_limited"
    ROOM_ENDED = "room_ended"
    TOO_EARLY = "too_early"
    SESSION_OVER = "session_over"


# Why a link was refused, by the error code the person was shown.
LINK_REJECT_REASONS = {
    ErrorCode.BAD_LINK: LinkRejectReason.FORGED,
    ErrorCode.LINK_EXPIRED: LinkRejectReason.EXPIRED,
    ErrorCode.LINK_REVOKED: LinkRejectReason.REVOKED,
    ErrorCode.ROOM_ENDED: LinkRejectReason.ROOM_ENDED,
    ErrorCode.RATE_LIMITED: LinkRejectReason.RATE_LIMITED,
    ErrorCode.TOO_EARLY: LinkRejectReason.TOO_EARLY,
    ErrorCode.SESSION_OVER: LinkRejectReason.SESSION_OVER,
}


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """``checked`` counts the entries found intact before the first break (all when ok).

    ``first_broken_id`` is the lowest id that is not as it was written: altered, moved,
    missing from the middle, or missing from the end. ``head_hash`` is the hash of the last
    intact entry; kept elsewhere, it anchors the chain.
    """

    ok: bool
    checked: int
    first_broken_id: int | None
    reason: str
    head_hash: str


class AuditLog:
    """Appends entries to, verifies and exports the ``audit`` table of ``db``.

    ``db`` should be in autocommit mode (``isolation_level=None``, as the Store's is) with a
    busy timeout, so that the server and the CLI can append to the same file at once: each
    append takes the write lock (BEGIN IMMEDIATE) before it reads the head.
    """

    def __init__(self, db: sqlite3.Connection, clock: Callable[[], float]) -> None:
        """``clock`` gives wall-clock seconds (time.time): entries are read by people."""
        self._db = db
        self._clock = clock

    def append(
        self,
        event: AuditEvent,
        *,
        room_id: str | None = None,
        person_id: str | None = None,
        actor: str | None = None,
        detail: Mapping[str, object] | None = None,
    ) -> int:
        """Add one entry and return its id. Raises ValueError on a non-opaque field.

        Called inside a transaction the caller opened with BEGIN IMMEDIATE, the entry joins
        it, so a change and its audit record commit or vanish together.
        """
        for field, value in (("room_id", room_id), ("person_id", person_id), ("actor", actor)):
            if value is not None and not _is_opaque(value):
                raise ValueError(f"audit {field} must be an opaque id")
        detail_text = None if detail is None else _encode_detail(detail)
        event = AuditEvent(event)
        owns_transaction = not self._db.in_transaction
        if owns_transaction:
            self._db.execute("BEGIN IMMEDIATE")
        try:
            head = self._db.execute("SELECT count, hash FROM audit_head WHERE only = 1").fetchone()
            if head is None:
                raise sqlite3.IntegrityError("the audit_head row is missing; run audit verify")
            count, prev_hash = head
            entry_id = int(count) + 1
            at = float(self._clock())
            entry_hash = entry_digest(
                entry_id, at, event.value, room_id, person_id, actor, detail_text, prev_hash
            )
            self._db.execute(
                "INSERT INTO audit (id, at, event, room_id, person_id, actor, detail, prev_hash, hash)"
                " VALUES (?,?,?,?,?,?,?,?,?)",
                (entry_id, at, event.value, room_id, person_id, actor, detail_text, prev_hash,
                 entry_hash),
            )
            self._db.execute(
                "UPDATE audit_head SET count = ?, hash = ? WHERE only = 1", (entry_id, entry_hash)
            )
            if owns_transaction:
                self._db.execute("COMMIT")
        except BaseException:
            if owns_transaction and self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        return entry_id

    def verify(self) -> VerifyResult:
        """Walk the chain from the first entry; stop at the first entry that is not intact."""
        owns_transaction = not self._db.in_transaction
        if owns_transaction:
            # One snapshot for the head and the rows, even while others append.
            self._db.execute("BEGIN")
        try:
            return self._verify()
        finally:
            if owns_transaction:
                self._db.execute("ROLLBACK")

    def _verify(self) -> VerifyResult:
        head = self._db.execute("SELECT count, hash FROM audit_head WHERE only = 1").fetchone()
        rows = self._db.execute(
            "SELECT id, at, event, room_id, person_id, actor, detail, prev_hash, hash"
            " FROM audit ORDER BY id"
        )
        with contextlib.closing(rows):
            return _walk(rows, head)

    def export(self, since: float | None = None, until: float | None = None) -> Iterator[str]:
        """Yield entries with ``since <= at < until`` as JSON lines (no trailing newline)."""
        lower = float("-inf") if since is None else since
        upper = float("inf") if until is None else until
        last_id = 0
        while True:
            # Page by id rather than hold one statement open across the caller's pace.
            page = self._db.execute(
                "SELECT id, at, event, room_id, person_id, actor, detail, prev_hash, hash"
                " FROM audit WHERE id > ? AND at >= ? AND at < ? ORDER BY id LIMIT ?",
                (last_id, lower, upper, _PAGE),
            ).fetchall()
            for entry_id, at, event, room_id, person_id, actor, detail, prev_hash, entry_hash in page:
                yield json.dumps({
                    "id": entry_id, "at": at, "event": event, "room_id": room_id,
                    "person_id": person_id, "actor": actor,
                    "detail": None if detail is None else json.loads(detail),
                    "prev_hash": prev_hash, "hash": entry_hash,
                }, ensure_ascii=False)
            if len(page) < _PAGE:
                return
            last_id = page[-1][0]


def entry_digest(
    entry_id: int,
    at: float,
    event: str,
    room_id: str | None,
    person_id: str | None,
    actor: str | None,
    detail: str | None,
    prev_hash: str,
) -> str:
    """SHA-256 over a canonical JSON array of the entry's fields; ``detail`` as stored."""
    canonical = json.dumps(
        [entry_id, at, event, room_id, person_id, actor, detail, prev_hash],
        separators=(",", ":"), ensure_ascii=False, allow_nan=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _walk(rows: Iterable[tuple[Any, ...]], head: tuple[int, str] | None) -> VerifyResult:
    """Check the rows in id order against each other, then the last one against the head."""
    expected_id, expected_prev, checked = 1, GENESIS_HASH, 0
    for entry_id, at, event, room_id, person_id, actor, detail, prev_hash, stored_hash in rows:
        if entry_id != expected_id:
            return _broken(
                checked, expected_id, f"{_span(expected_id, entry_id - 1)} missing", expected_prev
            )
        if prev_hash != expected_prev:
            return _broken(
                checked, entry_id, f"entry {entry_id} does not follow the one before it",
                expected_prev,
            )
        if entry_digest(entry_id, at, event, room_id, person_id, actor, detail, prev_hash) != stored_hash:
            return _broken(checked, entry_id, f"entry {entry_id} was altered", expected_prev)
        expected_id, expected_prev, checked = entry_id + 1, stored_hash, checked + 1
    if head is None:
        return _broken(checked, None, "the audit_head row is missing", expected_prev)
    head_count, head_hash = head
    if head_count > checked:
        return _broken(
            checked, checked + 1,
            f"{_span(checked + 1, head_count)} cut off the end", expected_prev,
        )
    if head_count < checked:
        return _broken(
            head_count, head_count + 1,
            f"{_span(head_count + 1, checked)} not recorded in the head (added behind the log's back)",
            expected_prev,
        )
    if head_hash != expected_prev:
        return _broken(
            max(checked - 1, 0), checked or None,
            f"entry {checked} is not the last entry the head recorded",
            expected_prev,
        )
    return VerifyResult(True, checked, None, f"{checked} entries intact", expected_prev)


def _span(first: int, last: int) -> str:
    return f"entry {first} is" if first == last else f"entries {first}..{last} are"


def _broken(checked: int, entry_id: int | None, reason: str, head_hash: str) -> VerifyResult:
    return VerifyResult(False, checked, entry_id, reason, head_hash)


def _is_opaque(value: object) -> bool:
    return isinstance(value, str) and bool(_OPAQUE.match(value))


def _encode_detail(detail: Mapping[str, object]) -> str:
    clean: dict[str, object] = {}
    for key, value in detail.items():
        # Messages name the key only: the refused value may be the very thing to keep out.
        if key not in DETAIL_KEYS:
            raise ValueError(f"audit detail key {key!r} is not in DETAIL_KEYS")
        if isinstance(value, enum.Enum):
            value = value.value
        if value is None or isinstance(value, (bool, int)):
            clean[key] = value
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise ValueError(f"audit detail {key!r} must be a finite number")
            clean[key] = value
        elif _is_opaque(value):
            clean[key] = value
        else:
            raise ValueError(
                f"audit detail {key!r} must be a number or an id of at most 64 characters"
                " without spaces, '+' or '@'"
            )
    return json.dumps(clean, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
