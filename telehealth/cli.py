"""The ``telehealth`` command. It only maps flags onto Config and calls plain functions."""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import secrets
import sqlite3
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from telehealth import accounts, keys, mail, retention, rooms, schema, turn
from telehealth import backup as backups
from telehealth.audit import AuditLog
from telehealth.config import Config, from_env
from telehealth.crypto import KeyFileError
from telehealth.errors import TelehealthError
from telehealth.store import Store


class _PartnerAction(argparse.Action):
    """--partner NAME starts a partner; a following --phone and --email belong to that partner."""

    def __call__(self, parser: Any, ns: argparse.Namespace, value: Any, option: str | None = None) -> None:
        partners = getattr(ns, "partners", None) or []
        if self.dest == "partner_name":
            partners.append({"name": value, "phone": None, "email": None})
        else:
            key = "phone" if self.dest == "partner_phone" else "email"
            if not partners or partners[-1][key] is not None:
                parser.error(f"--{key} must follow the --partner it belongs to")
            partners[-1][key] = value
        ns.partners = partners


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, help="data folder (default: ~/.local/share/telehealth)")
    p.add_argument("--key-file", type=Path, help="key for personal data (default: DATA_DIR/telehealth.key)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="telehealth", description="Self-hosted three-party WebRTC sessions.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the server")
    _common(serve)
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8080)")
    serve.add_argument("--base-url", help="public base URL used in links, e.g. https://video.clinic.example")
    serve.add_argument("--tls-cert", type=Path, help="TLS certificate (PEM)")
    serve.add_argument("--tls-key", type=Path, help="TLS private key (PEM)")
    serve.add_argument("--tls-self-signed", action="store_true", default=None,
                       help="generate a self-signed certificate (LAN demos only)")
    serve.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR")

    room = sub.add_parser("room", help="create, list and end session rooms").add_subparsers(
        dest="room_command", required=True)
    create = room.add_parser("create", help="create a room and print its three links")
    _common(create)
    create.add_argument("--therapist", required=True, help="therapist's name as partners will see it")
    create.add_argument("--partner", dest="partner_name", action=_PartnerAction, required=True,
                        help="a partner's name (give twice for a couple)")
    create.add_argument("--phone", dest="partner_phone", action=_PartnerAction,
                        help="phone number of the partner named just before, for the phone fallback")
    create.add_argument("--email", dest="partner_email", action=_PartnerAction,
                        help="email address of the partner named just before: the server sends them their link")
    create.add_argument("--therapist-email", help="email address the therapist's link is sent to")
    create.add_argument("--base-url", help="public base URL used in the links")
    create.add_argument("--starts-at", help="session time, ISO 8601 with its offset (e.g. 2026-11-21T15:00-05:00)")
    create.add_argument("--minutes", type=int, help="session length (default: TELEHEALTH_SESSION_MINUTES, 50)")
    create.add_argument("--json", action="store_true", help="print JSON")

    listing = room.add_parser("list", help="list rooms")
    _common(listing)
    listing.add_argument("--json", action="store_true", help="print JSON")

    end = room.add_parser("end", help="end a room for everyone and revoke its links")
    _common(end)
    end.add_argument("room_id")

    audit = sub.add_parser("audit", help="check or export the tamper-evident audit log").add_subparsers(
        dest="audit_command", required=True)
    verify = audit.add_parser("verify", help="check the hash chain; names the first broken entry")
    _common(verify)
    export = audit.add_parser("export", help="write entries as JSON lines")
    _common(export)
    export.add_argument("--since", help="from this time, ISO 8601 (inclusive)")
    export.add_argument("--until", help="up to this time, ISO 8601 (exclusive)")

    purge = sub.add_parser("purge", help="erase personal data and links of rooms ended long ago")
    _common(purge)
    purge.add_argument("--older-than", type=_duration,
                       help="e.g. 30d, 12h, 90m, 600s (default: the retention setting, 30d)")

    user = sub.add_parser("user", help="staff accounts for the console and the ops dashboard").add_subparsers(
        dest="user_command", required=True)
    add = user.add_parser("add", help="create an account; the password is typed, or read from stdin or a file")
    _common(add)
    add.add_argument("--username", required=True)
    add.add_argument("--role", choices=["therapist", "ops"], required=True)
    add.add_argument("--display-name", default="", help="for a therapist: the name partners see")
    add.add_argument("--password-file", type=Path, help="read the password from this file's first line")
    password = user.add_parser("password", help="set a new password (logs the account out everywhere)")
    _common(password)
    password.add_argument("--username", required=True)
    password.add_argument("--password-file", type=Path)
    user_list = user.add_parser("list", help="list accounts")
    _common(user_list)
    remove = user.add_parser("remove", help="delete an account")
    _common(remove)
    remove.add_argument("--username", required=True)

    turn = sub.add_parser("turn", help="TURN relay helpers").add_subparsers(dest="turn_command", required=True)
    turn_config = turn.add_parser("config", help="print a ready coturn configuration for your domain")
    turn_config.add_argument("--realm", required=True, help="the clinic's TURN domain, e.g. turn.clinic.example")
    turn_config.add_argument("--secret", help="shared secret (default: generate one and print it)")
    turn_config.add_argument("--external-ip", help="public IP, or PUBLIC/PRIVATE behind NAT")
    turn_config.add_argument("--relay-ip", help="IPv4 address relays are bound to")
    turn_config.add_argument("--tls-cert", help="certificate for TLS on 443 (default: Let's Encrypt's path)")
    turn_config.add_argument("--tls-key", help="private key for TLS on 443")

    backup = sub.add_parser("backup", help="copy the database to PATH while the server runs (not the key)")
    _common(backup)
    backup.add_argument("path", type=Path, help="the new backup file")
    restore = sub.add_parser("restore", help="check a backup and put it in place of the database (server stopped)")
    _common(restore)
    restore.add_argument("path", type=Path, help="a file made by telehealth backup")

    key = sub.add_parser("key", help="manage the key for personal data").add_subparsers(
        dest="key_command", required=True)
    rotate = key.add_parser("rotate", help="re-encrypt all personal data under a new key (server stopped)")
    _common(rotate)
    return parser


