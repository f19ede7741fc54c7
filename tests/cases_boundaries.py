"""Bad-input cases about files and folders (tests/test_bad_input.py runs them): outputs that must not be replaced,
folders dl-run did not create, run folders that must not run code, values that must not end in a traceback; and
the input files those cases name."""

from __future__ import annotations

from pathlib import Path

# (arguments, words the message must contain); {run} is an earlier, finished run in outputs/, {damaged} one whose
# checkpoints are both truncated (see test_bad_input.earlier_runs).
CASES: list[tuple[list[str], list[str]]] = [
]


def make_inputs(workdir: Path) -> None:
    """Write the files these cases name into the case's working folder."""
