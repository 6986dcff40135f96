"""Ctrl-C, kill and a closed terminal in the example scripts: one clean stop, whenever they come.

Python's default turns Ctrl-C into a traceback wherever it lands and ignores nothing else
it should: SIGTERM (``kill``, ``timeout``) and SIGHUP (the terminal was closed) end the
script at once, so its ``finally`` never stops the cluster it started.
"""
import atexit
import os
import signal
import sys

STOP_SIGNALS = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM", signal.SIGHUP: "SIGHUP"}


def exit_cleanly_on_signals(what="Clipper"):
    """From now on, the first Ctrl-C, SIGTERM or SIGHUP says so and exits with status 0 by
    raising SystemExit where the script is, so its ``finally`` blocks (and a start that is
    under way) stop what was started. Any later one only asks to wait: the stop it would
    otherwise cut short is what leaves processes behind."""
    def first(signum, _frame):
        for each in STOP_SIGNALS:
            signal.signal(each, later)
        # Python puts the default handlers back while it exits, so a late signal would kill
        # the script whose stop is done (status -15 instead of 0): ignore them from then on.
        atexit.register(_ignore_stop_signals)
        _say(f"{STOP_SIGNALS[signum]}: stopping {what}\n", sys.stdout)
        raise SystemExit(0)

    def later(signum, _frame):
        _say(f"{STOP_SIGNALS[signum]}: still stopping {what}, one moment\n", sys.stderr)

    for each in STOP_SIGNALS:
        signal.signal(each, first)


def _ignore_stop_signals():
    for each in STOP_SIGNALS:
        signal.signal(each, signal.SIG_IGN)


def _say(line, stream):
    # Straight to the file descriptor: print() from a handler that interrupted a print()
    # fails ("reentrant call"), and after SIGHUP there may be no terminal left to write to.
    try:
        stream.flush()
    except (OSError, ValueError, RuntimeError):
        pass
    try:
        os.write(stream.fileno(), line.encode())
    except (OSError, ValueError):
        pass
