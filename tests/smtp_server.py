"""A real SMTP server for the email tests: aiosmtpd in the test process, on a free port.

It speaks SMTP as any mail server does (optionally STARTTLS and a login), keeps what it is
given, and can be told to refuse a recipient for good (550), for now (451), or to hold a
message until released, so each path of the sender can be seen from outside.
"""

from __future__ import annotations

import email
import email.policy
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from telehealth.tls import self_signed
from tests.conftest import free_port


@dataclass
class Delivered:
    sender: str
    recipients: list[str]
    message: EmailMessage

    def body(self) -> str:
        part = self.message.get_body(preferencelist=("plain",))
        assert part is not None
        return str(part.get_content())

    def attachment(self, content_type: str) -> bytes:
        for part in self.message.iter_attachments():
            if part.get_content_type() == content_type:
                return bytes(part.get_payload(decode=True))
        raise AssertionError(f"no {content_type} attachment")


@dataclass
class Inbox:
    """The handler: what arrived, and what to refuse."""

    delivered: list[Delivered] = field(default_factory=list)
    refuse: set[str] = field(default_factory=set)
    busy: dict[str, int] = field(default_factory=dict)  # address: 451 this many times more
    release: threading.Event = field(default_factory=threading.Event)
    attempts: int = 0
    logins: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.release.set()

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        self.attempts += 1
        if address in self.refuse:
            return "550 5.1.1 <" + address + ">: Recipient address rejected: mailbox unavailable"
        if self.busy.get(address, 0) > 0:
            self.busy[address] -= 1
            return "451 4.3.0 Try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        # Runs on the server's own thread and loop: holding here stalls only this server.
        self.release.wait(60)
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.delivered.append(Delivered(envelope.mail_from, list(envelope.rcpt_tos), message))  # type: ignore[arg-type]
        return "250 Message accepted for delivery"

    def to(self, address: str) -> list[Delivered]:
        return [d for d in self.delivered if address in d.recipients]


@dataclass
class MailServer:
    inbox: Inbox
    port: int
    cert: Path | None = None


class _Login:
    def __init__(self, inbox: Inbox, username: str, password: str) -> None:
        self.inbox, self.username, self.password = inbox, username, password

    def __call__(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        if isinstance(data, LoginPassword) and data.login.decode() == self.username \
                and data.password.decode() == self.password:
            self.inbox.logins.append(self.username)
            return AuthResult(success=True)
        return AuthResult(success=False, handled=False)


@contextmanager
def smtp_server(tls_dir: Path | None = None, login: tuple[str, str] | None = None) -> Iterator[MailServer]:
    """A server on 127.0.0.1. With ``tls_dir``: STARTTLS required, with a self-signed
    certificate written there (give it to the client as its CA); with ``login``: AUTH required."""
    inbox = Inbox()
    port = free_port()
    kwargs: dict[str, Any] = {}
    cert = None
    if tls_dir is not None:
        cert, key = self_signed(tls_dir, "127.0.0.1")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        kwargs.update(tls_context=context, require_starttls=True)
    if login is not None:
        kwargs.update(auth_required=True, authenticator=_Login(inbox, *login), auth_require_tls=tls_dir is not None)
    controller = Controller(inbox, hostname="127.0.0.1", port=port, ready_timeout=30, **kwargs)
    controller.start()
    try:
        yield MailServer(inbox, port, cert)
    finally:
        inbox.release.set()
        controller.stop()