def _duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        seconds = float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)
    except (ValueError, IndexError):
        seconds = math.nan
    if not 0 <= seconds < math.inf:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use e.g. 30d, 12h, 600s)")
    return seconds


def _appointment_time(text: str | None) -> float | None:
    """--starts-at as a timestamp. The time must say its zone: the server never guesses one."""
    if not text:
        return None
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--starts-at: {text!r} is not a date and time (use e.g. 2026-11-21T15:00-05:00)") from None
    if when.tzinfo is None:
        raise ValueError(f"--starts-at: {text!r} does not say its time zone: add its offset, "
                         "e.g. 2026-11-21T15:00-05:00, or Z for UTC")
    try:
        return when.timestamp()
    except (OverflowError, ValueError):
        raise ValueError(f"--starts-at: {text!r} is out of range") from None


def _timestamp(text: str | None, flag: str) -> float | None:
    """An ISO 8601 time of a flag (local time when it has no offset), as a Unix time."""
    if not text:
        return None
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except (ValueError, OverflowError):
        raise ValueError(f"{flag}: not a time: {text!r} (use e.g. 2026-11-21T15:00+00:00)") from None


def config_from(args: argparse.Namespace) -> Config:
    return from_env(
        data_dir=getattr(args, "data_dir", None),
        key_file=getattr(args, "key_file", None),
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
        base_url=getattr(args, "base_url", None),
        tls_cert=getattr(args, "tls_cert", None),
        tls_key=getattr(args, "tls_key", None),
        tls_self_signed=getattr(args, "tls_self_signed", None),
        log_level=getattr(args, "log_level", None),
    )


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def cmd_serve(config: Config) -> int:
    from telehealth.server import serve

    serve(config)
    return 0


