"""Where the seconds of one dl-run process go, phase by phase: `trainer.profile=true` prints them (issue #21).

The clock runs in every process (two clock reads a phase); only the table is opt-in. Phases nest: a phase
entered inside another is its part, and a phase entered again (a checkpoint each epoch) adds up its calls.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class Phase:
    """The seconds one named stretch of work took, over all its calls."""

    name: str
    depth: int
    calls: int = 0
    wall: float = 0.0
    cpu: float = 0.0  # this process's CPU seconds, all its threads


def process_wall_seconds() -> float | None:
    """Wall seconds since this process started (Linux: its start time in /proc), None where that cannot be read."""
    try:
        with open("/proc/self/stat") as stat:
            # The command name may hold spaces: the fields after its closing parenthesis are plain numbers.
            fields = stat.read().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of the whole line: ticks since boot
        return time.clock_gettime(time.CLOCK_BOOTTIME) - started
    except (OSError, ValueError, IndexError, AttributeError):
        return None


class PhaseClock:
    """Wall and CPU seconds per named phase of this process, in the order the phases first began."""

    def __init__(self) -> None:
        self.phases: dict[str, Phase] = {}
        self._open: list[str] = []
        self._mark: tuple[float, float] | None = None

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block as `name`, a part of whichever phase is open around it."""
        entry = self.phases.setdefault(name, Phase(name, len(self._open)))
        self._open.append(name)
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            entry.calls += 1
            entry.wall += time.perf_counter() - wall
            entry.cpu += time.process_time() - cpu
            self._open.pop()

    def mark(self) -> None:
        """Note the time now: `since_mark` turns what follows into a phase (work done inside another library)."""
        self._mark = (time.perf_counter(), time.process_time())

    def since_mark(self, name: str) -> None:
        """The seconds since `mark()` as a top-level phase; nothing when no mark is pending."""
        mark, self._mark = self._mark, None
        if mark is not None:
            self.add(name, time.perf_counter() - mark[0], time.process_time() - mark[1])

    def since_start_of_module(self, name: str) -> None:
        """The seconds since this module was imported, as a top-level phase: the imports that follow it."""
        self.add(name, time.perf_counter() - _imported[0], time.process_time() - _imported[1])

    def add(self, name: str, wall: float, cpu: float) -> None:
        """A phase measured some other way (the time before the clock existed), at the top level."""
        entry = self.phases.setdefault(name, Phase(name, 0))
        entry.calls += 1
        entry.wall += wall
        entry.cpu += cpu

    def rows(self) -> list[dict]:
        """The phases, then what the top-level phases leave unaccounted, then the whole process so far."""
        total_wall, total_cpu = process_wall_seconds(), time.process_time()
        rows = [{"phase": p.name, "depth": p.depth, "calls": p.calls, "wall": p.wall, "cpu": p.cpu}
                for p in self.phases.values()]
        top = [p for p in self.phases.values() if p.depth == 0]
        if total_wall is not None:
            rows.append({"phase": "other (between the phases above)", "depth": 0, "calls": None,
                         "wall": total_wall - sum(p.wall for p in top), "cpu": total_cpu - sum(p.cpu for p in top)})
        rows.append({"phase": "whole process so far", "depth": 0, "calls": None, "wall": total_wall,
                     "cpu": total_cpu})
        return rows


CLOCK = PhaseClock()
_imported = (time.perf_counter(), time.process_time())
# What happened before dl-run's first line ran: the interpreter's start and its site packages.
_before_wall = process_wall_seconds()
if _before_wall is not None:
    CLOCK.add("python start-up", _before_wall, _imported[1])


def phase(name: str):
    """`with phase("scoring"):` times the block in this process's clock."""
    return CLOCK.phase(name)
