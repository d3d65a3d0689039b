"""Run the tegrastats tool as a subprocess and keep its latest parsed sample."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from typing import IO

from jetson.errors import TegrastatsError
from jetson.tegrastats import TegrastatsSample, parse_line

log = logging.getLogger(__name__)

DEFAULT_TEGRASTATS = "/usr/bin/tegrastats"


class TegrastatsReader:
    """Runs ``tegrastats --interval N`` and keeps the latest parsed sample.

    A reader thread reads the tool's stdout line by line. Lines with no recognised
    field (e.g. an error message on stderr, which is merged in) are logged, not
    kept. When the tool exits, it is restarted after an exponential backoff
    (``backoff_s`` doubling up to ``max_backoff_s``); after ``max_restarts``
    consecutive runs that produced no sample the reader stops and says why in
    :attr:`stop_reason`. :meth:`stop` terminates the tool (SIGTERM to its process
    group, wait, then SIGKILL).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = DEFAULT_TEGRASTATS,
        interval_ms: int = 1000,
        *,
        max_restarts: int = 5,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        stop_timeout_s: float = 5.0,
    ) -> None:
        if interval_ms <= 0:
            raise TegrastatsError(f"interval_ms must be positive, got {interval_ms}")
        self.path = os.fspath(path)
        self.interval_ms = interval_ms
        self.max_restarts = max_restarts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.stop_timeout_s = stop_timeout_s
        self._lock = threading.Condition()
        self._stopping = threading.Event()
        self._latest: TegrastatsSample | None = None
        self._latest_at: float | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None
        self._stop_reason: str | None = None
        self._exit_reason = ""
        self.samples = 0
        self.restarts = 0

    @staticmethod
    def available(path: str | os.PathLike[str] = DEFAULT_TEGRASTATS) -> bool:
        """True when ``path`` is an executable file."""
        return os.path.isfile(path) and os.access(path, os.X_OK)

    @property
    def command(self) -> list[str]:
        return [self.path, "--interval", str(self.interval_ms)]

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def stop_reason(self) -> str | None:
        """Why the reader stopped (kept exiting, or stop() was called); None while it runs."""
        return self._stop_reason

    def start(self) -> TegrastatsReader:
        """Start the tool and the reader thread. Raises TegrastatsError if it cannot run."""
        if self._thread is not None:
            raise TegrastatsError("this tegrastats reader was already started")
        if not self.available(self.path):
            raise TegrastatsError(f"tegrastats not found or not executable at {self.path}")
        self._thread = threading.Thread(target=self._run, name="tegrastats", daemon=True)
        self._thread.start()
        return self

    def latest(self) -> TegrastatsSample | None:
        with self._lock:
            return self._latest

    def age_s(self) -> float | None:
        """Seconds since the latest sample was read; None before the first."""
        with self._lock:
            return None if self._latest_at is None else time.monotonic() - self._latest_at

    def wait_for_sample(self, timeout: float) -> TegrastatsSample | None:
        """Block until a sample exists (or ``timeout`` seconds pass, or the reader stops)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._latest is None and self.running:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._lock.wait(min(left, 0.1))
            return self._latest

    def stop(self) -> None:
        """Stop the reader and terminate the tool: SIGTERM, wait, SIGKILL. Idempotent."""
        if not self._stopping.is_set() and self._stop_reason is None:
            self._stop_reason = "stopped by stop()"
        self._stopping.set()
        with self._lock:
            proc = self._proc
        if proc is not None:
            self._terminate(proc)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(2 * self.stop_timeout_s + 1.0)

    def __enter__(self) -> TegrastatsReader:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- reader thread --

    def _run(self) -> None:
        failures = 0
        delay = self.backoff_s
        while not self._stopping.is_set():
            got = self._run_once()
            if self._stopping.is_set():
                break
            failures = 0 if got else failures + 1
            if got:
                delay = self.backoff_s
            if failures > self.max_restarts:
                self._give_up(f"{self._exit_reason}; gave up after {failures} runs without output")
                break
            log.warning("%s; restarting in %.1fs", self._exit_reason, delay)
            self.restarts += 1
            if self._stopping.wait(delay):
                break
            delay = min(delay * 2, self.max_backoff_s)
        with self._lock:
            self._lock.notify_all()

    def _run_once(self) -> bool:
        """Run the tool until it exits; True if it produced at least one sample."""
        try:
            proc = subprocess.Popen(
                self.command,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                errors="replace",
                bufsize=1,
                start_new_session=True,
            )
        except OSError as exc:
            self._exit_reason = f"cannot start {self.path}: {exc}"
            return False
        with self._lock:
            self._proc = proc
        if self._stopping.is_set():  # stop() ran before _proc was visible to it
            self._terminate(proc)
        got = False
        last_other = ""
        stdout: IO[str] | None = proc.stdout
        assert stdout is not None
        with stdout:
            for line in stdout:
                sample = parse_line(line)
                if not sample.recognised:
                    last_other = line.strip()[:200]
                    log.debug("tegrastats printed a line without known fields: %r", last_other)
                    continue
                got = True
                with self._lock:
                    self._latest = sample
                    self._latest_at = time.monotonic()
                    self.samples += 1
                    self._lock.notify_all()
        rc = proc.wait()
        with self._lock:
            self._proc = None
        detail = f" (last output: {last_other!r})" if last_other else ""
        self._exit_reason = f"{self.path} exited with code {rc}{detail}"
        return got

    def _give_up(self, reason: str) -> None:
        self._stop_reason = reason
        log.error("tegrastats reader stopped: %s", reason)

    def _terminate(self, proc: subprocess.Popen[str]) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if proc.poll() is not None:
                return
            try:
                os.killpg(proc.pid, sig)  # its own session: children (and the pipe) go too
            except (ProcessLookupError, PermissionError):
                return
            try:
                proc.wait(self.stop_timeout_s)
                return
            except subprocess.TimeoutExpired:
                log.warning("tegrastats (pid %s) ignored %s", proc.pid, sig.name)
