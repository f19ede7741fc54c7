"""Stopping on a signal without losing anything: SIGINT/SIGTERM end the current step, then checkpoint."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """Training stopped on a signal after writing a checkpoint: the run can be resumed."""

    def __init__(self, signum: int, where: str) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name} {where}")
        self.signum = signum
        self.exit_code = 128 + signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


class StopOnSignal:
    """While active, SIGINT/SIGTERM set `signum` for the loop to see; a second one exits at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        # os.write, not print: a handler may interrupt a print, and buffered writers are not re-entrant.
        if self.signum is not None:
            os.write(2, b"\nSecond interrupt: exiting now. The last checkpoint is intact (it is only ever "
                        b"replaced whole).\n")
            os._exit(128 + signum)
        self.signum = signum
        os.write(2, f"\n{signal.Signals(signum).name}: finishing this step, then writing a checkpoint "
                    f"(interrupt again to exit at once).\n".encode())
