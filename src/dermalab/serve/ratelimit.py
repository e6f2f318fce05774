"""Abuse limits: sign-in attempts and uploads per account and per client address, with the
``limits`` library's moving window. Exceeded -> 429 with ``Retry-After`` in seconds.

Counts live in memory by default, which is right for ``dermalab serve`` (one process). Several
servers behind one address would each count on their own, multiplying the limit: give them a
shared storage URI (``--rate-storage redis://host:6379``, any scheme ``limits`` supports)."""

from __future__ import annotations

import math
import time

from fastapi import HTTPException
from limits import RateLimitItem, parse
from limits.errors import ConfigurationError
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from dermalab.core.errors import DermalabError


class RateLimits:
    """Named limits (e.g. ``signin: 10/minute``) checked against any number of keys."""

    def __init__(self, storage: str = "memory://", **rules: str) -> None:
        try:
            self.storage = storage_from_string(storage)
        except ConfigurationError as exc:
            raise DermalabError(f"rate-limit storage {storage!r}: {exc}") from None
        self.limiter = MovingWindowRateLimiter(self.storage)
        self.items: dict[str, RateLimitItem] = {}
        for kind, rule in rules.items():
            try:
                self.items[kind] = parse(rule)
            except ValueError:
                raise DermalabError(f"rate limit for {kind}: {rule!r} is not a rate such as "
                                    f"'10/minute' or '100/hour'") from None

    def check(self, kind: str, *keys: str) -> None:
        """429 if any key is already at its limit, without counting an event."""
        item = self.items[kind]
        for key in keys:
            if not self.limiter.test(item, kind, key):
                reset, _ = self.limiter.get_window_stats(item, kind, key)
                wait = max(1, math.ceil(reset - time.time()))
                raise HTTPException(429, f"too many {kind} attempts; try again in {wait} s",
                                    headers={"Retry-After": str(wait)})

    def count(self, kind: str, *keys: str) -> None:
        """Count one event for every key, without refusing (see :meth:`check`)."""
        item = self.items[kind]
        for key in keys:
            self.limiter.hit(item, kind, key)

    def hit(self, kind: str, *keys: str) -> None:
        """Count one event for every key; 429 if any key is over its limit."""
        item = self.items[kind]
        for key in keys:
            if not self.limiter.hit(item, kind, key):
                reset, _ = self.limiter.get_window_stats(item, kind, key)
                wait = max(1, math.ceil(reset - time.time()))
                raise HTTPException(429, f"too many {kind} attempts; try again in {wait} s",
                                    headers={"Retry-After": str(wait)})
