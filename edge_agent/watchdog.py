"""The self-heal watchdog (DESIGN §6, issue 5): declarative rules over request outcomes.

:class:`RequestLog` records every inference outcome (engine sha256, latency, ok / error /
crash) from :class:`~edge_agent.engine.InferenceService`.  :class:`Watchdog` runs on the
agent's main loop every ``interval_s`` and applies the rules of
:mod:`edge_agent.rules`:

* during a trial, ``revert`` rules (error rate, p95 latency vs the known-good baseline)
  call :meth:`Activator.revert` — a pointer swap to the known-good engine kept loaded;
* ``runtime_crash``: a :class:`~edge_agent.errors.RuntimeCrashed` since the last tick
  reloads the engine, at most ``max_restarts`` times in ``within_s``; past that a trial
  reverts, and the known-good engine waits for the window to free a restart;
* ``gpu_temp_c``: throttle the token bucket while over the limit, restore after.

Crashes are counted by the crash rule only, not as errors of the error-rate rule.
Every action emits ``selfheal.action``, is recorded in ``state.json`` and marks the
state for publishing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edge_agent.activation import Activator
from edge_agent.errors import BackendError, RuntimeCrashed
from edge_agent.ratelimit import TokenBucket
from edge_agent.rules import OPS, CrashRule, GpuTempRule, RequestRule, WatchdogConfig
from edge_agent.telemetry import GpuProvider, percentile
from jetfleet.messages import EventType

logger = logging.getLogger(__name__)

LOG_MAX = 50_000
BASELINE_MAX = 2_000
RESTARTS_KEPT = 32

OK, ERROR, CRASH = 0, 1, 2


@dataclass(frozen=True)
class Window:
    ok: int
    errors: int
    crashes: int
    latencies: list[float]


class RequestLog:
    """Thread-safe ring of ``(monotonic time, sha256, latency_ms, kind)``."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, maxlen: int = LOG_MAX) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: deque[tuple[float, str, float, int]] = deque(maxlen=maxlen)
        self.crashes: dict[str, int] = {}  # per engine sha256

    def record(self, sha256: str, latency_ms: float, error: BackendError | None) -> None:
        kind = OK if error is None else CRASH if isinstance(error, RuntimeCrashed) else ERROR
        with self._lock:
            self._entries.append((self._clock(), sha256, latency_ms, kind))
            if kind == CRASH:
                self.crashes[sha256] = self.crashes.get(sha256, 0) + 1

    def window(self, sha256: str, since: float) -> Window:
        ok = errors = crashes = 0
        latencies: list[float] = []
        with self._lock:
            entries = list(self._entries)
        for t, sha, latency, kind in reversed(entries):
            if t < since:
                break
            if sha != sha256:
                continue
            if kind == OK:
                ok += 1
                latencies.append(latency)
            elif kind == ERROR:
                errors += 1
            else:
                crashes += 1
        return Window(ok, errors, crashes, latencies)

    def baseline_p95(self, sha256: str, limit: int = BASELINE_MAX) -> tuple[float | None, int]:
        """p95 of the last ``limit`` successful requests of ``sha256``, and their count."""
        values: list[float] = []
        with self._lock:
            entries = list(self._entries)
        for _t, sha, latency, kind in reversed(entries):
            if sha == sha256 and kind == OK:
                values.append(latency)
                if len(values) >= limit:
                    break
        return percentile(sorted(values), 95), len(values)

    def rate(self, since: float) -> float:
        now = self._clock()
        with self._lock:
            n = sum(1 for e in self._entries if e[0] >= since)
        return n / max(now - since, 1e-3)


