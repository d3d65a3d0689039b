"""Activation (DESIGN §6): staged → testing → swap → trial → committed, and revert.

The state file's ``active`` pointer changes only after the new engine passed testing
and its slot file is complete, so an agent killed at any point restarts on a whole
engine: the old one (pointer not yet written) or the new one (written after testing).
During ``trial`` every agent start bumps a crash-loop counter in ``state.json``; past
:data:`MAX_TRIAL_BOOTS` the agent reverts to known-good.  :meth:`Activator.revert` is
the hook the watchdog (issue 5) calls.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from edge_agent.engine import Engine, EngineSlot, check_engine, latency_budget_ms, load_engine
from edge_agent.enginebuild import EngineCache
from edge_agent.errors import ActivationError
from edge_agent.runtime import BackendFactory
from edge_agent.slots import SlotStore
from edge_agent.state import AgentState, StateStore, TrialRecord
from jetfleet.messages import EventType, SlotStatus

logger = logging.getLogger(__name__)

MAX_TRIAL_BOOTS = 3
KEEP_SLOT_RECORDS = 16

Emit = Callable[..., None]


class Activator:
    def __init__(
        self,
        *,
        state: AgentState,
        store: StateStore,
        slots: SlotStore,
        engines: EngineSlot,
        factory: BackendFactory,
        threads: int,
        bake_s: float,
        clock: Callable[[], float],
        emit: Emit,
        on_change: Callable[[], None],
        latency_budget: float | None = None,
        max_trial_boots: int = MAX_TRIAL_BOOTS,
        engine_cache: EngineCache | None = None,
    ) -> None:
        self.state = state
        self.store = store
        self.slots = slots
        self.engines = engines
        self.factory = factory
        self.threads = threads
        self.bake_s = bake_s
        self.clock = clock
        self.emit = emit
        self.on_change = on_change
        self.latency_budget = latency_budget
        self.max_trial_boots = max_trial_boots
        # backend tensorrt: packages load through the on-device engine cache (DESIGN §4)
        self.engine_cache = engine_cache

    # -- boot ----------------------------------------------------------------------
    def boot(self) -> None:
        """Load the engine the state file points at (or known-good after a crash loop)."""
        st = self.state
        st.boots += 1
        trial = st.trial
        if trial is not None and trial.sha256 == st.active_sha256:
            trial.boots += 1
            self._save()
            if trial.boots > self.max_trial_boots:
                self.revert(f"crash loop: {trial.boots} agent starts during trial")
                return
        else:
            self._save()
        if st.active_sha256 is None:
            logger.info("no active release yet; waiting for an assignment")
            return
        try:
            engine = self._load(st.active_sha256, st.active_release)
        except ActivationError as exc:
            logger.error("active release %s does not load: %s", st.active_release, exc)
            if not self.revert(f"active engine does not load: {exc}"):
                self.emit(EventType.ACTIVATION_FAILED, sha256=st.active_sha256,
                          release=st.active_release, message=str(exc))
            return
        self.engines.swap(engine)
        logger.info("serving %s (%s)", st.active_release, st.active_sha256[:12])
        good = st.known_good_sha256
        if st.trial is not None and good is not None and good != st.active_sha256:
            try:  # keep known-good loaded so a revert is a pointer swap
                self.engines.set_standby(self._load(good, st.known_good_release))
            except ActivationError as exc:
                logger.warning("known-good %s cannot be kept loaded: %s",
                               st.known_good_release, exc)

    # -- activation ------------------------------------------------------------------
    def activate(self, sha256: str, release: str | None, sequence: int | None = None,
                 *, engine_sha256: str | None = None) -> bool:
        """Test a complete slot beside the running engine, swap, and start its trial.

        ``engine_sha256``: a downloaded, server-assigned TensorRT plan (a complete slot)
        offered to the engine cache; it is still golden-checked and may be refused."""
        st = self.state
        path = self.slots.package_path(sha256)
        ev: dict[str, Any] = {"sha256": sha256, "release": release, "sequence": sequence}
        if path is None:
            return self._fail(sha256, release, "slot has no complete package", ev)
        self._set(sha256, SlotStatus.STAGED, release=release, sequence=sequence)
        self.emit(EventType.STAGED, **ev)
        self._set(sha256, SlotStatus.TESTING, release=release)
        self.emit(EventType.TESTING, **ev)
        try:
            engine = self._load(sha256, release, engine_sha256)
        except ActivationError as exc:
            return self._fail(sha256, release, str(exc), ev)
        try:
            budget = self.latency_budget or latency_budget_ms(engine.card)
            check = check_engine(engine, budget)
        except ActivationError as exc:
            engine.close()
            return self._fail(sha256, release, str(exc), ev)
        # Testing passed and the slot file is complete: now the pointer may move.
        previous = st.trial.sha256 if st.trial is not None else None
        if previous and previous not in (sha256, st.known_good_sha256):
            st.slots.pop(previous, None)  # superseded before it was committed
        st.active_sha256, st.active_release = sha256, release
        st.trial = TrialRecord(sha256=sha256, release=release, started_at=self.clock())
        st.set_slot(sha256, SlotStatus.TRIAL, now=self.clock(), release=release)
        self._save()
        current = self.engines.current
        if current is not None and current.sha256 == st.known_good_sha256:
            self.engines.set_standby(current)  # known-good stays loaded during the trial
        self.engines.swap(engine)
        self.emit(EventType.TRIAL, **ev, data={
            "golden_max_error": check.golden_max_error,
            "latency_ms": round(check.latency_ms, 3), "budget_ms": check.budget_ms,
            "bake_s": self.bake_s,
        }, message=f"serving {release}; trial for {self.bake_s:g}s")
        self.on_change()
        return True

    def tick(self) -> bool:
        """Commit the trial engine once its bake period is over; True if it committed."""
        trial = self.state.trial
        if trial is None or self.clock() - trial.started_at < self.bake_s:
            return False
        self.commit()
        return True

    def commit(self) -> None:
        st = self.state
        trial = st.trial
        if trial is None:
            return
        st.known_good_sha256, st.known_good_release = trial.sha256, trial.release
        st.trial = None
        st.set_slot(trial.sha256, SlotStatus.COMMITTED, now=self.clock(), release=trial.release)
        self._prune_records()
        self._save()
        self.engines.set_standby(None)  # the old known-good is not needed any more
        self._prune_engines()
        record = st.slots.get(trial.sha256)
        self.emit(EventType.COMMITTED, sha256=trial.sha256, release=trial.release,
                  sequence=record.sequence if record is not None else None,
                  message=f"{trial.release} is known-good")
        self.on_change()

    # -- revert (the self-heal hook) ---------------------------------------------------
    def revert(self, reason: str) -> bool:
        """Serve known-good again; the reverted release is never retried on its own."""
        st = self.state
        bad_sha, bad_release = st.active_sha256, st.active_release
        good_sha, good_release = st.known_good_sha256, st.known_good_release
        if good_sha is None or good_sha == bad_sha:
            logger.warning("cannot revert (%s): no other known-good engine", reason)
            self.emit(EventType.SELF_HEAL, sha256=bad_sha, release=bad_release,
                      message=f"revert not possible: {reason}", data={"action": "revert",
                                                                      "done": False})
            return False
        engine = self.engines.standby
        if engine is None or engine.sha256 != good_sha or engine.closed:
            try:
                engine = self._load(good_sha, good_release)
            except ActivationError as exc:
                logger.error("known-good %s does not load either: %s", good_release, exc)
                return False
        bad_record = st.slots.get(bad_sha) if bad_sha is not None else None
        bad_sequence = bad_record.sequence if bad_record is not None else None
        if bad_sha is not None:
            if bad_sha not in st.reverted:
                st.reverted.append(bad_sha)
            st.set_slot(bad_sha, SlotStatus.REVERTED, now=self.clock(), reason=reason)
        st.active_sha256, st.active_release = good_sha, good_release
        st.trial = None
        self._save()
        self.engines.swap(engine)
        self._prune_engines()
        self.emit(EventType.REVERTED, sha256=bad_sha, release=bad_release, message=reason,
                  sequence=bad_sequence,
                  data={"to_release": good_release, "to_sha256": good_sha})
        self.on_change()
        return True

    def reload(self, reason: str | None = "operator command") -> bool:
        """Load the active engine again (``restart-runtime``); ``reason`` None: the caller
        (the watchdog) reports the restart itself."""
        st = self.state
        if st.active_sha256 is None:
            return False
        try:
            engine = self._load(st.active_sha256, st.active_release)
        except ActivationError as exc:
            logger.error("reloading %s failed: %s", st.active_release, exc)
            return self.revert(f"runtime restart failed: {exc}")
        self.engines.swap(engine)
        if reason is not None:
            self.emit(EventType.SELF_HEAL, sha256=st.active_sha256, release=st.active_release,
                      message=f"runtime restarted: {reason}",
                      data={"action": "restart", "reason": reason})
        return True

    # -- helpers -----------------------------------------------------------------------
    def _load(self, sha256: str, release: str | None, engine_sha256: str | None = None) -> Engine:
        path = self.slots.package_path(sha256)
        if path is None:
            raise ActivationError(f"no complete package for {sha256[:12]} on disk")
        if self.engine_cache is None:
            return load_engine(path, sha256, release, self.factory, self.threads)
        assigned = None
        plan_path = self.slots.package_path(engine_sha256) if engine_sha256 else None
        if plan_path is not None:
            try:
                assigned = plan_path.read_bytes()
            except OSError as exc:
                logger.warning("assigned engine %s unreadable: %s", engine_sha256, exc)
        return self.engine_cache.load_package_engine(path, sha256, release, assigned=assigned)

    def _prune_engines(self) -> None:
        """Drop cached engines of packages that are neither active nor known-good."""
        cache, st = self.engine_cache, self.state
        if cache is None:
            return
        wanted = [s for s in (st.active_sha256, st.known_good_sha256) if s is not None]
        keep = {cache.onnx_of[s] for s in wanted if s in cache.onnx_of}
        if len(keep) < len({cache.onnx_of.get(s, s) for s in wanted}):
            return  # an engine this process has not loaded: keep everything
        removed = cache.prune(keep)
        if removed:
            logger.info("pruned %d cached engine(s)", len(removed))

    def _set(self, sha256: str, status: SlotStatus, **kw: Any) -> None:
        self.state.set_slot(sha256, status, now=self.clock(), **kw)
        self._save()
        self.on_change()

    def _fail(self, sha256: str, release: str | None, reason: str, ev: dict[str, Any]) -> bool:
        logger.warning("activation of %s failed: %s", release, reason)
        self.state.set_slot(sha256, SlotStatus.FAILED, now=self.clock(), release=release,
                            reason=reason[:500])
        self._save()
        self.emit(EventType.ACTIVATION_FAILED, **ev, message=reason)
        self.on_change()
        return False

    def _prune_records(self) -> None:
        st = self.state
        keep = {st.active_sha256, st.known_good_sha256}
        others = sorted((r for s, r in st.slots.items() if s not in keep),
                        key=lambda r: r.updated_at, reverse=True)
        for record in others[KEEP_SLOT_RECORDS:]:
            st.slots.pop(record.sha256, None)

    def _save(self) -> None:
        self.store.save(self.state)
