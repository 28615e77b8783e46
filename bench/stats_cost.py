"""What one message costs the server, in instructions (callgrind): repeatable on a busy machine.

The server's own handlers, driven in-process exactly as the endpoint calls them (``_handle``
with the bytes a page sends, ``deliver`` of what comes back, the expire loop's pass), in an
app built by ``create_app`` with every listener wired (metrics, history, keeper, audit). Rooms
of three, everyone in the call, on a simulated clock: each participant sends the load
generator's stats message (bench/loadgen.py: two links, every field the pages send) every
250 ms, spread evenly. After a warm-up (windows full, levels settled), each part is run once
under ``sys.call_tracing``, which callgrind counts alone (``--toggle-collect``) and dumps after:

- ``decode``: parsing and validating one stats message (``protocol.parse_client``);
- ``stats``: one stats message through the endpoint (decode, ``RoomWatch.on_stats``, the
  scorer, a judgement when one is due, the stats sinks), per message and per link sample;
- ``tick``: the expire loop's pass (``RoomWatch.tick``, ``RoomHub.expire``, the keeper) every
  250 ms between the stats, per room and second of simulated time;
- ``relay``: one trickled candidate from one participant to a peer, through the endpoint;
- ``rejoin``: a socket dropping and its link joining again (hub, watch, audit), without the
  renegotiation (those are relays).

Usage: python -m bench.stats_cost [--rooms 20] [--seconds 10] [--json]
(runs itself under ``valgrind --tool=callgrind``; ``--inner`` is that run). Instruction counts
vary a little with the Python build and library versions; compare runs on one machine.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

TICK_S = 0.25  # the expire loop's pass (Config.store_poll_seconds)


class FakeSocket:
    """What the endpoint and hub need of a ClientSocket; frames are built, then dropped."""

    __slots__ = ("room_id", "address", "closing", "heard", "last", "__weakref__")

    def __init__(self) -> None:
        self.room_id: str | None = None
        self.address = "127.0.0.1"
        self.closing = False
        self.heard = True
        self.last: list[bytes] = []

    def send(self, data: bytes) -> bool:
        from signaling import fastws

        fastws.text_frame(data)
        if len(self.last) < 8:
            self.last.append(data)
        return True

    def close_after_flush(self, reason: object) -> None:
        self.closing = True

    def abort(self, reason: object) -> None:
        self.closing = True


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def inner(rooms_n: int, seconds: float, check: bool = True) -> None:
    from bench import loadgen
    from signaling import endpoint
    from signaling import protocol as p
    from signaling.endpoint import SIGNALING
    from telehealth import rooms
    from telehealth.app import create_app
    from telehealth.config import Config

    data = Path(tempfile.mkdtemp(prefix="telehealth-cost-"))
    clock = Clock(1_900_000_000.0)
    config = Config(host="127.0.0.1", port=9, data_dir=data, log_level="WARNING")
    app = create_app(config, clock=clock, ops_dashboard=False)
    sig = app[SIGNALING]
    store = sig.store
    creds = []
    for i in range(rooms_n):
        room = rooms.create_room(
            store, therapist="Bench Therapist",
            partners=[rooms.PartnerSpec("Bench Partner A"), rooms.PartnerSpec("Bench Partner B")],
            base_url="http://127.0.0.1:9", link_ttl=24 * 3600, now=clock())
        creds.append([link.rsplit("/", 1)[1] for link in (room.therapist_link, *room.partner_links)])
    gen = loadgen.LoadGen({"target": "ours", "host": "127.0.0.1", "port": 9, "churn_per_s": 0.0,
                           "rooms": creds, "stats_every_s": TICK_S})
    socks: dict[int, FakeSocket] = {}

    def handle(m: Any, data: bytes) -> None:
        sock = socks[id(m)]
        sock.last.clear()
        endpoint._handle(sig, sock, data)  # type: ignore[arg-type]

    def replies(m: Any) -> list[dict[str, Any]]:
        return [json.loads(x) for x in socks[id(m)].last]

    def join(m: Any) -> None:
        socks[id(m)] = FakeSocket()
        handle(m, b'{"type":"join","v":1,"token":"%s"}' % m.cred.encode())
        for msg in replies(m):
            if msg["type"] in ("welcome", "waiting"):
                m.id = msg["you"]["id"]

    for live in gen.rooms:
        therapist, *partners = live.members
        join(therapist)
        for m in partners:
            join(m)
            handle(therapist, b'{"type":"admit","participant":"%s"}' % m.id.encode())
    for m in gen.members:
        assert m.id is not None and sig.hub.seats[socks[id(m)]], "not seated"
        m.state = "in_call"

    members = gen.members
    step = TICK_S / len(members)
    expire_at = [clock.t]

    def loop_pass() -> None:
        # signaling/endpoint.py expire_loop, one pass
        now = clock()
        sig.deliver(sig.watch.tick(now))
        if now >= expire_at[0]:
            sig.deliver(sig.hub.expire(now))
            expire_at[0] = now + 0.5
        if sig.keeper is not None:
            sig.keeper.flush()
        store.data_version()

    def stats_round(measure: bool) -> None:
        # The messages are built first: only the server's handling is measured. Each round
        # is parsed once on its own (the decoding's share, no side effects), then handled,
        # then the expire loop passes, as in the server every 250 ms.
        batch = []
        for m in members:
            clock.t += step
            batch.append((m, clock.t, gen.stats_message(m)))
        end = clock.t

        def decode_all() -> None:
            for _, _, data in batch:
                p.parse_client(data, config.max_message_bytes)

        def handle_all() -> None:
            for m, t, data in batch:
                clock.t = t
                handle(m, data)
            clock.t = end

        if measure:
            call("decode", decode_all)
        call("stats" if measure else None, handle_all)
        call("tick" if measure else None, loop_pass)

    def run(rounds: int, measure: bool) -> None:
        for i in range(rounds):
            stats_round(measure)
            if i % 4 == 3:
                gc.freeze()  # telehealth/server.py freezes what is alive every second

    order: list[str] = []

    def call(part: str | None, fn: Callable[[], None]) -> None:
        if part is None:
            fn()
        else:
            sys.call_tracing(fn, ())  # counted by callgrind (--toggle-collect), then dumped
            order.append(part)

    def relays() -> None:
        for m in members:
            peer = m.peers()[m.seat % 2]
            cand = {"candidate": loadgen.CANDIDATE.format(n=9, port=loadgen.PROBE_PORT, sent=time.monotonic_ns()),
                    "sdpMid": "0", "sdpMLineIndex": 0}
            handle(m, gen.relay_message(m, peer.id, "candidate", f"{m.id}.1", cand))  # type: ignore[arg-type]

    def rejoins() -> None:
        for m in members:
            clock.t += step
            sig.deliver(sig.hub.disconnect(socks[id(m)], clock()))
            join(m)

    # Warm-up: every window full, levels past their holds, the app's one-off work done.
    gc.collect()
    gc.freeze()
    run(int(12 / TICK_S), measure=False)
    for room_id, watched in sig.watch.rooms.items():
        quality = watched.monitor.evaluate(clock())
        levels = {q.value for q in quality.pairs.values()}
        assert not check or (len(quality.pairs) == 3 and levels == {"good"}), (room_id, quality)
    m = members[0]
    relays_check = socks[id(m.peers()[0])]
    relays_check.last.clear()
    handle(m, gen.relay_message(m, m.peers()[0].id, "candidate", "x.1",  # type: ignore[arg-type]
                                {"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host", "sdpMid": "0"}))
    assert not socks[id(m)].last and b'"candidate"' in relays_check.last[-1], "the relay did not arrive"
    rounds = max(1, int(seconds / TICK_S))
    n, links = len(members), 2
    results: dict[str, Any] = {"rooms": rooms_n, "participants": n, "simulated_s": rounds * TICK_S}

    run(rounds, measure=True)
    call("relay", relays)
    call("rejoin", rejoins)
    results["order"] = order
    results["messages"] = {"decode": rounds * n, "stats": rounds * n, "tick": rounds,
                           "relay": n, "rejoin": n, "links_per_stats": links}
    print("RESULT " + json.dumps(results), flush=True)


def collected(path: Path) -> int:
    for line in path.read_text().splitlines():
        if line.startswith(("totals:", "summary:")):
            return int(line.split()[1])
    return 0


def outer(opts: argparse.Namespace) -> dict[str, Any]:
    out = Path(tempfile.mkdtemp(prefix="telehealth-callgrind-"))
    base = out / "cg.out"
    env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    run = subprocess.run(
        ["valgrind", "--tool=callgrind", "--collect-atstart=no", "--toggle-collect=sys_call_tracing",
         "--dump-after=sys_call_tracing", "--dump-instr=no", "--compress-strings=no",
         f"--callgrind-out-file={base}", sys.executable, "-m", "bench.stats_cost", "--inner",
         "--rooms", str(opts.rooms), "--seconds", str(opts.seconds)],
        capture_output=True, text=True, env=env, check=False)
    line = next((x for x in run.stdout.splitlines() if x.startswith("RESULT ")), None)
    if run.returncode != 0 or line is None:
        sys.exit(f"the callgrind run failed:\n{run.stderr[-3000:]}")
    inner_result = json.loads(line[len("RESULT "):])
    dumps = sorted(out.glob("cg.out.*"), key=lambda f: int(re.sub(r"\D", "", f.name.rsplit(".", 1)[1]) or 0))
    counts = [collected(f) for f in dumps]
    counts = [c for c in counts if c]
    if len(counts) != len(inner_result["order"]):
        sys.exit(f"expected {len(inner_result['order'])} dumps, found {len(counts)} in {out}")
    total: dict[str, int] = {}
    for part, count in zip(inner_result["order"], counts):
        total[part] = total.get(part, 0) + count
    msgs = inner_result["messages"]
    per = {name: round(total[name] / msgs[name]) for name in total}
    links = msgs["links_per_stats"]
    room_seconds = inner_result["rooms"] * inner_result["simulated_s"]
    tick_per_room_s = round(total["tick"] / room_seconds)
    for f in out.iterdir():
        f.unlink()
    out.rmdir()
    return {
        "what": "server instructions per message (callgrind Ir), handlers driven in-process",
        "command": "python -m bench.stats_cost " + " ".join(sys.argv[1:]),
        "rooms": inner_result["rooms"], "participants": inner_result["participants"],
        "stats_every_s": TICK_S, "simulated_s": inner_result["simulated_s"],
        "instructions": {
            "stats_message": per["stats"],
            "stats_per_link_sample": round(per["stats"] / links),
            "stats_decode": per["decode"],
            "stats_watch_and_sinks": per["stats"] - per["decode"],
            "tick_per_room_second": tick_per_room_s,
            "tick_pass": per["tick"],
            "relay": per["relay"],
            "rejoin": per["rejoin"],
            "per_participant_second": round(per["stats"] / TICK_S + tick_per_room_s / 3 + per["relay"] / 2),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.stats_cost", description=__doc__.split("\n")[0])
    parser.add_argument("--rooms", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=10.0, help="simulated seconds of stats measured")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.inner:
        inner(opts.rooms, opts.seconds)
        return
    result = outer(opts)
    if opts.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['participants']} participants in {result['rooms']} rooms, stats every "
          f"{result['stats_every_s'] * 1000:.0f} ms, {result['simulated_s']:.0f} s simulated")
    for key, value in result["instructions"].items():
        print(f"  {key:28} {value:>10,}")


if __name__ == "__main__":
    main()
