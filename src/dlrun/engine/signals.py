"""Stopping on a signal without losing anything: SIGINT/SIGTERM end the current step, then checkpoint."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def preemption_signal() -> int | None:
    """The signal a cluster tool sends before it pre-empts or times out a job (submitit's default: SIGUSR2)."""
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), None)


class Interrupted(Exception):
    """Training stopped on a signal after writing a checkpoint: the run can be resumed."""

    def __init__(self, signum: int, where: str) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name} {where}")
        self.signum = signum
        self.exit_code = 128 + signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


class StopOnSignal:
    """While active, SIGINT/SIGTERM set `signum` for the loop to see; a second one exits at once.

    Under a cluster tool that handles the pre-emption signal itself (submitit requeues the job), that signal
    is caught too, and handed back to the tool once the checkpoint is written (see cli.py).
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread
            return self
        wanted = [signal.SIGINT]
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):  # submitit ignores SIGTERM on purpose
            wanted.append(signal.SIGTERM)
        preempt = preemption_signal()
        if preempt is not None and callable(signal.getsignal(preempt)):
            wanted.append(preempt)
        for signum in wanted:
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
