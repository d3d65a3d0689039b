"""The OTA download manager (docs/PROTOCOL.md "OTA"): windows of block requests,
frames written to a :class:`~edge_agent.slots.Slot`, re-requests on timeout or bad
digest, resume from the bitmap, and a stall deadline.

:class:`Download` is driven by the agent's main loop and talks to the network only
through the ``send`` callable it is given, so it is tested without a broker.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum

from edge_agent.errors import SlotError, TransferError
from edge_agent.slots import Slot
from jetfleet.frames import BlockFrame
from jetfleet.messages import DesiredAssignment, FetchRequest

logger = logging.getLogger(__name__)

MAX_BLOCKS_PER_REQUEST = 256
STALL_TIMEOUTS = 60  # fetch timeouts without a new block → the transfer has stalled


class Outcome(str, Enum):
    RUNNING = "running"
    COMPLETE = "complete"
    FAILED = "failed"


@dataclass
class TransferCounters:
    bytes_received: int = 0  # every payload byte that arrived for this artifact
    bytes_duplicate: int = 0  # payload bytes of blocks that were already verified
    bytes_rerequested: int = 0  # bytes asked for again (timeout, bad digest, restart)
    blocks_rerequested: int = 0
    hash_mismatches: int = 0
    requests_sent: int = 0
    resumed_blocks: int = 0  # blocks found verified on disk when the transfer (re)started


def to_ranges(indices: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted indices → ``[start, end)`` ranges."""
    ranges: list[tuple[int, int]] = []
    for i in sorted(indices):
        if ranges and ranges[-1][1] == i:
            ranges[-1] = (ranges[-1][0], i + 1)
        else:
            ranges.append((i, i + 1))
    return ranges


