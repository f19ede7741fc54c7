"""Python's cyclic garbage collector, paused while a `dl-run` process imports and builds (issue #21).

Importing torch (with torch._dynamo, which its optimisers import), Hydra and matplotlib creates about a million
long-lived objects. With the collector on, each few hundred new objects start a collection that walks the young
ones and, every so often, all of them: about 1.1 CPU seconds a command on this project's 2-core machine, a tenth
of a small run. The collector is paused from the script's first line until the experiment's optimizer is built
(the last heavy import, torch._dynamo); then the objects made so far are frozen (gc.freeze: moved out of the
collector's view, as they live until exit anyway) and it runs again, so the start-up check, the training and
everything after it run with the collector on as usual. A lazy import later (matplotlib's) then costs half what it
did, the frozen objects not being walked again, and so does a full collection: joblib's workers run one after
every job (without psutil), 0.3 CPU s each before. A launcher's worker process pauses it for its first job too.
Only the console script (and `python -m dlrun`) pauses it: a program that imports dl-run keeps its own settings.
"""

from __future__ import annotations

import gc

_paused = False
_resumed = False  # once per process: after the start-up, objects come and go as in any program


def pause() -> None:
    """Turn the collector off until resume(), unless something else turned it off or this process resumed it."""
    global _paused
    if gc.isenabled() and not _resumed:
        gc.disable()
        _paused = True


def resume() -> None:
    """Freeze what exists now and turn the collector back on, if pause() turned it off; otherwise nothing."""
    global _paused, _resumed
    if _paused:
        _paused, _resumed = False, True
        gc.freeze()
        gc.enable()
