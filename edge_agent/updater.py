"""Assignments, commands and the OTA pipeline (docs/PROTOCOL.md "OTA" steps 2-6).

:class:`Updater` decides what to do with a ``desired`` assignment (sequence rules, the
reverted list), drives the :class:`~edge_agent.ota.Download`, and hands a verified slot
to the :class:`~edge_agent.activation.Activator`.  It runs on the agent's main loop and
reaches the network only through the callables it is given.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from edge_agent.activation import Activator, Emit
from edge_agent.errors import SlotError, TransferError, TrustRefused
from edge_agent.inbound import InboundValidator
from edge_agent.ota import Download, Outcome
from edge_agent.slots import SlotStore
from edge_agent.state import AgentState, StateStore
from edge_agent.trust import DeviceTrust
from jetfleet import topics
from jetfleet.errors import MqttError
from jetfleet.frames import BlockFrame
from jetfleet.messages import (
    Command,
    DesiredAssignment,
    EngineRef,
    EventType,
    FetchRequest,
    SlotStatus,
)

logger = logging.getLogger(__name__)

PROGRESS_EVENT_STEP = 0.25


class Updater:
    def __init__(
        self,
        *,
        device_id: str,
        state: AgentState,
        store: StateStore,
        slots: SlotStore,
        activator: Activator,
        validator: InboundValidator,
        emit: Emit,
        clock: Callable[[], float],
        changed: Callable[[], None],
        is_connected: Callable[[], bool],
        publish: Callable[[str, bytes], Any],
        subscribe: Callable[[str], None],
        unsubscribe: Callable[[str], None],
        window: int,
        timeout_s: float,
        deadline_floor_s: float = 300.0,
        min_rate_bytes_s: float = 32 * 1024,
        trust: DeviceTrust | None = None,
        engine_key: str | None = None,
    ) -> None:
        self.device_id = device_id
        self.state = state
        self.store = store
        self.slots = slots
        self.activator = activator
        self.validator = validator
        self.emit = emit
        self.clock = clock
        self.changed = changed
        self.is_connected = is_connected
        self.publish = publish
        self.subscribe = subscribe
        self.unsubscribe = unsubscribe
        self.window = window
        self.timeout_s = timeout_s
        self.deadline_floor_s = deadline_floor_s
        self.min_rate_bytes_s = min_rate_bytes_s
        self.download: Download | None = None
        self.ota_totals: dict[str, int] = {}
        self.frames_ignored = 0
        self._progress_mark = 0.0
        self.trust = trust
        # backend tensorrt: this device's profile; an assignment's engine for it is fetched
        self.engine_key = engine_key
        self._engine_for: DesiredAssignment | None = None  # while its engine downloads
        self._deferred: tuple[DesiredAssignment, bytes] | None = None  # waits for TUF
        if trust is None:
            logger.warning("trust is not configured: unsigned assignments, commands and "
                           "packages are accepted")

    # -- connection and ticks --------------------------------------------------------------
    def on_connected(self, connected: bool) -> None:
        if self.download is None:
            return
        if connected:
            self.download.resume(time.monotonic())
        else:
            self.download.pause()

    def tick(self) -> None:
        if self.download is not None and self.is_connected():
            self.after_download(self.download.tick(time.monotonic()))

    def on_bad_block(self, sha256: str, index: int) -> None:
        if self.download is not None and sha256 == self.download.sha256:
            self.download.on_bad_block(index, time.monotonic())

    def progress(self, sha256: str) -> float | None:
        if self.download is not None and self.download.sha256 == sha256:
            return round(self.download.progress, 4)
        return None

    def totals(self) -> dict[str, int]:
        """OTA counters over this agent's life (finished transfers plus the current one)."""
        totals = dict(self.ota_totals)
        if self.download is not None:
            for key, value in vars(self.download.counters).items():
                totals[key] = totals.get(key, 0) + value
        return totals

    def close(self) -> None:
        if self.download is not None:
            self.download.slot.sync()
            self.download.close()

    # -- assignments -------------------------------------------------------------------------
    def _refuse(self, exc: TrustRefused, a: DesiredAssignment | None = None,
                **data: Any) -> None:
        logger.warning("refused by trust checks: %s", exc)
        ev: dict[str, Any] = ({"sha256": a.sha256, "release": a.release, "sequence": a.sequence}
                              if a is not None else {})
        self.emit(EventType.REJECTED, **ev, message=str(exc)[:500],
                  data={"reason": exc.reason, **data})

    def on_tuf(self, role: str, payload: bytes) -> None:
        """TUF metadata from ``tuf/{role}``; an assignment waiting for it is tried again."""
        if self.trust is None:
            return
        try:
            self.trust.on_metadata(role, payload)
            if role == "timestamp":  # the last of a release: check it now, not at the next use
                self.trust.refresh()
        except TrustRefused as exc:
            if exc.reason != "tuf_metadata_missing":  # the rest of a release is on its way
                self._refuse(exc, role=role)
                return
        if self._deferred is not None:
            assignment, raw = self._deferred
            self._deferred = None
            self.on_desired(assignment, raw)

    def on_desired(self, assignment: DesiredAssignment, raw: bytes) -> None:
        if self.trust is not None:
            try:
                self.trust.check_signed(assignment, raw)
            except TrustRefused as exc:
                self._refuse(exc, assignment)
                return
        st = self.state
        last = st.assignment_sequence
        if last is not None and assignment.sequence <= last:
            if assignment.sequence == last and self._same_as_accepted(assignment):
                return  # retained re-delivery of what we already handle
            why = ("reuses sequence %d with different content" if assignment.sequence == last
                   else "sequence %d is older than the accepted %d")
            text = why % ((assignment.sequence,) if assignment.sequence == last
                          else (assignment.sequence, last))
            logger.warning("refused assignment for %s: %s", assignment.release, text)
            self.emit(EventType.REJECTED, sha256=assignment.sha256, release=assignment.release,
                      sequence=assignment.sequence, message=f"assignment refused: {text}")
            return
        if self.trust is not None:
            try:
                self.trust.check_assignment(assignment)
            except TrustRefused as exc:
                waiting = exc.reason in ("tuf_metadata_missing", "target_unknown")
                if waiting:  # metadata may still be on its way: try again when it arrives
                    self._deferred = (assignment, raw)
                self._refuse(exc, assignment, deferred=waiting)
                return
        self._deferred = None
        st.assignment_sequence = assignment.sequence
        st.assignment_raw = raw.decode()
        self.store.save(st)
        logger.info("accepted assignment %d: %s (%s)", assignment.sequence, assignment.release,
                    assignment.sha256[:12])
        self._pursue(assignment, new=True)

    def _same_as_accepted(self, assignment: DesiredAssignment) -> bool:
        try:
            stored = DesiredAssignment.model_validate_json(self.state.assignment_raw or "")
        except ValidationError:
            return False
        return stored.to_bytes() == assignment.to_bytes()

    def resume_assignment(self, retry_failed: bool = False) -> None:
        """At boot (and on ``resync``): carry on with the accepted assignment."""
        raw = self.state.assignment_raw
        if not raw:
            return
        try:
            assignment = DesiredAssignment.model_validate_json(raw)
        except ValidationError as exc:
            logger.error("stored assignment is unreadable (%s); waiting for a new one", exc)
            return
        self._pursue(assignment, new=False, retry_failed=retry_failed)

    def _pursue(self, a: DesiredAssignment, *, new: bool, retry_failed: bool = False) -> None:
        st = self.state
        mine = {a.sha256, a.engine.sha256 if a.engine is not None else None}
        if self.download is not None and self.download.sha256 not in mine:
            self.end_download()
        if a.sha256 == st.active_sha256:
            if new:  # tell the server this assignment is satisfied, under its sequence
                on_trial = st.trial is not None and st.trial.sha256 == a.sha256
                st.set_slot(a.sha256, SlotStatus.TRIAL if on_trial else SlotStatus.COMMITTED,
                            now=self.clock(), release=a.release, sequence=a.sequence)
                self.store.save(st)
                self.emit(EventType.TRIAL if on_trial else EventType.COMMITTED,
                          sha256=a.sha256, release=a.release, sequence=a.sequence,
                          message=f"{a.release} is already running")
            self.changed()
            return
        if a.sha256 in st.reverted:
            if not new:
                return
            st.reverted.remove(a.sha256)  # a new assignment asks for it again
        record = st.slots.get(a.sha256)
        if record is not None and record.status is SlotStatus.FAILED and not (new or retry_failed):
            return
        if self.slots.package_path(a.sha256) is not None:
            self._activate(a)
        elif self.download is None:
            self._start_download(a)

    def on_command(self, cmd: Command, raw: bytes | None = None) -> None:
        if self.trust is not None:
            try:
                self.trust.check_signed(cmd, raw if raw is not None else cmd.to_bytes())
            except TrustRefused as exc:
                self._refuse(exc, sequence=cmd.sequence, command=cmd.command)
                return
        st = self.state
        if cmd.sequence <= st.command_sequence:
            self.emit(EventType.REJECTED, sequence=cmd.sequence,
                      message=f"command {cmd.command} refused: sequence {cmd.sequence} is not "
                      f"newer than {st.command_sequence}")
            return
        st.command_sequence = cmd.sequence
        self.store.save(st)
        logger.info("command %s (sequence %d)", cmd.command, cmd.sequence)
        if cmd.command == "rollback":
            self.activator.revert("operator rollback")
        elif cmd.command == "restart-runtime":
            self.activator.reload()
        elif cmd.command == "resync":
            self.changed()
            self.resume_assignment(retry_failed=True)

    # -- OTA -------------------------------------------------------------------------------
    def _start_download(self, a: DesiredAssignment, *, engine: EngineRef | None = None) -> None:
        """Fetch the package, or (``engine``) the assignment's TensorRT plan beside it."""
        if engine is not None:
            self._engine_for = a
            a = a.model_copy(update={"sha256": engine.sha256, "length": engine.length,
                                     "target": engine.target})
        slot = self.slots.slot(a.sha256, a.length, a.block_size)
        dl = Download(a, slot, self._send_fetch, window=self.window,
                      timeout_s=self.timeout_s,
                      deadline_s=self.deadline_floor_s + a.length / self.min_rate_bytes_s)
        self.download = dl
        self._progress_mark = 0.0
        if engine is None:
            self.state.set_slot(a.sha256, SlotStatus.DOWNLOADING, now=self.clock(),
                                release=a.release, sequence=a.sequence)
            self.store.save(self.state)
        self.subscribe(topics.artifact_blocks(a.sha256))
        try:
            dl.start(time.monotonic())
        except SlotError as exc:
            dl.outcome, dl.error = Outcome.FAILED, str(exc)
        ev: dict[str, Any] = {"sha256": a.sha256, "release": a.release, "sequence": a.sequence}
        if dl.resumed:
            self.emit(EventType.OTA_RESUMED, **ev, data={
                "verified_blocks": dl.counters.resumed_blocks, "blocks": slot.block_count})
        else:
            self.emit(EventType.OTA_STARTED, **ev, data={"length": a.length,
                                                          "blocks": slot.block_count})
        self.after_download(dl.outcome)

    def _send_fetch(self, request: FetchRequest) -> bool:
        if not self.is_connected():
            return False
        try:
            self.publish(topics.fetch(self.device_id), request.to_bytes())
        except MqttError as exc:
            logger.warning("fetch request not sent: %s", exc)
            return False
        return True

    def on_frame(self, frame: BlockFrame, *, broadcast: bool = False) -> None:
        dl = self.download
        if dl is None or frame.sha256 != dl.sha256:
            self.frames_ignored += 1  # a late frame of a finished or other transfer
            return
        try:
            outcome = dl.on_frame(frame, time.monotonic(), broadcast=broadcast)
        except TransferError as exc:
            self.validator.reject("blocks", "bad_frame", str(exc))
            return
        if dl.progress - self._progress_mark >= PROGRESS_EVENT_STEP and outcome is Outcome.RUNNING:
            self._progress_mark = dl.progress
            self.changed()
            self.emit(EventType.OTA_PROGRESS, sha256=dl.sha256, release=dl.assignment.release,
                      data={"progress": round(dl.progress, 3), **vars(dl.counters)})
        self.after_download(outcome)

    def after_download(self, outcome: Outcome) -> None:
        dl = self.download
        if dl is None or outcome is Outcome.RUNNING:
            return
        a = dl.assignment
        ev: dict[str, Any] = {"sha256": a.sha256, "release": a.release, "sequence": a.sequence}
        counters = dict(vars(dl.counters))
        self.end_download()
        owner, self._engine_for = self._engine_for, None
        if owner is not None:  # the engine beside a package: without it, build here
            ev = {"sha256": owner.sha256, "release": owner.release, "sequence": owner.sequence}
            if outcome is Outcome.FAILED:
                self.emit(EventType.ENGINE_REFUSED, **ev, message=f"engine download failed: "
                          f"{dl.error}; building on the device", data={"plan_sha256": a.sha256})
            self._activate(owner, engine_tried=True)
            return
        if outcome is Outcome.FAILED:
            self.state.set_slot(a.sha256, SlotStatus.FAILED, now=self.clock(),
                                reason=(dl.error or "download failed")[:500])
            self.store.save(self.state)
            self.emit(EventType.OTA_FAILED, **ev, message=dl.error or "", data=counters)
            self.cleanup_slots()
            return
        self.emit(EventType.OTA_VERIFIED, **ev, data=counters)
        self._activate(a)

    def end_download(self) -> None:
        dl = self.download
        if dl is None:
            return
        for key, value in vars(dl.counters).items():
            self.ota_totals[key] = self.ota_totals.get(key, 0) + value
        dl.close()
        self.unsubscribe(topics.artifact_blocks(dl.sha256))
        self.download = None
        self.changed()

    def _wanted_engine(self, a: DesiredAssignment) -> EngineRef | None:
        """The assignment's engine if it is for this device's profile (else refused)."""
        e = a.engine
        if e is None or self.engine_key is None:
            return None
        if e.engine_key != self.engine_key:
            self.emit(EventType.ENGINE_REFUSED, sha256=a.sha256, release=a.release,
                      sequence=a.sequence, message=f"assigned engine is for {e.engine_key}, "
                      f"this device is {self.engine_key}; building on the device",
                      data={"plan_sha256": e.sha256, "engine_key": e.engine_key})
            return None
        if self.trust is not None:
            path = self.slots.package_path(e.sha256)
            try:
                if path is not None:  # the director signature binds sha256/length too
                    self.trust.verify_file(a.model_copy(update={"target": e.target}), path)
                else:
                    self.trust.target(e.target)
            except TrustRefused as exc:
                self._refuse(exc, a, plan_sha256=e.sha256)
                return None
        return e

    def _activate(self, a: DesiredAssignment, *, engine_tried: bool = False) -> None:
        engine = self._wanted_engine(a)
        if engine is not None and self.slots.package_path(engine.sha256) is None:
            if engine_tried:
                engine = None
            elif self.download is None:
                self._start_download(a, engine=engine)
                return
            else:
                return  # its download is running
        path = self.slots.package_path(a.sha256)
        if self.trust is not None and path is not None:
            try:
                self.trust.verify_file(a, path)
            except TrustRefused as exc:  # never staged: the known-good engine keeps serving
                self.state.set_slot(a.sha256, SlotStatus.FAILED, now=self.clock(),
                                    reason=str(exc)[:500])
                self.store.save(self.state)
                self._refuse(exc, a)
                self.cleanup_slots()
                return
        self.activator.activate(a.sha256, a.release, a.sequence,
                                engine_sha256=engine.sha256 if engine is not None else None)
        self.cleanup_slots()

    def cleanup_slots(self) -> None:
        st = self.state
        keep = {st.active_sha256, st.known_good_sha256}
        if self.download is not None:
            keep.add(self.download.sha256)
        self.slots.cleanup(keep)
