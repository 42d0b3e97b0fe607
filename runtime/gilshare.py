"""The event loop's share of the interpreter while a worker thread runs Python code.

CPython hands the GIL from a running thread to a waiting one only after the switch
interval (``sys.getswitchinterval()``, 5 ms by default).  A snapshot's worker thread
copies and encodes the model's parts, much of it Python code (the users' dicts, one
msgpack call per piece), so each time the event loop's thread woke up during a snapshot
it waited up to 5 ms for the interpreter before it could run a callback, several times
over, and a ticker due every 1 ms saw 5-20 ms gaps (tests/test_loop_lag.py).  While such
work runs the interval is shortened, so the loop waits at most about that long.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

WORKER_SWITCH_S = 0.0005  # the longest the loop waits for a worker to hand the GIL over

_holders = 0  # work that asked for the short interval and has not finished
_was = 0.005  # the interval before the first of them


@contextmanager
def loop_first(interval: float = WORKER_SWITCH_S) -> Iterator[None]:
    """The switch interval at most ``interval`` while any such work is inside (nesting and
    concurrent work are counted); back to what it was when the last one leaves."""
    global _holders, _was
    if _holders == 0:
        _was = sys.getswitchinterval()
    _holders += 1
    sys.setswitchinterval(min(_was, interval))
    try:
        yield
    finally:
        _holders -= 1
        if _holders == 0:
            sys.setswitchinterval(_was)
