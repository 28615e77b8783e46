"""When the server stops the loop for a full garbage collection outside its hourly pass."""

from __future__ import annotations

from telehealth.server import CONNECTION_ALLOWANCE, reclaim_due

MIB = 1024 * 1024
IDLE = 85 * MIB


def test_filling_up_with_participants_is_no_reason() -> None:
    # 9,000 participants take about 25 KiB each: a fourfold growth the connections explain.
    assert not reclaim_due(IDLE + 9000 * 25 * 1024 + 10 * MIB, IDLE, 9000, None)


def test_growth_no_connection_explains_is() -> None:
    # Everyone left, yet the process holds far more than when it was idle.
    assert reclaim_due(3 * IDLE, IDLE, 0, None)
    assert reclaim_due(IDLE + 300 * MIB, IDLE, 100, None)


def test_memory_kept_after_a_pass_does_not_trigger_pass_after_pass() -> None:
    after = 3 * IDLE  # freed memory need not go back to the system
    assert not reclaim_due(after, IDLE, 0, after)
    assert not reclaim_due(after + 10 * MIB, IDLE, 0, after)
    assert reclaim_due(2 * after + MIB, IDLE, 0, after)


def test_unknown_sizes_never_trigger() -> None:
    assert not reclaim_due(None, IDLE, 0, None)
    assert not reclaim_due(10 * IDLE, None, 0, None)
    assert CONNECTION_ALLOWANCE >= 4 * 25 * 1024  # several times what a connection takes
