"""RateLimiter: token buckets per key, with bounded memory."""

from __future__ import annotations

import pytest

from telehealth.ratelimit import RateLimiter


def test_a_burst_up_to_capacity_passes_then_the_next_attempt_waits_for_a_refill() -> None:
    limiter = RateLimiter(capacity=3, refill_per_second=1.0)
    assert [limiter.allow("addr", 0.0) for _ in range(4)] == [True, True, True, False]
    assert limiter.retry_after("addr", 0.0) == pytest.approx(1.0)
    assert limiter.retry_after("addr", 0.4) == pytest.approx(0.6)
    assert limiter.allow("addr", 0.5) is False
    assert limiter.allow("addr", 1.0) is True
    assert limiter.allow("addr", 1.0) is False


@pytest.mark.parametrize(
    ("refill", "spent_at", "asked_at", "expected"),
    [
        (1.0, 0.0, 0.0, 1.0),
        (0.5, 0.0, 0.0, 2.0),
        (0.5, 0.0, 1.5, 0.5),
        (2.0, 10.0, 10.25, 0.25),
        (1.0, 0.0, 5.0, 0.0),
    ],
)
def test_retry_after_says_how_long_until_the_next_token(
    refill: float, spent_at: float, asked_at: float, expected: float
) -> None:
    limiter = RateLimiter(capacity=1, refill_per_second=refill)
    assert limiter.allow("k", spent_at)
    assert limiter.retry_after("k", asked_at) == pytest.approx(expected)


def test_refused_attempts_do_not_push_the_next_token_further_away() -> None:
    limiter = RateLimiter(capacity=1, refill_per_second=1.0)
    assert limiter.allow("link", 0.0)
    for t in (0.1, 0.2, 0.5, 0.9):
        assert not limiter.allow("link", t)
    assert limiter.allow("link", 1.0)


def test_retry_after_only_looks() -> None:
    limiter = RateLimiter(capacity=1, refill_per_second=1.0)
    assert limiter.retry_after("fresh", 0.0) == 0.0
    assert limiter.retry_after("fresh", 0.0) == 0.0
    assert limiter.allow("fresh", 0.0)
    assert len(limiter) == 1


def test_keys_are_independent() -> None:
    limiter = RateLimiter(capacity=1, refill_per_second=0.1)
    assert limiter.allow("a", 0.0)
    assert not limiter.allow("a", 0.0)
    assert limiter.allow("b", 0.0)


def test_a_clock_stepping_back_does_not_drain_or_fill_a_bucket() -> None:
    limiter = RateLimiter(capacity=2, refill_per_second=1.0)
    assert limiter.allow("k", 100.0)
    assert limiter.allow("k", 50.0)
    assert not limiter.allow("k", 50.0)
    assert limiter.allow("k", 51.0)


def test_idle_keys_are_forgotten_once_their_bucket_would_be_full() -> None:
    limiter = RateLimiter(capacity=5, refill_per_second=1.0)
    for i in range(100):
        limiter.allow(f"addr-{i}", 0.0)
    assert len(limiter) == 100
    limiter.allow("late", 0.5)  # the hundred have 4.5 of 5 tokens: still held
    assert len(limiter) == 101
    limiter.allow("later", 1.2)
    assert len(limiter) == 2  # the hundred are full again and gone; "late" is not yet full


def test_memory_is_capped_under_a_flood_of_distinct_keys() -> None:
    limiter = RateLimiter(capacity=1, refill_per_second=0.001, max_keys=50)
    assert limiter.allow("victim", 0.0)
    assert not limiter.allow("victim", 0.0)
    for i in range(10_000):
        limiter.allow(f"flood-{i}", 0.0)
    assert len(limiter) == 50
    # The documented price: the least recently used key was dropped and starts full.
    assert limiter.allow("victim", 0.0)


@pytest.mark.parametrize(
    ("capacity", "refill", "max_keys"), [(0, 1.0, 10), (1, 0.0, 10), (1, -1.0, 10), (1, 1.0, 0)]
)
def test_nonsense_settings_are_refused(capacity: int, refill: float, max_keys: int) -> None:
    with pytest.raises(ValueError):
        RateLimiter(capacity, refill, max_keys=max_keys)


def test_link_opening_counts_failures_per_address_and_every_attempt_per_link() -> None:
    from telehealth.ratelimit import LinkOpenLimits

    limits = LinkOpenLimits(failures_per_address=3, per_link=5, per_seconds=60)
    # Good links from one address are never slowed by the address limit.
    assert all(limits.check("10.0.0.1", f"link{i}", 0.0) is None for i in range(50))
    for _ in range(3):
        assert limits.check("10.0.0.1", "bad", 1.0) is None
        limits.failed("10.0.0.1", 1.0)
    assert limits.check("10.0.0.1", "good", 1.0) == pytest.approx(20.0)
    assert limits.check("10.0.0.2", "good", 1.0) is None  # another address is unaffected
    # One link opened over and over (leaked) is limited whatever the address.
    assert [limits.check(f"10.1.0.{i}", "leaked", 2.0) is None for i in range(6)] == [True] * 5 + [False]
