"""A log filter for what others can make a process say as often as they like."""
import logging
import math
import time


class LogRateLimit(logging.Filter):
    """Lets at most ``lines`` records through per ``seconds``; the first line after some were
    left out says how many."""

    def __init__(self, lines: int, seconds: float, about: str):
        super().__init__()
        self.lines, self.seconds, self.about = lines, seconds, about
        self._window_start, self._passed, self._left_out = -math.inf, 0, 0

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now - self._window_start >= self.seconds:
            self._window_start, self._passed = now, 0
        if self._passed >= self.lines:
            self._left_out += 1
            return False
        self._passed += 1
        if self._left_out:
            record.msg = f"({self._left_out} lines about {self.about} left out before this one) {record.msg}"
            self._left_out = 0
        return True
