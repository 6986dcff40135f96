"""Waits that end as soon as a signal arrives.

Python runs a signal handler between bytecodes and resumes a blocking call that the signal
interrupted (PEP 475; pyzmq's poll does the same), so a loop that sleeps or polls with a
timeout notices SIGTERM or SIGHUP only when that timeout ends. A SignalWakeup is a socket
pair whose read end becomes readable whenever a signal with a Python handler arrives
(``signal.set_wakeup_fd``): a loop waits on it beside whatever else it waits for.
Main thread only, one per process.
"""
import contextlib
import select
import signal
import socket


class SignalWakeup:
    def __init__(self):
        self._read, self._write = socket.socketpair()
        self._read.setblocking(False)
        self._write.setblocking(False)
        signal.set_wakeup_fd(self._write.fileno(), warn_on_full_buffer=False)

    def fileno(self) -> int:
        """Readable once a signal arrived; ``drain()`` it before waiting again."""
        return self._read.fileno()

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while self._read.recv(4096):
                pass

    def sleep(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if a signal arrives meanwhile."""
        if select.select([self._read], [], [], seconds)[0]:
            self.drain()

    def close(self) -> None:
        signal.set_wakeup_fd(-1)
        self._read.close()
        self._write.close()