class Download:
    """One artifact transfer. ``send`` publishes a FetchRequest (returns False if offline)."""

    def __init__(
        self,
        assignment: DesiredAssignment,
        slot: Slot,
        send: Callable[[FetchRequest], bool],
        *,
        window: int = 32,
        timeout_s: float = 5.0,
        deadline_s: float | None = None,
    ) -> None:
        self.assignment = assignment
        self.slot = slot
        self.sha256 = assignment.sha256
        self._send = send
        self.window = max(1, min(window, MAX_BLOCKS_PER_REQUEST))
        self.timeout_s = timeout_s
        self.deadline_s = deadline_s  # whole transfer, from start(); None = no deadline
        self._started = 0.0
        self.counters = TransferCounters()
        self.outstanding: dict[int, float] = {}  # block index → when requested
        self._requested_once: set[int] = set()
        self._cursor = 0
        self._last_progress = 0.0
        self._last_unsolicited = float("-inf")  # last fresh block we did not ask for
        self.resumed = False
        self._clean_retry_used = False
        self.outcome = Outcome.RUNNING
        self.error: str | None = None

    # -- control -------------------------------------------------------------------
    def start(self, now: float) -> None:
        """Open the slot and ask for the first window of missing blocks."""
        already = self.slot.open()
        self.counters.resumed_blocks = already
        self.resumed = already > 0
        self._last_progress = now
        self._started = now
        if self.slot.done:
            self._finish()
            return
        self._fill(now)

    def pause(self) -> None:
        """Disconnected: nothing outstanding any more (the broker may have lost it)."""
        self.outstanding.clear()

    def resume(self, now: float) -> None:
        """Reconnected: ask again for missing blocks only."""
        self.outstanding.clear()
        self._cursor = 0
        self._last_progress = now
        self._fill(now)

    def close(self) -> None:
        self.slot.close()

    @property
    def progress(self) -> float:
        return self.slot.verified_count / self.slot.block_count

    # -- events --------------------------------------------------------------------
    def on_frame(self, frame: BlockFrame, now: float, *, broadcast: bool = False) -> Outcome:
        """A frame that passed its digest check (``broadcast``: from ``a/{sha}/blocks``)."""
        if self.outcome is not Outcome.RUNNING:
            return self.outcome
        if frame.count != self.slot.block_count:
            raise TransferError(
                f"frame says {frame.count} blocks, assignment has {self.slot.block_count}"
            )
        self.counters.bytes_received += len(frame.payload)
        solicited = self.outstanding.pop(frame.index, None) is not None and not broadcast
        try:
            fresh = self.slot.write_block(frame.index, frame.offset, frame.payload, now=now)
        except SlotError as exc:
            if isinstance(exc, TransferError):
                raise
            return self._fail(str(exc))
        if not fresh:
            self.counters.bytes_duplicate += len(frame.payload)
            return self.outcome
        self._last_progress = now
        if not solicited:
            # A broadcast (a/{sha}/blocks) is streaming blocks we did not ask for: the
            # transfer is moving, so outstanding requests are not late, and asking for
            # more now would only duplicate what the broadcast is about to deliver.
            self._last_unsolicited = now
            for index in self.outstanding:
                self.outstanding[index] = now
        if self.slot.done:
            return self._finish()
        if not self._streaming(now) and len(self.outstanding) <= self.window // 2:
            self._fill(now)
        return self.outcome

    def _streaming(self, now: float) -> bool:
        return now - self._last_unsolicited < self.timeout_s

    def on_bad_block(self, index: int, now: float) -> None:
        """A frame of this artifact failed its digest: ask for the block again."""
        self.counters.hash_mismatches += 1
        if 0 <= index < self.slot.block_count and not self.slot.has(index):
            self.outstanding.pop(index, None)
            self._request([index], now)

    def tick(self, now: float) -> Outcome:
        """Re-request blocks not received within the timeout; fail a stalled transfer."""
        if self.outcome is not Outcome.RUNNING:
            return self.outcome
        late = [i for i, sent in self.outstanding.items() if now - sent >= self.timeout_s]
        if late:
            logger.info("%s: %d blocks not received in %.1fs; asking again",
                        self.sha256[:12], len(late), self.timeout_s)
            self._request(late, now)
        elif not self.outstanding and not self._streaming(now):
            self._fill(now)
        if self.deadline_s is not None and now - self._started > self.deadline_s:
            return self._fail(
                f"transfer deadline of {self.deadline_s:.0f}s exceeded with "
                f"{self.slot.verified_count}/{self.slot.block_count} blocks"
            )
        if now - self._last_progress > self.timeout_s * STALL_TIMEOUTS:
            return self._fail(
                f"transfer stalled: no new block for {now - self._last_progress:.0f}s"
            )
        return self.outcome

    # -- internals -------------------------------------------------------------------
    def _fill(self, now: float) -> None:
        room = self.window - len(self.outstanding)
        if room <= 0:
            return
        wanted: list[int] = []
        count = self.slot.block_count
        cursor = self._cursor
        for step in range(count):  # scan from a cursor so a fill is not O(blocks)
            i = (self._cursor + step) % count
            if not self.slot.has(i) and i not in self.outstanding:
                wanted.append(i)
                if len(wanted) >= room:
                    cursor = (i + 1) % count
                    break
        if wanted and self._request(wanted, now):
            self._cursor = cursor

    def _request(self, indices: list[int], now: float) -> bool:
        if not indices:
            return True
        for i in indices:
            if i in self._requested_once:
                self.counters.blocks_rerequested += 1
                self.counters.bytes_rerequested += self.slot.block_length(i)
        ranges = to_ranges(indices)
        for start in range(0, len(ranges), MAX_BLOCKS_PER_REQUEST):
            request = FetchRequest(
                device_id=self.assignment.device_id,
                sha256=self.sha256,
                ranges=ranges[start : start + MAX_BLOCKS_PER_REQUEST],
            )
            if not self._send(request):
                return False
            self.counters.requests_sent += 1
        for i in indices:
            self.outstanding[i] = now
            self._requested_once.add(i)
        return True

    def _finish(self) -> Outcome:
        try:
            self.slot.finalize()
        except TransferError as exc:
            if self.resumed and not self._clean_retry_used:
                # The bitmap came from disk (maybe a power cut wrote a bit before its
                # block): download everything once more before giving up.
                logger.warning("%s: %s after resume; downloading again from scratch",
                               self.sha256[:12], exc)
                self._clean_retry_used = True
                self.resumed = False
                self.slot.reset()
                self.outstanding.clear()
                self._fill(self._last_progress)
                return self.outcome
            return self._fail(str(exc))
        except (SlotError, OSError) as exc:
            return self._fail(str(exc))
        self.outcome = Outcome.COMPLETE
        return self.outcome

    def _fail(self, reason: str) -> Outcome:
        self.outcome = Outcome.FAILED
        self.error = reason
        self.outstanding.clear()
        self.slot.close()
        logger.warning("download of %s failed: %s", self.sha256[:12], reason)
        return self.outcome
