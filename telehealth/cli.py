"""The ``telehealth`` command. It only maps flags onto Config and calls plain functions."""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from telehealth import rooms
from telehealth.config import Config, from_env
from telehealth.errors import TelehealthError
from telehealth.store import Store


class _PartnerAction(argparse.Action):
    """--partner NAME starts a partner; a following --phone belongs to that partner."""

    def __call__(self, parser: Any, ns: argparse.Namespace, value: Any, option: str | None = None) -> None:
        partners = getattr(ns, "partners", None) or []
        if self.dest == "partner_name":
            partners.append({"name": value, "phone": None})
        else:
            if not partners or partners[-1]["phone"] is not None:
                parser.error("--phone must follow the --partner it belongs to")
            partners[-1]["phone"] = value
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
    create.add_argument("--base-url", help="public base URL used in the links")
    create.add_argument("--starts-at", help="session time, ISO 8601 (e.g. 2026-11-21T15:00+00:00)")
    create.add_argument("--json", action="store_true", help="print JSON")

    listing = room.add_parser("list", help="list rooms")
    _common(listing)
    listing.add_argument("--json", action="store_true", help="print JSON")

    end = room.add_parser("end", help="end a room for everyone and revoke its links")
    _common(end)
    end.add_argument("room_id")
    return parser


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
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def cmd_serve(config: Config) -> int:
    from telehealth.server import serve

    serve(config)
    return 0


def cmd_room(args: argparse.Namespace, config: Config) -> int:
    store = Store.open(config.data_dir, config.key_path)
    try:
        now = time.time()
        if args.room_command == "create":
            starts_at = datetime.datetime.fromisoformat(args.starts_at).timestamp() if args.starts_at else None
            created = rooms.create_room(
                store, therapist=args.therapist,
                partners=[rooms.PartnerSpec(p["name"], p["phone"]) for p in args.partners],
                base_url=config.public_base_url, link_ttl=config.link_ttl_seconds, now=now,
                starts_at=starts_at,
            )
            if args.json:
                print(json.dumps(created.as_json(), indent=2))
            else:
                print(f"Room {created.room_id} (links work until {_when(created.expires_at)})")
                print(f"  therapist: {created.therapist_link}")
                for i, link in enumerate(created.partner_links, 1):
                    print(f"  partner {i}: {link}")
            return 0
        if args.room_command == "list":
            listed = rooms.list_rooms(store)
            if args.json:
                print(json.dumps([
                    {"room_id": r.id, "created_at": r.created_at, "starts_at": r.starts_at,
                     "started_at": r.started_at, "ended_at": r.ended_at,
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = config_from(args)
        if args.command == "serve":
            return cmd_serve(config)
        return cmd_room(args, config)
    except (TelehealthError, ValueError) as exc:
        detail = exc.detail if isinstance(exc, TelehealthError) else str(exc)
        print(f"telehealth: {detail}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