class Watchdog:
    """See the module docstring.  Call :meth:`tick` from the main loop."""

    def __init__(
        self,
        config: WatchdogConfig,
        *,
        activator: Activator,
        log: RequestLog,
        limiter: TokenBucket | None,
        gpu: GpuProvider | None,
        emit: Callable[..., None],
        on_change: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.activator = activator
        self.log = log
        self.limiter = limiter
        self.gpu = gpu
        self.emit = emit
        self.on_change = on_change
        self.clock = clock
        self._next = 0.0
        self._crashes_seen: dict[str, int] = {}
        self._trial_key: tuple[str, float] | None = None
        self._trial_since = 0.0
        self._baseline: float | None = None
        self._hot_since: float | None = None
        self._gave_up = False
        self.trips = 0
        self.reverts = 0
        self.restarts = 0
        self.throttled = False
        self.last_revert_ms: float | None = None

    # -- the loop -------------------------------------------------------------------------
    def tick(self, force: bool = False) -> None:
        now = self.clock()
        if not self.config.enabled or (not force and now < self._next):
            return
        self._next = now + self.config.interval_s
        self._track_trial()
        for rule in self.config.rules:
            if isinstance(rule, CrashRule):
                self._check_crash(rule, now)
            elif isinstance(rule, RequestRule):
                self._check_requests(rule, now)
            else:
                self._check_gpu(rule, now)

    def _track_trial(self) -> None:
        """At the start of a trial, fix the baseline: known-good's p95 before the swap."""
        trial = self.activator.state.trial
        key = (trial.sha256, trial.started_at) if trial is not None else None
        if key == self._trial_key:
            return
        self._trial_key = key
        self._trial_since = self.clock()  # only this trial's requests count, not a former one's
        sha = trial.sha256 if trial is not None else None
        self._baseline = None
        good = self.activator.state.known_good_sha256
        if sha is not None and good is not None:
            self._baseline, n = self.log.baseline_p95(good)
            logger.info("trial of %s: baseline p95 %s ms over %d requests", sha[:12],
                        self._baseline, n)

    # -- rules ----------------------------------------------------------------------------
    def _check_requests(self, rule: RequestRule, now: float) -> None:
        st = self.activator.state
        if st.trial is None or st.trial.sha256 != st.active_sha256:
            return  # revert rules apply to a trial only: known-good has nothing to revert to
        win = self.log.window(st.trial.sha256, max(now - rule.window_s, self._trial_since))
        total = win.ok + win.errors
        if total < rule.min_requests:
            return
        if rule.metric == "error_rate":
            value = win.errors / total
            numbers: dict[str, Any] = {"errors": win.errors, "requests": total}
        else:
            p95 = percentile(sorted(win.latencies), 95)
            if p95 is None or len(win.latencies) < rule.min_requests or not self._baseline:
                return
            value = p95 / self._baseline
            numbers = {"p95_ms": round(p95, 4), "baseline_p95_ms": round(self._baseline, 4),
                       "requests": len(win.latencies)}
        if OPS[rule.op](value, rule.threshold):
            self._revert(rule, value, numbers)

    def _check_crash(self, rule: CrashRule, now: float) -> None:
        st = self.activator.state
        sha = st.active_sha256
        if sha is None:
            return
        crashes = self.log.crashes.get(sha, 0)  # a retired engine's late crashes do not count
        seen = self._crashes_seen.get(sha, 0)
        if crashes == seen:
            return
        heal = st.selfheal
        wall = self.activator.clock()  # restarts are kept in state.json: wall-clock times
        recent = [t for t in heal.restarts if t >= wall - rule.within_s]
        numbers = {"crashes": crashes - seen, "restarts_in_window": len(recent),
                   "max_restarts": rule.max_restarts, "within_s": rule.within_s}
        in_trial = st.trial is not None and st.trial.sha256 == st.active_sha256
        if len(recent) < rule.max_restarts:
            self._crashes_seen[sha] = crashes
            self._gave_up = False
            heal.restarts = [*recent, wall][-RESTARTS_KEPT:]
            self.restarts += 1
            self._action(rule, "restart", float(len(recent) + 1), numbers)
            self.activator.reload(reason=None)
        elif in_trial:
            self._crashes_seen[sha] = crashes
            self._revert(rule, float(len(recent)), numbers)
        elif not self._gave_up:  # known-good: nothing to revert to; wait for the window
            self._gave_up = True
            self._action(rule, "restart_limit", float(len(recent)), numbers)

    def _check_gpu(self, rule: GpuTempRule, now: float) -> None:
        if self.gpu is None or self.limiter is None:
            return
        try:
            sample = self.gpu.read()
        except Exception as exc:  # a provider bug must not stop the watchdog
            logger.warning("GPU provider failed: %s", exc)
            return
        temp = sample.temp_c if sample is not None else None
        if temp is None:
            return
        if OPS[rule.op](temp, rule.threshold):
            if self._hot_since is None:
                self._hot_since = now
            if not self.throttled and now - self._hot_since >= rule.window_s:
                observed = self.log.rate(now - rule.window_s)
                self.limiter.throttle(rule.throttle_factor, observed)
                self.throttled = True
                self._action(rule, "throttle", temp, {"rate_rps": self.limiter.rate_rps})
        else:
            self._hot_since = None
            if self.throttled:
                self.limiter.restore()
                self.throttled = False
                self._action(rule, "unthrottle", temp, {"rate_rps": self.limiter.rate_rps})

    # -- actions ----------------------------------------------------------------------------
    def _revert(self, rule: RequestRule | CrashRule, value: float, numbers: dict[str, Any]) -> None:
        start = time.perf_counter()
        reason = f"watchdog: {rule.name()} (value {value:.4g})"
        self._action(rule, "revert", value, numbers)
        if self.activator.revert(reason):
            self.reverts += 1
            self.last_revert_ms = (time.perf_counter() - start) * 1000.0
            logger.warning("%s; reverted in %.1f ms", reason, self.last_revert_ms)

    def _action(self, rule: RequestRule | CrashRule | GpuTempRule, action: str, value: float,
                numbers: dict[str, Any]) -> None:
        st = self.activator.state
        self.trips += 1
        st.selfheal.trips += 1
        st.selfheal.last_action = action
        st.selfheal.last_rule = rule.name()
        st.selfheal.throttled = self.throttled
        self.activator.store.save(st)
        data = {"rule": rule.name(), "metric": rule.metric, "action": action,
                "value": round(value, 6), **numbers}
        threshold = getattr(rule, "threshold", None)
        if threshold is not None:
            data["threshold"] = threshold
        self.emit(EventType.SELF_HEAL, sha256=st.active_sha256, release=st.active_release,
                  message=f"{action}: {rule.name()} (value {value:.4g})", data=data)
        self.on_change()
