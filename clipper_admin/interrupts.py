"""Ctrl-C, kill and a closed terminal in the example scripts: one clean stop, whenever they come.

Python's default turns Ctrl-C into a traceback wherever it lands and ignores nothing else
it should: SIGTERM (``kill``, ``timeout``) and SIGHUP (the terminal was closed) end the
script at once, so its ``finally`` never stops the cluster it started.
"""
import atexit
import os
import signal
import sys
import threading

STOP_SIGNALS = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM", signal.SIGHUP: "SIGHUP"}


class StopSignal(SystemExit):
    """Raised where the script is when a stop signal arrives: exits with status 0."""

    def __init__(self, signum: int):
        super().__init__(0)
        self.signum = signum


def exit_cleanly_on_signals(what="Clipper"):
    """From now on, the first Ctrl-C, SIGTERM or SIGHUP says so and exits with status 0 by
    raising SystemExit where the script is, so its ``finally`` blocks (and a start that is
    under way) stop what was started. Any later one only asks to wait: the stop it would
    otherwise cut short is what leaves processes behind. Started under ``nohup`` (SIGHUP
    ignored), the script outlives its terminal. A SIGINT or SIGTERM stops it even where it
    was started ignoring them: a shell script's background job ignores SIGINT, and a
    ``kill -INT`` sent to it means stop (no terminal sends a background job Ctrl-C)."""
    announced = []
    nohup = signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    handled = [each for each in STOP_SIGNALS if not (nohup and each == signal.SIGHUP)]

    def first(signum, _frame):
        for each in handled:
            signal.signal(each, later)
        if not announced:
            announced.append(signum)
            # Python puts the default handlers back while it exits, so a late signal would
            # kill the script whose stop is done (status -15 instead of 0): ignore them then.
            atexit.register(_ignore_stop_signals)
            _say(f"{STOP_SIGNALS[signum]}: stopping {what}\n", sys.stdout)
        raise StopSignal(signum)

    def later(signum, _frame):
        _say(f"{STOP_SIGNALS[signum]}: still stopping {what}, one moment\n", sys.stderr)

    def deliver_again_if_dropped(unraisable, previous=sys.unraisablehook):
        # A signal that lands in a callback Python runs for itself (a weakref callback of
        # the import machinery, a __del__) has its exception printed and dropped there, and
        # the script would run on: deliver it again, to be raised where the script is.
        if isinstance(unraisable.exc_value, StopSignal):
            for each in handled:
                signal.signal(each, first)
            # From another thread a moment later: sent now, it would land in this hook.
            again = threading.Timer(0.01, os.kill, (os.getpid(), unraisable.exc_value.signum))
            again.daemon = True
            again.start()
            return
        previous(unraisable)

    sys.unraisablehook = deliver_again_if_dropped
    for each in handled:
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