def cmd_room(args: argparse.Namespace, config: Config) -> int:
    store = Store.open(config.data_dir, config.key_path)
    try:
        now = time.time()
        if args.room_command == "create":
            starts_at = _appointment_time(args.starts_at)
            if args.minutes is not None and starts_at is None:
                raise ValueError("--minutes needs --starts-at")
            created = rooms.create_room(
                store, therapist=args.therapist,
                partners=[rooms.PartnerSpec(p["name"], p["phone"], p["email"]) for p in args.partners],
                base_url=config.public_base_url, link_ttl=config.link_ttl_seconds, now=now,
                starts_at=starts_at, minutes=config.session_minutes if args.minutes is None else args.minutes,
                overrun_s=config.link_overrun_seconds, therapist_email=args.therapist_email,
                phone_region=config.phone_region,
            )
            record = store.get_room(created.room_id)
            assert record is not None
            queued = set(mail.queue_links(store, record, created.links, config, now))
            # Who gets an email, by the same keys as the links: "therapist", "partner1", ...
            emails = {("therapist" if p.role == "therapist" else f"partner{p.ordinal}"): "queued"
                      for p in record.people if p.id in queued}
            if args.json:
                print(json.dumps({**created.as_json(), **({"emails": emails} if emails else {})}, indent=2))
            else:
                if created.starts_at is not None:
                    print(f"Room {created.room_id}: {_when(created.starts_at)}, {created.minutes} minutes "
                          f"(links work from {_when(created.starts_at - config.link_lead_seconds)} "
                          f"until {_when(created.expires_at)})")
                else:
                    print(f"Room {created.room_id} (links work until {_when(created.expires_at)})")
                print(f"  therapist: {created.therapist_link}")
                for i, link in enumerate(created.partner_links, 1):
                    print(f"  partner {i}: {link}")
                if emails:
                    print(f"  email: {', '.join(emails)}: queued; the running server sends them "
                          "(the console shows when each has gone)")
            return 0
        if args.room_command == "list":
            listed = rooms.list_rooms(store)
            if args.json:
                print(json.dumps([
                    {"room_id": r.id, "created_at": r.created_at, "starts_at": r.starts_at,
                     "minutes": r.minutes, "started_at": r.started_at, "ended_at": r.ended_at,
                     "partners": len(r.partners)} for r in listed
                ], indent=2))
            else:
                for r in listed:
                    state = "ended" if r.ended_at else ("started" if r.started_at else "open")
                    print(f"{r.id}  {state:8}  created {_when(r.created_at)}  starts {_when(r.starts_at)}")
            return 0
        rooms.end_room(store, args.room_id, now=now)
        print(f"Room {args.room_id} ended; its links no longer work.")
        return 0
    finally:
        store.close()


def _audit_db(config: Config) -> sqlite3.Connection:
    # The audit log needs no key: reading it must not create one.
    if not config.db_path.exists():
        raise ValueError(f"no database at {config.db_path}")
    return schema.connect(config.db_path)


def cmd_audit(args: argparse.Namespace, config: Config) -> int:
    db = _audit_db(config)
    try:
        log = AuditLog(db, time.time)
        if args.audit_command == "verify":
            result = log.verify()
            print(f"{'OK' if result.ok else 'BROKEN'}: {result.reason} ({result.checked} entries checked)")
            if result.first_broken_id is not None:
                print(f"first broken entry: {result.first_broken_id}")
            print(f"head hash: {result.head_hash}")
            return 0 if result.ok else 1
        for line in log.export(_timestamp(args.since, "--since"), _timestamp(args.until, "--until")):
            print(line)
        return 0
    finally:
        db.close()


def cmd_purge(args: argparse.Namespace, config: Config) -> int:
    store = Store.open(config.data_dir, config.key_path)
    try:
        older_than = args.older_than if args.older_than is not None else config.retention_seconds
        result = retention.purge(store, AuditLog(store.db, time.time), older_than=older_than,
                                 now=time.time(), actor="cli")
        print(f"Purged {result.rooms} rooms: {result.people} people's names and numbers, {result.links} links.")
        return 0
    finally:
        store.close()


