"""One JSON Schema for the protocol (signaling/schema.py, committed as docs/protocol.schema.json),
and the browser's own messages checked against it.

The messages are the ones web/static/signaling.js builds, driven for real in node
(tests/client_messages.mjs): every client type, each as the page sends it.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from signaling import protocol
from signaling.schema import render, schema
from telehealth.errors import ProtocolError

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "docs" / "protocol.schema.json"


def validator(union: str) -> Draft202012Validator:
    """A validator of one direction: the document with its root set to that union."""
    document = schema()
    return Draft202012Validator({**document, "anyOf": [{"$ref": f"#/$defs/{union}"}]})


@pytest.fixture(scope="module")
def client_messages() -> list[dict[str, Any]]:
    done = subprocess.run(["node", str(ROOT / "tests" / "client_messages.mjs")], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=True)
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_the_committed_schema_is_the_generated_one() -> None:
    assert COMMITTED.read_bytes() == render(), (
        "docs/protocol.schema.json is stale: python -m signaling.schema > docs/protocol.schema.json")


def test_the_schema_is_a_valid_draft_2020_12_schema() -> None:
    Draft202012Validator.check_schema(json.loads(COMMITTED.read_text()))


def test_every_message_the_js_client_sends_validates(client_messages: list[dict[str, Any]]) -> None:
    check = validator("ClientMessage")
    for message in client_messages:
        errors = [error.message for error in check.iter_errors(message)]
        assert errors == [], (message, errors)
        protocol.parse_client(json.dumps(message), max_bytes=65536)  # and the server takes it


def test_the_js_client_sends_every_client_type(client_messages: list[dict[str, Any]]) -> None:
    assert {message["type"] for message in client_messages} == protocol.CLIENT_TYPES


@pytest.mark.parametrize("message", [
    {"type": "teleport"},
    {"type": "join"},
    {"type": "join", "token": ""},
    {"type": "admit", "participant": "x" * 65},
    {"type": "stats", "links": [{"peer": "p_b"}] * 9},
    {"type": "stats", "links": [{"peer": "p_b", "loss": 2}]},
    {"type": "lock", "locked": "yes"},
    {"type": "mute", "participant": "p_b", "kind": "screen"},
])
def test_the_schema_refuses_what_the_server_refuses(message: dict[str, Any]) -> None:
    assert not validator("ClientMessage").is_valid(message)
    with pytest.raises(ProtocolError):
        protocol.parse_client(json.dumps(message), max_bytes=65536)


def test_server_messages_validate_as_the_server_encodes_them() -> None:
    check = validator("ServerMessage")
    for message in (protocol.Pong(t=1.0, server_time=2.0),
                    protocol.Bye(reason=protocol.CloseReason.ROOM_ENDED, action=protocol.RecoveryAction.NONE),
                    protocol.FallbackAction(action="hold", person="p_a", waiting_for="p_b"),
                    protocol.Ledger(rows=[protocol.LedgerRow(disruption=1, person="p_a", cause="own_network",
                                                             started_at=1.0)])):
        decoded = json.loads(protocol.encode(message))
        assert [error.message for error in check.iter_errors(decoded)] == [], decoded
    assert not check.is_valid({"type": "pong", "t": "soon"})
