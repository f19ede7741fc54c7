"""Python's cyclic garbage collector, paused while a `dl-run` process imports and builds (issue #21).

Importing torch (with torch._dynamo, which its optimisers import), Hydra and matplotlib creates about a million
long-lived objects. With the collector on, each few hundred new objects start a collection that walks the young
ones and, every so often, all of them: about 1.1 CPU seconds a command on this project's 2-core machine, a tenth
of a small run. The collector is paused from the script's first line until the experiment's optimizer is built
(the last heavy import, torch._dynamo), then the objects made so far are frozen (gc.freeze: moved out of the collector's view, as they
live until exit anyway) and it runs again, so the start-up check, the training and everything after it run with
the collector on as usual (a lazy import later, matplotlib's, then costs half what it did: the frozen objects
are not walked again). Only the console script (and `python -m dlrun`) pauses it: a program that imports
dl-run keeps its own collector settings.
"""

from __future__ import annotations

import gc

_paused = False


def pause() -> None:
    """Turn the collector off until resume(), unless something else turned it off already."""
    global _paused
    if gc.isenabled():
        gc.disable()
        _paused = True


def resume() -> None:
    """Freeze what exists now and turn the collector back on, if pause() turned it off; otherwise nothing."""
    global _paused
    if _paused:
        _paused = False
        gc.freeze()
        gc.enable()