def cmd_key(args: argparse.Namespace, config: Config) -> int:
    store = Store.open(config.data_dir, config.key_path)
    try:
        count = store.rotate_key(config.key_path, audit=AuditLog(store.db, time.time), actor="cli")
    finally:
        store.close()
    print(f"Re-encrypted {count} values under a new key in {config.key_path}.")
    print(f"The previous key was kept next to it as {config.key_path.name}.old-<time>: database backups "
          "made before now need it. Delete it once those backups are gone.")
    return 0


def cmd_backup(args: argparse.Namespace, config: Config) -> int:
    made = backups.backup(config.db_path, args.path)
    print(f"Backed up {made.rooms} rooms (schema version {made.version}) to {made.path}.")
    print(f"The key file is not in the backup: keep a copy of {config.key_path} somewhere else than "
          "the backups. Without it no backup can be read; with a backup, it reveals names and numbers.")
    return 0


def cmd_restore(args: argparse.Namespace, config: Config) -> int:
    done = backups.restore(args.path, config.data_dir, config.key_path)
    print(f"Restored {done.copied.rooms} rooms (schema version {done.copied.version}) from {args.path} "
          f"into {done.copied.path}; start the server now.")
    if done.kept_aside is not None:
        print(f"The database it replaced is kept as {done.kept_aside}: delete it once the restored "
              "server works.")
    return 0


def cmd_user(args: argparse.Namespace, config: Config) -> int:
    store = Store.open(config.data_dir, config.key_path)
    try:
        if args.user_command == "add":
            created = accounts.add_user(store, args.username, accounts.read_password(args.password_file),
                                        args.role, now=time.time(), display_name=args.display_name)
            print(f"Created {created.role} account {created.username}.")
        elif args.user_command == "password":
            accounts.set_password(store, args.username, accounts.read_password(args.password_file))
            print(f"Password changed for {args.username}; its sessions were signed out.")
        elif args.user_command == "list":
            for u in accounts.list_users(store):
                print(f"{u.username}  {u.role}")
        else:
            accounts.remove_user(store, args.username)
            print(f"Removed {args.username}.")
        return 0
    finally:
        store.close()


def cmd_turn(args: argparse.Namespace) -> int:
    generated = args.secret is None
    secret = args.secret or secrets.token_urlsafe(32)
    print(turn.render_coturn_config(args.realm, secret, external_ip=args.external_ip, tls_cert=args.tls_cert,
                                    tls_key=args.tls_key, relay_ip=args.relay_ip))
    if generated:
        print("# Give telehealth the same secret and the relay's addresses:", file=sys.stderr)
        print(f"#   TELEHEALTH_TURN_SECRET={secret}", file=sys.stderr)
    print(f"#   TELEHEALTH_TURN_URLS=turn:{args.realm}:3478?transport=udp,turn:{args.realm}:3478?transport=tcp,"
          f"turns:{args.realm}:443?transport=tcp", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Whatever this process creates (SQLite's files among them) is for the service's user only.
    os.umask(0o077)
    try:
        config = config_from(args)
        if args.command == "serve":
            return cmd_serve(config)
        if args.command == "audit":
            return cmd_audit(args, config)
        if args.command == "purge":
            return cmd_purge(args, config)
        if args.command == "key":
            return cmd_key(args, config)
        if args.command == "turn":
            return cmd_turn(args)
        if args.command == "user":
            return cmd_user(args, config)
        if args.command == "backup":
            return cmd_backup(args, config)
        if args.command == "restore":
            return cmd_restore(args, config)
        # Holding the key's shared lock keeps a rotation from running under our feet.
        with keys.key_in_use(config.key_path):
            return cmd_room(args, config)
    except (TelehealthError, ValueError, KeyFileError, schema.StoreError) as exc:
        detail = exc.detail if isinstance(exc, TelehealthError) else str(exc)
        print(f"telehealth: {detail}", file=sys.stderr)
        return 2
    except sqlite3.DatabaseError as exc:
        # Past the checks at open: a page damaged where only this command's query looked.
        print(f"telehealth: {schema.refusal(config.db_path, exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file or folder that cannot be read or made, a port in use
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"telehealth: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
