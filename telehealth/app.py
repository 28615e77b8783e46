"""Wiring: ``create_app(config)`` builds the aiohttp application from its parts.

With telehealth/server.py and telehealth/cli.py, the one place that knows every part: it
imports the outer packages (web, signaling, fallback), and nothing but the wiring imports it
(tests/test_layers.py keeps that true; docs/architecture.md draws the layers).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from signaling import protocol
from signaling.endpoint import SIGNALING, Signaling, expire_loop, liveness_loop, websocket_handler
from signaling.history import QualityHistory
from signaling.hub import HubEvent, MemberEvent, RoomHub
from signaling.keeper import SessionKeeper
from signaling.live import LIVE, LiveRooms
from signaling.metrics import SessionMetrics, main_port_handler, metrics_listener, parse_address, read_token
from signaling.watch import RoomWatch
from signaling.welcome import welcome_extras
from telehealth import proxies, requestlog, retention
from telehealth.appkeys import AUDIT, CONFIG, LOGIN_LIMITS, MAIL, REFUSALS, STORE
from telehealth.audit import AuditEvent
from telehealth.config import Config
from telehealth.datadir import ServerLock
from telehealth.dialers import CallRequest, Dialer, TelDialer, WebhookDialer
from telehealth.keys import key_in_use, key_problem
from telehealth.mail import MailSender
from telehealth.model import Person
from telehealth.ratelimit import LoginLimits
from telehealth.refusals import RefusalTally
from telehealth.sessions import LiveSessions
from telehealth.store import Store
from telehealth.webhooks import OpsWebhooks
from web import ops, pages, routes

log = logging.getLogger("telehealth")

# /readyz fails when the background loop (grace windows, ended rooms) has not run for this long.
READY_STALE_SECONDS = 5.0
# How often the server notes in the store that it is running.
ALIVE_EVERY_SECONDS = 1.0


def create_app(config: Config, *, clock: Callable[[], float] = time.time,
               ops_dashboard: bool = True) -> web.Application:
    """The application for ``config``. ``ops_dashboard=False`` leaves the ops pages unmounted
    (tests do); everything they would show is recorded all the same."""
    # Settings that cannot work stop the start, before anything is opened.
    trusted = proxies.parse_networks(config.trusted_proxies)
    metrics_token = read_token(config.metrics_token_file) if config.metrics_token_file else None
    metrics_side = parse_address(config.metrics_address) if config.metrics_address else None
    # One server per data folder, for its whole life; then the store, checked page by page.
    server_lock = ServerLock(config.data_dir).acquire()
    try:
        store = Store.open(config.data_dir, config.key_path, check=True)
    except BaseException:
        server_lock.release()
        raise
    audit = store.audit
    # The proxy's rewrite comes first, so every other part sees the client's own address.
    app = web.Application(middlewares=[*([proxies.middleware(trusted)] if trusted else []),
                                       requestlog.middleware, pages.security_headers])
    app[CONFIG] = config
    app[STORE] = store
    app[AUDIT] = audit
    app[LOGIN_LIMITS] = LoginLimits(per_address=config.login_failures_per_address,
                                    per_account=config.login_failures_per_account,
                                    per_seconds=config.login_window_seconds)
    refusals = app[REFUSALS] = RefusalTally(audit)
    mail = app[MAIL] = MailSender(store, config, clock)
    hub = RoomHub(grace_seconds=config.grace_seconds, extras=welcome_extras(config), relay_only=config.relay_only)
    watch = RoomWatch(hub, rejoin_window_s=config.rejoin_window_seconds)
    sig = Signaling(config=config, store=store, hub=hub, clock=clock, audit=audit, refusals=refusals,
                    watch=watch)
    app[SIGNALING] = sig

    dialer: Dialer = (WebhookDialer(config.phone_webhook_url, config.phone_webhook_secret or "")
                      if config.phone_webhook_url else TelDialer())
    dial_tasks: set[asyncio.Task[bool]] = set()

    def on_phone_step(room_id: str, therapist: Person, callee: Person) -> None:
        audit.append(AuditEvent.PHONE_SWITCH, room_id=room_id, person_id=callee.id, actor="server")
        task = asyncio.get_running_loop().create_task(dialer.dial(CallRequest(
            room_id=room_id, callee_id=callee.id, phone=callee.phone, therapist_id=therapist.id, at=clock())))
        dial_tasks.add(task)
        task.add_done_callback(dial_tasks.discard)

    def on_ledger(room_id: str, rows: list[protocol.LedgerRow]) -> None:
        store.save_ledger(room_id, protocol.encode(rows).decode(), clock())

    watch.phone_listeners.append(on_phone_step)
    watch.ledger_listeners.append(on_ledger)

    metrics = SessionMetrics(hub, sockets=lambda: len(sig.sockets), messages=lambda: sig.received,
                             clock=clock, ready=lambda: not readiness_problems(),
                             turn_configured=bool(config.turn_urls))
    sig.event_sinks.append(metrics.on_hub_event)
    sig.error_sinks.append(metrics.on_error)
    watch.quality_listeners.append(metrics.on_quality)
    watch.disruption_listeners.append(metrics.on_disruption)
    watch.phone_listeners.append(lambda room_id, therapist, callee: metrics.on_phone())

    def audit_hub_event(event: HubEvent) -> None:
        if isinstance(event, MemberEvent) and event.kind in ("admitted", "removed"):
            kind = AuditEvent.PARTICIPANT_ADMITTED if event.kind == "admitted" else AuditEvent.PARTICIPANT_REMOVED
            audit.append(kind, room_id=event.room_id, person_id=event.person_id, actor="therapist")

    sig.event_sinks.append(audit_hub_event)

    # Quality history: recorded for every live room, read by the dashboard (through
    # app[LIVE]), saved for restarts by the keeper. A hub event reaches the watch before
    # this sink (Signaling delivers to the watch first): the flow settles first.
    history = QualityHistory(store, watch.relayed)
    watch.quality_listeners.append(history.on_quality)
    sig.event_sinks.append(history.on_hub_event)
    app[LIVE] = LiveRooms(hub, watch, history)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    def readiness_problems() -> list[str]:
        problems = []
        try:
            store.check_writable()
            key = key_problem(store.db, store.cipher, config.key_path)
        except Exception:  # noqa: BLE001 (any failure to write is the answer, not a crash)
            problems.append("store not writable")
        else:
            if key is not None:
                problems.append(key)
        if time.monotonic() - sig.last_tick > READY_STALE_SECONDS:
            problems.append("background loop stale")
        return problems

    async def readyz(request: web.Request) -> web.Response:
        problems = readiness_problems()
        return web.json_response({"status": "not ready" if problems else "ready", "problems": problems},
                                 status=503 if problems else 200)

    app.router.add_get("/ws", websocket_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", main_port_handler(metrics, metrics_token))
    if metrics_side is not None:
        app.cleanup_ctx.append(metrics_listener(metrics, *metrics_side))
    routes.setup(app)
    if ops_dashboard:
        ops.setup(app)
    # Live rooms come back from disk before the server answers anyone (docs/scaling.md).
    sessions = LiveSessions(store.db)
    keeper = sig.keeper = SessionKeeper(sessions, hub, watch, history, clock)
    sig.event_sinks.append(keeper.on_hub_event)
    keeper.restore(store)
    if config.ops_webhook_url:
        ops.send_webhooks(app, OpsWebhooks(config.ops_webhook_url, config.ops_webhook_secret or ""))

    async def purge_loop() -> None:
        while True:
            try:
                retention.purge(store, audit, older_than=config.retention_seconds, now=clock(), actor="server")
            except Exception:
                log.exception("retention purge failed")
            await asyncio.sleep(config.purge_interval_seconds)

    async def alive_loop() -> None:
        # After a crash, the last of these says when the server went away (the ledger's
        # "server restart" starts there): at most ALIVE_EVERY_SECONDS off.
        while True:
            try:
                sessions.alive(clock())
            except Exception:
                log.exception("heartbeat to the store failed")
            await asyncio.sleep(ALIVE_EVERY_SECONDS)

    def flush_refusals() -> None:
        try:
            refusals.flush()
        except Exception:
            log.exception("writing the summary of refused attempts failed")

    async def refusal_loop() -> None:
        while True:
            await asyncio.sleep(config.refusal_summary_seconds)
            flush_refusals()

    async def background(app: web.Application) -> AsyncIterator[None]:
        # While we run, no key rotation may swap the key we hold in memory.
        with key_in_use(config.key_path):
            tasks = [asyncio.create_task(expire_loop(sig)), asyncio.create_task(liveness_loop(sig)),
                     asyncio.create_task(purge_loop()), asyncio.create_task(alive_loop()),
                     asyncio.create_task(refusal_loop()),
                     asyncio.create_task(mail.run())]
            yield
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def on_shutdown(app: web.Application) -> None:
        # Tell every participant to resume once we are back; give the writers a moment.
        sig.deliver(sig.hub.close_all(clock()))
        deadline = time.monotonic() + 2.0
        while sig.sockets and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        keeper.flush()
        sessions.alive(clock(), stopping=True)

    async def on_cleanup(app: web.Application) -> None:
        keeper.flush()
        flush_refusals()
        store.close()
        server_lock.release()

    app.cleanup_ctx.append(background)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return app
