"""A periodic background thread: the server's singleton duties (rollout controller, TUF
refresh, telemetry retention, OTA broadcast sessions) each run one of these."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)


class Periodic:
    """Calls ``step()`` every ``interval`` seconds on a daemon thread until :meth:`stop`.

    ``run_first``: step at once on start (else after the first interval). :meth:`wake`
    runs the next step now. An exception in ``errors`` is logged and the loop goes on;
    anything else is a bug and ends the thread loudly.
    """

    def __init__(
        self,
        name: str,
        interval: Callable[[], float] | float,
        step: Callable[[], object],
        *,
        errors: tuple[type[BaseException], ...] = (),
        run_first: bool = True,
    ) -> None:
        self.name = name
        self._interval = interval
        self._step = step
        self._errors = errors
        self._run_first = run_first
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def interval(self) -> float:
        return float(self._interval() if callable(self._interval) else self._interval)

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def wake(self) -> None:
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def stop_event(self) -> threading.Event:
        """Set when :meth:`stop` is called (for a step that waits on something)."""
        return self._stop

    def _run(self) -> None:
        if not self._run_first:
            self._wait()
        while not self._stop.is_set():
            try:
                self._step()
            except self._errors as exc:
                logger.warning("%s: step failed, retrying next interval: %s", self.name, exc)
            self._wait()

    def _wait(self) -> None:
        self._wake.wait(self.interval)
        self._wake.clear()
