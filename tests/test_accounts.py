"""Staff accounts on a real SQLite store: hashing, lockout, sessions and CSRF."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from telehealth import accounts
from telehealth.errors import ErrorCode, UserError
from telehealth.store import Store

PASSWORD = "correct horse battery staple"
NOW = 1_800_000_000.0


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(tmp_path / "data")
    yield opened
    opened.close()


def test_passwords_are_scrypt_hashes_with_their_own_salt_and_parameters() -> None:
    first, second = accounts.hash_password(PASSWORD), accounts.hash_password(PASSWORD)
    assert first != second  # a fresh 16-byte salt each time
    scheme, n, r, p, salt, digest = first.split("$")
    assert (scheme, n, r, p) == ("scrypt", str(2**14), "8", "1")
    assert len(accounts._unb64(salt)) == 16 and len(accounts._unb64(digest)) == 32
    expected = hashlib.scrypt(PASSWORD.encode(), salt=accounts._unb64(salt), n=2**14, r=8, p=1, dklen=32)
    assert accounts._unb64(digest) == expected
    assert accounts.verify_password(first, PASSWORD)
    assert not accounts.verify_password(first, PASSWORD + " ")
    assert not accounts.verify_password("md5$abc", PASSWORD)
    assert not accounts.verify_password("scrypt$x$8$1$AA$AA", PASSWORD)


def test_accounts_are_checked_when_made(store: Store) -> None:
    user = accounts.add_user(store, "  Dr.Test@Clinic ", PASSWORD, "therapist", now=NOW, display_name=" Dr  Test ")
    assert (user.username, user.role, user.display_name) == ("dr.test@clinic", "therapist", "Dr Test")
    for username, password, role in (
        ("dr.test@clinic", PASSWORD, "therapist"),  # taken
        ("x", PASSWORD, "therapist"),  # too short a name
        ("has space", PASSWORD, "therapist"),
        ("newuser", "short", "therapist"),
        ("newuser", PASSWORD, "admin"),
    ):
        with pytest.raises(UserError):
            accounts.add_user(store, username, password, role, now=NOW)  # type: ignore[arg-type]
    stored = store.db.execute("SELECT password_hash FROM users").fetchone()[0]
    assert PASSWORD not in stored and stored.startswith("scrypt$")
    assert [u.username for u in accounts.list_users(store)] == ["dr.test@clinic"]


def test_wrong_passwords_never_lock_the_account(store: Store) -> None:
    # Limits on failures are per address (web.forms, LoginLimits): a stranger's guesses
    # must not keep the real person out.
    accounts.add_user(store, "drtest", PASSWORD, "therapist", now=NOW)
    for i in range(20):
        with pytest.raises(UserError) as wrong:
            accounts.authenticate(store, "drtest", f"guess {i}", now=NOW + i)
        assert wrong.value.code == ErrorCode.FORBIDDEN
    later = NOW + 21
    assert accounts.authenticate(store, "DrTest", PASSWORD, now=later).username == "drtest"
    # Unknown and malformed names get the same answer as a wrong password.
    for name in ("nobody", "!!"):
        with pytest.raises(UserError) as unknown:
            accounts.authenticate(store, name, PASSWORD, now=later)
        assert unknown.value.code == ErrorCode.FORBIDDEN and unknown.value.detail == wrong.value.detail


def test_login_sessions_are_stored_hashed_and_expire(store: Store) -> None:
    user = accounts.add_user(store, "drtest", PASSWORD, "therapist", now=NOW)
    session = accounts.start_session(store, user, now=NOW, timezone="Europe/Paris", ttl=60)
    stored = store.db.execute("SELECT token_hash FROM user_sessions").fetchall()
    assert stored == [(hashlib.sha256(session.token.encode()).hexdigest(),)]
    found = accounts.find_session(store, session.token, now=NOW + 59)
    assert found is not None and found.user == user and found.timezone == "Europe/Paris"
    assert accounts.find_session(store, session.token, now=NOW + 60) is None
    assert accounts.find_session(store, "not a token", now=NOW) is None

    # CSRF tokens belong to one session.
    other = accounts.start_session(store, user, now=NOW, ttl=60)
    assert accounts.csrf_matches(session.token, session.csrf)
    assert not accounts.csrf_matches(other.token, session.csrf)
    assert not accounts.csrf_matches(session.token, "é" + session.csrf[1:])

    accounts.end_session(store, other.token)
    assert accounts.find_session(store, other.token, now=NOW) is None


def test_a_new_password_or_removal_logs_the_account_out(store: Store) -> None:
    user = accounts.add_user(store, "drtest", PASSWORD, "therapist", now=NOW)
    session = accounts.start_session(store, user, now=NOW)
    accounts.set_password(store, "drtest", "another long password")
    assert accounts.find_session(store, session.token, now=NOW) is None
    assert accounts.authenticate(store, "drtest", "another long password", now=NOW).id == user.id
    session = accounts.start_session(store, user, now=NOW)
    accounts.remove_user(store, "drtest")
    assert accounts.find_session(store, session.token, now=NOW) is None
    with pytest.raises(UserError):
        accounts.remove_user(store, "drtest")


def test_the_cli_reads_passwords_from_a_file_or_stdin_never_a_flag(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text(PASSWORD + "\nignored\n")
    assert accounts.read_password(secret) == PASSWORD
    assert accounts.read_password(None, io.StringIO(PASSWORD + "\r\n")) == PASSWORD
