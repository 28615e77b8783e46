"""What each person's ``welcome`` carries besides the room: fresh ICE servers and their own
fallback plan, put on the wire here (the plan itself is decided in fallback/notices.py)."""

from __future__ import annotations

from fallback.notices import Plan, fallback_plan
from signaling import protocol as p
from signaling.hub import WelcomeExtras
from signaling.ice import ice_servers_for
from telehealth.config import Config
from telehealth.model import Person, RoomRecord


def wire_plan(plan: Plan) -> p.FallbackPlan:
    return p.FallbackPlan(rejoin_window_s=plan.rejoin_window_s, phone_hint=plan.phone_hint,
                          call_list=plan.call_list)


def welcome_extras(config: Config) -> WelcomeExtras:
    """The hub's ``extras``: fresh TURN credentials on every (re)join, each person's own plan."""

    def extras(record: RoomRecord, person: Person, now: float) -> tuple[list[p.IceServer], p.FallbackPlan]:
        return (ice_servers_for(config, person.id, now),
                wire_plan(fallback_plan(record, person, config.rejoin_window_seconds)))

    return extras
