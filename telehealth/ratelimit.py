"""Token-bucket rate limits keyed by a string (a hashed address, a link hash, a login name).

Pure: no I/O, no clock of its own; callers pass ``now`` (seconds, any monotonic origin).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Each key starts with ``capacity`` tokens; an attempt spends one; tokens come back at
    ``refill_per_second`` up to ``capacity``.

    Memory stays bounded. A key idle long enough to be full again is forgotten, since a full
    bucket and no bucket behave the same, so only keys that spent tokens recently are held.
    Beyond ``max_keys`` the least recently used key is dropped and starts full next time: a
    flood of distinct keys softens the limit for the oldest ones rather than growing memory.
    """

    def __init__(self, capacity: int, refill_per_second: float, *, max_keys: int = 10_000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        if refill_per_second <= 0:
            raise ValueError("refill_per_second must be positive")
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.capacity = capacity
        self.refill_per_second = refill_per_second
        self.max_keys = max_keys
        # Ordered by last update, oldest first, so idle keys are found at the front.
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def allow(self, key: str, now: float) -> bool:
        """Spend a token for ``key`` if one is there; False means refuse the attempt."""
        self._forget_idle(now)
        tokens = self._tokens(key, now)
        allowed = tokens >= 1.0
        self._buckets[key] = _Bucket(tokens - 1.0 if allowed else tokens, now)
        self._buckets.move_to_end(key)
        if len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return allowed

    def retry_after(self, key: str, now: float) -> float:
        """Seconds until ``key`` has a token again; 0.0 if it has one now."""
        missing = 1.0 - self._tokens(key, now)
        return max(0.0, missing / self.refill_per_second)

    def __len__(self) -> int:
        return len(self._buckets)

    def _tokens(self, key: str, now: float) -> float:
        bucket = self._buckets.get(key)
        if bucket is None:
            return float(self.capacity)
        # A clock that steps back must not drain a bucket.
        elapsed = max(0.0, now - bucket.updated)
        return min(float(self.capacity), bucket.tokens + elapsed * self.refill_per_second)

    def _forget_idle(self, now: float) -> None:
        while self._buckets:
            key, bucket = next(iter(self._buckets.items()))
            if bucket.tokens + (now - bucket.updated) * self.refill_per_second < self.capacity:
                return
            del self._buckets[key]


class LinkOpenLimits:
    """How often join links may be opened. Per client address only failed attempts count (a
    link that does not work: someone guessing), so a clinic's shared address is never slowed
    by its own sessions; per link every attempt counts (a link that leaked). The page and the
    signaling join share them; a reconnecting partner's few attempts never come near."""

    def __init__(self, *, failures_per_address: int = 20, per_link: int = 20, per_seconds: float = 60.0) -> None:
        self.failures = RateLimiter(failures_per_address, failures_per_address / per_seconds)
        self.by_link = RateLimiter(per_link, per_link / per_seconds)

    def check(self, address: str, link_hash: str, now: float) -> float | None:
        """None when this attempt may go ahead; else the seconds to wait before retrying."""
        wait = self.failures.retry_after(address, now)
        if wait > 0:
            return wait
        if not self.by_link.allow(link_hash, now):
            return self.by_link.retry_after(link_hash, now)
        return None

    def failed(self, address: str, now: float) -> None:
        """An attempt from ``address`` used a link that does not work."""
        self.failures.allow(address, now)


class LoginLimits:
    """How often staff sign-ins may fail, without letting a stranger lock anyone out.

    Two budgets of failed attempts, both keyed on the client's address (behind a proxy, the
    address TELEHEALTH_TRUSTED_PROXIES finds):

    - per address, ``per_address`` failures, then one every ``per_seconds / per_address``:
      one client guessing across many accounts;
    - per account and address, ``per_account`` failures, then one every
      ``per_seconds / per_account``: one client guessing one account.

    There is no budget per account alone: it would let anyone who knows a therapist's
    username keep them out of their own session (the old five-failures lock did). A guesser
    is slowed where they are, and the account stays open from every other address, as
    Auth0's brute-force protection blocks the user and address pair rather than the user.
    The account is keyed by the name as typed (trimmed, lower case), known or not, so a
    limited unknown name answers exactly as a limited real one.
    """

    def __init__(self, *, per_address: int = 10, per_account: int = 5, per_seconds: float = 60.0) -> None:
        self.by_address = RateLimiter(per_address, per_address / per_seconds)
        self.by_account = RateLimiter(per_account, per_account / per_seconds)

    @staticmethod
    def _pair(address: str, username: str) -> str:
        return f"{username.strip().lower()}\n{address}"

    def check(self, address: str, username: str, now: float) -> float | None:
        """None when this attempt may go ahead; else the seconds to wait before retrying."""
        wait = max(self.by_address.retry_after(address, now),
                   self.by_account.retry_after(self._pair(address, username), now))
        return wait if wait > 0 else None

    def failed(self, address: str, username: str, now: float) -> None:
        self.by_address.allow(address, now)
        self.by_account.allow(self._pair(address, username), now)
