"""Server configuration: one frozen dataclass holding every default.

The CLI and the ``TELEHEALTH_*`` environment variables only map onto this class
(uvicorn's config/CLI split); nothing else reads the environment.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "telehealth"


# The longest session a room may be booked for.
MAX_SESSION_MINUTES = 8 * 60


@dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = field(default_factory=default_data_dir)
    # Public base URL used in join links; defaults to the listening address.
    base_url: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Generate a self-signed certificate in the data dir (LAN demos only).
    tls_self_signed: bool = False
    # Join links of a room without a set time stop working after this long.
    link_ttl_seconds: float = 7 * 24 * 3600
    # An appointment's links open this long before its start (time for the device and
    # network check; the clinic asks people to set aside 10-15 minutes) ...
    link_lead_seconds: float = 30 * 60
    # ... and keep working this long after its end (a session that runs over, a rejoin).
    link_overrun_seconds: float = 30 * 60
    # An appointment's length when none is given.
    session_minutes: int = 50
    # The clinic's time zone (IANA name), for the one place no browser is there to say the
    # reader's own: the session time in an email, which says which zone it is in.
    timezone: str = "UTC"
    # Phone numbers written without a country code are read as this country's (ISO 3166).
    phone_region: str = "US"
    # Email: smtp://host:587 (STARTTLS), smtps://host:465 (TLS from the start), with the
    # login as smtp://user@host:587 and its password in a file (never in the environment).
    # smtp://host:25?starttls=off only for a relay on this machine.
    smtp_url: str | None = None
    smtp_from: str | None = None
    smtp_password_file: Path | None = None
    # Certificates to trust for the mail server besides the system's (an internal CA).
    smtp_ca_file: Path | None = None
    # A failed send is tried again after this long, doubling each time, this many times.
    smtp_retry_seconds: float = 30.0
    smtp_attempts: int = 5
    smtp_timeout_seconds: float = 30.0
    # A participant whose signaling drops stays "reconnecting" this long before "left".
    grace_seconds: float = 45.0
    # Rejoin window of the fallback flow before the phone step.
    rejoin_window_seconds: float = 45.0
    # Signaling messages are small; anything above this gets `too_large`.
    max_message_bytes: int = 64 * 1024
    # A socket whose outbound queue holds this many messages is too slow and is closed.
    send_queue_limit: int = 256
    # What one socket may send: a burst, then a sustained rate, in messages and in bytes
    # (token buckets). Many times what a real page sends (a join burst of offers and
    # candidates, stats every 250-500 ms); a sender over it gets `rate_limited`, then is
    # closed with `too_fast`, so its flood never reaches the others' sockets.
    sender_burst_messages: int = 200
    sender_messages_per_second: float = 20.0
    sender_burst_bytes: int = 512 * 1024
    sender_bytes_per_second: float = 64 * 1024
    # How often the server looks for rooms ended by another process (the CLI).
    store_poll_seconds: float = 0.25
    # A socket silent this long is pinged; silent for as long again, it is closed as gone.
    heartbeat_seconds: float = 10.0
    log_level: str = "INFO"
    # Reverse proxies whose X-Forwarded-For / X-Forwarded-Proto are believed (addresses or
    # CIDR blocks, e.g. 127.0.0.1 for a proxy on the same host). Empty: every peer is a client.
    trusted_proxies: tuple[str, ...] = ()
    # Failed sign-ins allowed per client address, and per account from one address, in a
    # burst; they come back evenly over login_window_seconds. No account is ever locked.
    login_failures_per_address: int = 10
    login_failures_per_account: int = 5
    login_window_seconds: float = 60.0
    # Refused attempts without a credential (bad links, failed sign-ins) are written to the
    # audit log as one entry per address, kind and reason per this many seconds.
    refusal_summary_seconds: float = 60.0
    # STUN/TURN for participants. TURN credentials are derived from turn_secret.
    stun_urls: tuple[str, ...] = ()
    turn_urls: tuple[str, ...] = ()
    turn_secret: str | None = None
    turn_credential_ttl_seconds: float = 3600.0
    # Media only through the TURN relay: participants never learn each other's IP address
    # (a partner may not want the other to know where they are). Needs TURN configured.
    relay_only: bool = False
    # Phone step: without a webhook the therapist dials from a tel: link on their page.
    phone_webhook_url: str | None = None
    phone_webhook_secret: str | None = None
    # Ops events (room started/ended, disruption, phone fallback) to a monitoring endpoint,
    # HMAC-signed, ids only.
    ops_webhook_url: str | None = None
    ops_webhook_secret: str | None = None
    # Key for personal data at rest; defaults to <data_dir>/telehealth.key.
    key_file: Path | None = None
    # Ended rooms lose their names, phone numbers and links after this long.
    retention_seconds: float = 30 * 24 * 3600
    # How often the server runs the retention purge by itself.
    purge_interval_seconds: float = 24 * 3600
    # /metrics on the main port needs "Authorization: Bearer <this file's token>"; unset, the
    # main port has no /metrics at all (404).
    metrics_token_file: Path | None = None
    # host:port of a separate listener serving /metrics without a token (a local Prometheus),
    # e.g. 127.0.0.1:9464. Unset: no such listener.
    metrics_address: str | None = None

    def __post_init__(self) -> None:
        import zoneinfo

        import phonenumbers

        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"TELEHEALTH_TIMEZONE: {self.timezone!r} is not a time zone "
                             "(use a name like Europe/London or America/New_York)") from None
        if self.phone_region.upper() not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"TELEHEALTH_PHONE_REGION: {self.phone_region!r} is not a country code "
                             "(use two letters, like US or GB)")
        if self.smtp_url is not None and not self.smtp_url.startswith(("smtp://", "smtps://")):
            raise ValueError("TELEHEALTH_SMTP_URL must start with smtp:// or smtps://")
        if not 1 <= self.session_minutes <= MAX_SESSION_MINUTES:
            raise ValueError(f"TELEHEALTH_SESSION_MINUTES must be between 1 and {MAX_SESSION_MINUTES}")

    @property
    def scheme(self) -> str:
        return "https" if (self.tls_cert or self.tls_self_signed) else "http"

    @property
    def public_base_url(self) -> str:
        if self.base_url:
            return self.base_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "telehealth.sqlite3"

    @property
    def key_path(self) -> Path:
        return self.key_file or (self.data_dir / "telehealth.key")

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)


def _coerce(f: dataclasses.Field[Any], raw: str) -> Any:
    kind = str(f.type)
    if kind.startswith("bool"):
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if kind.startswith("int"):
        return int(raw)
    if kind.startswith("float"):
        return float(raw)
    if "Path" in kind:
        return Path(raw)
    if kind.startswith("tuple"):
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    return raw


def from_env(env: Mapping[str, str] | None = None, **overrides: Any) -> Config:
    """Build a Config from ``TELEHEALTH_<FIELD>`` variables, then explicit overrides.

    Overrides whose value is None are ignored so that unset CLI flags fall through.
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Config):
        raw = env.get(f"TELEHEALTH_{f.name.upper()}")
        if raw is not None and raw != "":
            try:
                values[f.name] = _coerce(f, raw)
            except ValueError as exc:
                raise ValueError(f"TELEHEALTH_{f.name.upper()}: {exc}") from None
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Config(**values)
