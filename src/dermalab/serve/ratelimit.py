"""Abuse limits: sign-in attempts and uploads per account and per client address, with the
``limits`` library's moving window (in memory: one process). Exceeded -> 429 with
``Retry-After`` in seconds."""

from __future__ import annotations

import math
import time

from fastapi import HTTPException
from limits import RateLimitItem, parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter


class RateLimits:
    """Named limits (e.g. ``signin: 10/minute``) checked against any number of keys."""

    def __init__(self, **rules: str) -> None:
        self.storage = MemoryStorage()
        self.limiter = MovingWindowRateLimiter(self.storage)
        self.items: dict[str, RateLimitItem] = {k: parse(v) for k, v in rules.items()}

    def hit(self, kind: str, *keys: str) -> None:
        """Count one event for every key; 429 if any key is over its limit."""
        item = self.items[kind]
        for key in keys:
            if not self.limiter.hit(item, kind, key):
                reset, _ = self.limiter.get_window_stats(item, kind, key)
                wait = max(1, math.ceil(reset - time.time()))
                raise HTTPException(429, f"too many {kind} attempts; try again in {wait} s",
                                    headers={"Retry-After": str(wait)})
