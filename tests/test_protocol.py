"""Table tests for the protocol parser: every bad input gets its stable code."""

from __future__ import annotations

import json

import pytest

from signaling import protocol as p
from telehealth.errors import ErrorCode, ProtocolError

LIMIT = 64 * 1024
SDP = {"type": "offer", "sdp": "v=0\r\n"}


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ({"type": "join", "token": "t"}, p.Join(token="t", v=1)),
        ({"type": "sdp", "to": "p_1", "pc": "a1", "description": SDP},
         p.ClientSdp(to="p_1", pc="a1", description=p.Description("offer", "v=0\r\n"))),
        ({"type": "candidate", "to": "p_1", "pc": "a1", "candidate": None},
         p.ClientCandidate(to="p_1", pc="a1", candidate=None)),
        ({"type": "candidate", "to": "p_1", "pc": "a1",
          "candidate": {"candidate": "candidate:1 1 udp 1 1.2.3.4 5 typ host", "sdpMid": "0", "sdpMLineIndex": 0}},
         p.ClientCandidate(to="p_1", pc="a1", candidate=p.IceCandidate(
             "candidate:1 1 udp 1 1.2.3.4 5 typ host", "0", 0))),
        ({"type": "restart", "to": "p_1"}, p.ClientRestart(to="p_1")),
        ({"type": "ping", "t": 1.5}, p.Ping(t=1.5)),
        ({"type": "leave"}, p.Leave()),
        ({"type": "media", "audio": False, "video": True}, p.MediaState(audio=False, video=True)),
        ({"type": "stats", "links": [{"peer": "p_1", "rtt_ms": 20, "packets_in": 10, "candidate": "relay"}]},
         p.Stats(links=[p.LinkStats(peer="p_1", rtt_ms=20, packets_in=10, candidate="relay")])),
        ({"type": "admit", "participant": "p_2"}, p.Admit(participant="p_2")),
        ({"type": "remove", "participant": "p_2"}, p.Remove(participant="p_2")),
        ({"type": "mute", "participant": "p_2", "kind": "video"}, p.Mute(participant="p_2", kind="video")),
        ({"type": "lock", "locked": True}, p.Lock(locked=True)),
        ({"type": "end"}, p.End()),
        # Unknown fields are ignored, so newer clients can talk to this server.
        ({"type": "leave", "extra": 1}, p.Leave()),
    ],
)
def test_valid_messages_parse_to_their_types(message: dict, expected: p.ClientMessage) -> None:
    assert p.parse_client(json.dumps(message).encode(), LIMIT) == expected


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"{", ErrorCode.BAD_JSON),
        (b"not json", ErrorCode.BAD_JSON),
        (b"", ErrorCode.BAD_JSON),
        (b"[]", ErrorCode.INVALID_MESSAGE),
        (b"42", ErrorCode.INVALID_MESSAGE),
        (b'{"token": "x"}', ErrorCode.UNKNOWN_TYPE),
        (b'{"type": "hack"}', ErrorCode.UNKNOWN_TYPE),
        (b'{"type": 7}', ErrorCode.UNKNOWN_TYPE),
        (b'{"type": "join"}', ErrorCode.INVALID_MESSAGE),
        (b'{"type": "join", "token": 5}', ErrorCode.INVALID_MESSAGE),
        (b'{"type": "join", "token": ""}', ErrorCode.INVALID_MESSAGE),
        (b'{"type": "sdp", "to": "p", "pc": "a", "description": {"type": "pranswer", "sdp": ""}}',
         ErrorCode.INVALID_MESSAGE),
        (b'{"type": "sdp", "to": "", "pc": "a", "description": {"type": "offer", "sdp": ""}}',
         ErrorCode.INVALID_MESSAGE),
        (json.dumps({"type": "sdp", "to": "p" * 65, "pc": "a", "description": SDP}).encode(),
         ErrorCode.INVALID_MESSAGE),
        (b'{"type": "mute", "participant": "p", "kind": "screen"}', ErrorCode.INVALID_MESSAGE),
        (b'{"type": "lock", "locked": "yes"}', ErrorCode.INVALID_MESSAGE),
        (json.dumps({"type": "stats", "links": [{"peer": "p"}] * 9}).encode(), ErrorCode.INVALID_MESSAGE),
        # Measurements out of any real range are bad input, not numbers for the scorer.
        (json.dumps({"type": "stats", "links": [{"peer": "p", "rtt_ms": 1.7e308}]}).encode(),
         ErrorCode.INVALID_MESSAGE),
        (json.dumps({"type": "stats", "links": [{"peer": "p", "loss": 1.5}]}).encode(), ErrorCode.INVALID_MESSAGE),
        (json.dumps({"type": "stats", "links": [{"peer": "p", "send_limit": "gpu"}]}).encode(),
         ErrorCode.INVALID_MESSAGE),
        (json.dumps({"type": "stats", "links": [{"peer": "p", "lag_ms": -5}]}).encode(), ErrorCode.INVALID_MESSAGE),
        (json.dumps({"type": "stats", "links": [{"peer": "p", "packets_in": -1}]}).encode(),
         ErrorCode.INVALID_MESSAGE),
        (json.dumps({"type": "sdp", "to": "p", "pc": "a",
                     "description": {"type": "offer", "sdp": "x" * LIMIT}}).encode(), ErrorCode.TOO_LARGE),
    ],
)
def test_bad_input_gets_a_stable_code(raw: bytes, code: ErrorCode) -> None:
    with pytest.raises(ProtocolError) as caught:
        p.parse_client(raw, LIMIT)
    assert caught.value.code == code


def test_server_messages_use_from_on_the_wire() -> None:
    wire = json.loads(p.encode(p.ServerSdp(from_="p_1", pc="a", description=p.Description("answer", "v=0"))))
    assert wire == {"type": "sdp", "from": "p_1", "pc": "a", "description": {"type": "answer", "sdp": "v=0"}}


def test_every_close_reason_has_a_close_code() -> None:
    assert set(p.CLOSE_CODES) == set(p.CloseReason)
    assert all(4000 <= code < 5000 for code in p.CLOSE_CODES.values())
