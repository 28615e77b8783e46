"""The protocol as one JSON Schema, generated from the msgspec types in ``protocol.py``.

``python -m signaling.schema > docs/protocol.schema.json`` writes it; the committed file is
checked against a fresh one (tests/test_protocol_schema.py), and so are the messages the
browser's ``signaling.js`` sends. Never edit the JSON by hand: change ``protocol.py``.

The document validates either direction (``anyOf`` the two unions); each union is also in
``$defs`` by name (``ClientMessage``, ``ServerMessage``) to validate one direction alone.
Unknown fields are allowed, as the server ignores them.
"""

from __future__ import annotations

import sys
from typing import Any

import msgspec

from signaling import protocol

DIALECT = "https://json-schema.org/draft/2020-12/schema"
REF = "#/$defs/{name}"


def schema() -> dict[str, Any]:
    """The whole protocol: both unions and every type they use, under ``$defs``."""
    (client, server), components = msgspec.json.schema_components(
        (protocol.ClientMessage, protocol.ServerMessage), ref_template=REF)
    return {
        "$schema": DIALECT,
        "title": f"telehealth signaling protocol, version {protocol.VERSION}",
        "description": "Generated from signaling/protocol.py by `python -m signaling.schema`; "
                       "docs/protocol.md explains each message.",
        "anyOf": [{"$ref": REF.format(name="ClientMessage")}, {"$ref": REF.format(name="ServerMessage")}],
        "$defs": {"ClientMessage": client, "ServerMessage": server, **components},
    }


def render() -> bytes:
    """The schema as committed: two-space indents, a newline at the end."""
    return msgspec.json.format(msgspec.json.encode(schema()), indent=2) + b"\n"


if __name__ == "__main__":
    sys.stdout.buffer.write(render())
