"""A whole session with known names and numbers: none may appear in clear text in any log
line (at DEBUG), the metrics, the audit log, or the raw SQLite files."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import aiohttp

from media.participant import SyntheticParticipant
from telehealth import rooms
from tests.conftest import LogCapture, free_port, start_server

THERAPIST = "Dr Henrietta Quill"
PARTNERS = [("Marisol Okonkwo-Test", "+1 202 867 5309"), ("Bartholomew Zed", "+44 20 7946 0958")]
SECRETS = [THERAPIST, "Henrietta", "Quill", "Marisol", "Okonkwo", "Bartholomew", "Zed",
           "867 5309", "8675309", "7946 0958", "79460958"]


async def test_no_name_or_number_in_logs_metrics_audit_or_database(make_config: Any, captured_logs: LogCapture) -> None:
    metrics_address = f"127.0.0.1:{free_port()}"
    server = await start_server(make_config(metrics_address=metrics_address))
    try:
        created = rooms.create_room(
            server.store, therapist=THERAPIST,
            partners=[rooms.PartnerSpec(n, ph) for n, ph in PARTNERS],
            base_url=server.base_url, link_ttl=3600, now=time.time(),
        )
        therapist = SyntheticParticipant(created.therapist_link, auto_admit=True)
        a = SyntheticParticipant(created.partner_links[0])
        b = SyntheticParticipant(created.partner_links[1])
        people = (therapist, a, b)
        for person in people:
            await person.join()
        for person in people:
            await person.wait_for(lambda person=person: person.state == "in_call", 10)
        await a.wait_media([therapist.me["id"], b.me["id"]], frames=3, timeout=15)
        # The monitor has judged the links (the whole test can take less than two stats
        # intervals, and the first reports may come only after media starts).
        await therapist.wait_for(lambda: any(m["type"] == "quality" and m["links"] for m in therapist.received), 10)
        # Inside the room people do see each other's names: that is the service.
        assert any(m["type"] == "welcome" and any(p["name"] == THERAPIST for p in m["peers"]) for m in a.received)
        b_id = b.me["id"]
        # A disruption that ends on the phone: the number reaches the therapist's page only.
        await b.drop_signaling()
        await therapist.wait_message("presence", peer=b_id, state="reconnecting")
        await therapist.send({"type": "switch_to_phone", "participant": b_id})
        prompt = await therapist.wait_message("call_prompt")
        assert prompt["phone"] == "+442079460958"
        await b.join()
        await b.wait_message("welcome", resumed=True)
        await therapist.send({"type": "return_to_video", "participant": b_id})
        await therapist.wait_message("notice", kind="returned_to_video", about=b_id)
        # Bad input gets logged too.
        await a.send_raw('{"type": "sdp", "to": "' + THERAPIST + '"}')
        await a.wait_for(lambda: len(a.errors) >= 1, 5)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://{metrics_address}/metrics") as response:
                metrics = await response.text()
            async with session.get(created.partner_links[0][:-4] + "AAAA") as response:
                assert response.status == 404
        await therapist.send({"type": "end"})
        for person in people:
            await person.wait_for(lambda person=person: person.bye is not None, 5)
            await person.close()
        audit = "\n".join(server.store.audit.export())
    finally:
        await server.runner.cleanup()

    data_dir: Path = server.config.data_dir
    raw = b"".join(p.read_bytes() for p in data_dir.iterdir() if p.is_file() and not p.name.endswith(".key"))
    assert "telehealth_phone_fallbacks_total 1.0" in metrics
    # Links were judged while the call ran: their time at some level adds up.
    link_seconds = [float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                    if line.startswith("telehealth_link_quality_seconds_total{")]
    assert len(link_seconds) == 4 and sum(link_seconds) > 0, link_seconds
    assert 'telehealth_signaling_errors_total{code="invalid_message"} 1.0' in metrics
    assert any("refused" in line for line in captured_logs.lines)
    assert "phone_switch" in audit and "participant_admitted" in audit
    for secret in SECRETS:
        for line in captured_logs.lines:
            assert secret not in line, f"{secret!r} in a log line: {line}"
        assert secret not in metrics, f"{secret!r} in /metrics"
        assert secret not in audit, f"{secret!r} in the audit log"
        assert secret.encode() not in raw, f"{secret!r} in the database files"
    for line in captured_logs.lines:
        json.loads(line)
