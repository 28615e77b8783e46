"""Staff accounts for the console: therapists and ops, their passwords and login sessions.

Partners never have accounts (their link is their credential). Staff log in to the console
to create rooms and find them again. Its tables are in the Store's database (created by
telehealth.schema):

- ``users``: one row per account; the password as an scrypt hash with its own salt and
  parameters (``scrypt$n$r$p$salt$hash``), so the cost can be raised later without breaking
  old hashes. Nothing here locks an account: failed attempts are limited per address and per
  account and address (telehealth.ratelimit.LoginLimits), so a stranger cannot lock anyone out.
- ``user_sessions``: login sessions. The cookie holds a random token; only its SHA-256 is
  stored, so a copy of the database does not log anyone in. Sessions expire.
- ``room_owners``: which account created which room, so a therapist's console lists their own.

Forms carry a CSRF token derived from the session token (an HMAC), so it needs no storage
and dies with the session.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import hmac
import re
import secrets
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TextIO

from telehealth.audit import AuditEvent
from telehealth.errors import ErrorCode, UserError
from telehealth.store import Store

StaffRole = Literal["therapist", "ops"]
STAFF_ROLES: tuple[StaffRole, ...] = ("therapist", "ops")

# scrypt at n=2**14, r=8, p=1 uses 16 MiB and ~50 ms per check: the cost OWASP recommends.
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32
MIN_PASSWORD = 12
MAX_PASSWORD = 1024

SESSION_SECONDS = 12 * 3600.0

_USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9._@-]{1,63}$")

@dataclass(frozen=True, slots=True)
class User:
    id: int
    username: str
    role: StaffRole
    display_name: str


@dataclass(frozen=True, slots=True)
class LoginSession:
    """A logged-in user as a request sees it; ``token`` is what the cookie holds."""

    token: str
    user: User
    expires_at: float
    timezone: str

    @property
    def csrf(self) -> str:
        return csrf_token(self.token)


# -- passwords ------------------------------------------------------------------------------


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=HASH_BYTES
    )
    return "$".join(("scrypt", str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P), _b64(salt), _b64(digest)))


def verify_password(stored: str, password: str) -> bool:
    """Check a password against a stored hash in constant time; False for a malformed hash."""
    try:
        scheme, n, r, p, salt, expected = stored.split("$")
        if scheme != "scrypt":
            return False
        digest = hashlib.scrypt(
            password.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p),
            dklen=len(_unb64(expected)), maxmem=256 * 1024 * 1024,
        )
    except ValueError:
        return False
    return hmac.compare_digest(digest, _unb64(expected))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# Checked when the username is unknown, so that the answer takes as long as for a real
# account and does not tell which usernames exist. Well formed; matches no password.
_DECOY_HASH = f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${'A' * 22}${'A' * 43}"


def check_new_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise UserError(ErrorCode.INVALID_MESSAGE, f"A password needs at least {MIN_PASSWORD} characters.")
    if len(password) > MAX_PASSWORD:
        raise UserError(ErrorCode.INVALID_MESSAGE, "That password is too long.")


def read_password(password_file: Path | None = None, stdin: TextIO | None = None) -> str:
    """A password for the CLI, never from a flag (flags show in `ps` and shell history):
    the first line of ``password_file``, else typed at a terminal, else the first line of
    standard input (``echo "$PW" | telehealth user add ...``)."""
    if password_file is not None:
        lines = password_file.read_text().splitlines()
        return lines[0] if lines else ""
    stream = stdin or sys.stdin
    if stream.isatty():
        first = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != first:
            raise UserError(ErrorCode.INVALID_MESSAGE, "The two passwords differ.")
        return first
    return stream.readline().rstrip("\r\n")


def clean_username(username: str) -> str:
    name = username.strip().lower()
    if not _USERNAME_RE.match(name):
        raise UserError(
            ErrorCode.INVALID_MESSAGE,
            "A username has 2 to 64 characters: letters, digits, dots, dashes, underscores or @.",
        )
    return name


# -- accounts -------------------------------------------------------------------------------


def add_user(
    store: Store, username: str, password: str, role: StaffRole, *, now: float,
    display_name: str = "",
) -> User:
    """Create an account. Raises UserError for a taken name, a bad role or a short password."""
    name = clean_username(username)
    if role not in STAFF_ROLES:
        raise UserError(ErrorCode.INVALID_MESSAGE, "The role is therapist or ops.")
    check_new_password(password)
    display = " ".join(display_name.split())[:80]
    try:
        cur = store.db.execute(
            "INSERT INTO users (username, role, display_name, password_hash, created_at)"
            " VALUES (?,?,?,?,?)",
            (name, role, display, hash_password(password), now),
        )
    except sqlite3.IntegrityError:
        raise UserError(ErrorCode.INVALID_MESSAGE, f"The username {name} is taken.") from None
    return User(int(cur.lastrowid or 0), name, role, display)


def set_password(store: Store, username: str, password: str) -> None:
    """Replace a password and log the account out everywhere."""
    check_new_password(password)
    user = _find_user(store, clean_username(username))
    if user is None:
        raise UserError(ErrorCode.UNKNOWN_TARGET, "No such user.")
    with _transaction(store):
        store.db.execute(
            "UPDATE users SET password_hash = ? WHERE id = ?",
            (hash_password(password), user.id),
        )
        store.db.execute("DELETE FROM user_sessions WHERE user_id = ?", (user.id,))


def remove_user(store: Store, username: str) -> None:
    user = _find_user(store, clean_username(username))
    if user is None:
        raise UserError(ErrorCode.UNKNOWN_TARGET, "No such user.")
    with _transaction(store):
        store.db.execute("DELETE FROM user_sessions WHERE user_id = ?", (user.id,))
        store.db.execute("DELETE FROM room_owners WHERE user_id = ?", (user.id,))
        store.db.execute("DELETE FROM users WHERE id = ?", (user.id,))


def list_users(store: Store) -> list[User]:
    rows = store.db.execute(
        "SELECT id, username, role, display_name FROM users ORDER BY username"
    ).fetchall()
    return [User(int(r[0]), r[1], r[2], r[3]) for r in rows]


def _find_user(store: Store, username: str) -> User | None:
    row = store.db.execute(
        "SELECT id, username, role, display_name FROM users WHERE username = ?", (username,)
    ).fetchone()
    return None if row is None else User(int(row[0]), row[1], row[2], row[3])


def authenticate(store: Store, username: str, password: str, *, now: float) -> User:
    """The user whose password this is, or UserError (one message for every wrong detail).

    Slow on purpose (scrypt): call it off the event loop.
    """
    wrong = UserError(ErrorCode.FORBIDDEN, "That username and password do not match.")
    try:
        name = clean_username(username)
    except UserError:
        verify_password(_DECOY_HASH, password)
        raise wrong from None
    row = store.db.execute(
        "SELECT id, username, role, display_name, password_hash FROM users WHERE username = ?", (name,),
    ).fetchone()
    # An unknown name costs the same scrypt as a known one: the answer's timing tells nothing.
    matches = verify_password(_DECOY_HASH if row is None else row[4], password)
    if row is None or not matches:
        raise wrong
    return User(int(row[0]), row[1], row[2], row[3])


def audit_login(store: Store, user: User) -> None:
    """Record a sign-in (on the event loop: the store's connection is not shared with the
    thread that checks the password). Failures are summarised instead: login_refusal."""
    store.audit.append(AuditEvent.LOGIN_OK, actor=f"u_{user.id}", detail={"role": user.role})


def login_refusal(store: Store, username: str, error: UserError) -> tuple[str, str | None]:
    """Why a sign-in failed and whose account it named (``u_<id>``), for the audit log's
    summary of refused attempts: ids and reasons only, never the name typed."""
    known = _find_user(store, username.strip().lower()) if username.strip() else None
    reason = "rate_limited" if error.code == ErrorCode.RATE_LIMITED else ("password" if known else "unknown_user")
    return reason, f"u_{known.id}" if known else None


# -- login sessions -------------------------------------------------------------------------


def start_session(
    store: Store, user: User, *, now: float, timezone: str = "UTC", ttl: float = SESSION_SECONDS
) -> LoginSession:
    token = secrets.token_urlsafe(32)
    with _transaction(store):
        # Expired sessions are swept here, where sessions are made, rather than by a loop.
        store.db.execute("DELETE FROM user_sessions WHERE expires_at <= ?", (now,))
        store.db.execute(
            "INSERT INTO user_sessions (token_hash, user_id, created_at, expires_at, timezone)"
            " VALUES (?,?,?,?,?)",
            (_token_hash(token), user.id, now, now + ttl, timezone),
        )
    return LoginSession(token, user, now + ttl, timezone)


def find_session(store: Store, token: str, *, now: float) -> LoginSession | None:
    if not token or len(token) > 128:
        return None
    row = store.db.execute(
        "SELECT u.id, u.username, u.role, u.display_name, s.expires_at, s.timezone"
        " FROM user_sessions s JOIN users u ON u.id = s.user_id WHERE s.token_hash = ?",
        (_token_hash(token),),
    ).fetchone()
    if row is None or now >= row[4]:
        return None
    return LoginSession(token, User(int(row[0]), row[1], row[2], row[3]), row[4], row[5])


def end_session(store: Store, token: str) -> None:
    store.db.execute("DELETE FROM user_sessions WHERE token_hash = ?", (_token_hash(token),))


def csrf_token(session_token: str) -> str:
    return hmac.new(session_token.encode(), b"telehealth csrf v1", hashlib.sha256).hexdigest()


def csrf_matches(session_token: str, submitted: str) -> bool:
    return submitted.isascii() and hmac.compare_digest(csrf_token(session_token), submitted)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# -- rooms and their owners -----------------------------------------------------------------


def record_owner(store: Store, room_id: str, user: User) -> None:
    store.db.execute("INSERT OR REPLACE INTO room_owners (room_id, user_id) VALUES (?, ?)", (room_id, user.id))


def owned_room_ids(store: Store, user: User) -> set[str]:
    """The rooms a therapist created, the only ones their console shows. Other roles own none:
    ops staff never see a room's people or open its session."""
    if user.role != "therapist":
        return set()
    rows = store.db.execute("SELECT room_id FROM room_owners WHERE user_id = ?", (user.id,)).fetchall()
    return {r[0] for r in rows}


def owns(store: Store, user: User, room_id: str) -> bool:
    if user.role != "therapist":
        return False
    row = store.db.execute("SELECT 1 FROM room_owners WHERE room_id = ? AND user_id = ?",
                           (room_id, user.id)).fetchone()
    return row is not None


class _transaction:
    def __init__(self, store: Store) -> None:
        self._db = store.db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")
