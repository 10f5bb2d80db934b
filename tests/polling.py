"""The one bounded wait the tests share: poll a check until it holds or a deadline passes."""
from __future__ import annotations

import time
from typing import Any, Callable


class TimedOut(AssertionError):
    def __init__(self, what: str, timeout: float, last: Any, detail: str = "") -> None:
        super().__init__(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}" + (f"\n{detail}" if detail else ""))
        self.last = last


def poll(check: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.5,
         tolerate: tuple[type[BaseException], ...] = (Exception,), detail: Callable[[], str] | None = None) -> Any:
    """`check()`'s first truthy value. Exceptions in `tolerate` count as "not yet"; any other
    escapes at once (a check may raise to stop the wait early). On timeout: TimedOut, with the
    last value or exception and `detail()` (logs, pod states) for whoever reads the failure."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except tolerate as exc:
            last = exc
        time.sleep(interval)
    raise TimedOut(what, timeout, last, detail() if detail else "")
