"""A token bucket for the local API's admission rate, with a throttle factor.

``rate_rps=None`` admits everything until a throttle is set; a throttle without a
configured rate applies to ``fallback_rps`` (the watchdog passes the observed rate).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class TokenBucket:
    def __init__(
        self,
        rate_rps: float | None,
        burst: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base_rps = rate_rps
        self.base_burst = burst
        self._clock = clock
        self._lock = threading.Lock()
        self._rate: float | None = rate_rps
        self._burst = float(burst if burst is not None else _default_burst(rate_rps))
        self._tokens = self._burst
        self._last = clock()
        self.factor = 1.0

    @property
    def rate_rps(self) -> float | None:
        return self._rate

    def try_acquire(self) -> bool:
        """Take one token now; ``False`` (never blocks) when the bucket is empty."""
        with self._lock:
            if self._rate is None:
                return True
            now = self._clock()
            self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
            self._last = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False

    def throttle(self, factor: float, fallback_rps: float) -> None:
        """Admit ``factor`` times the configured rate (or ``fallback_rps``)."""
        with self._lock:
            base = self.base_rps if self.base_rps is not None else max(fallback_rps, 1.0)
            self.factor = factor
            self._rate = max(base * factor, 0.1)
            burst = self.base_burst if self.base_burst is not None else _default_burst(base)
            self._burst = max(1.0, burst * factor)
            self._tokens = min(self._tokens, self._burst)
            self._last = self._clock()

    def restore(self) -> None:
        with self._lock:
            self.factor = 1.0
            self._rate = self.base_rps
            self._burst = float(
                self.base_burst if self.base_burst is not None else _default_burst(self.base_rps)
            )
            self._last = self._clock()


def _default_burst(rate_rps: float | None) -> int:
    return max(1, int(rate_rps)) if rate_rps is not None else 1
