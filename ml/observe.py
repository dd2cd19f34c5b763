"""Logging set-up and progress lines for long work.

Progress goes through :mod:`logging` (not carriage-return bars) so it reads well in Airflow task logs and in CI.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: str | int = "INFO") -> None:
    """Send this package's logs to stderr at ``level``. Call once from an entry point (CLI, API), never on import."""
    root = logging.getLogger()
    if not any(getattr(h, "_propensity", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_FORMAT, "%H:%M:%S"))
        handler._propensity = True  # type: ignore[attr-defined]
        from ml.redact import log_filter

        handler.addFilter(log_filter())  # masks URL passwords and registered secrets (ml.redact)
        root.addHandler(handler)
    logging.getLogger("ml").setLevel(level)
    if root.level == logging.WARNING or root.level == logging.NOTSET:
        root.setLevel(logging.WARNING)


@dataclass
class Progress:
    """Log ``done/total``, rate and ETA at most every ``every_s`` seconds.

    >>> p = Progress("scoring", total=1_000_000, unit="rows"); p.advance(4096)  # doctest: +SKIP
    """

    what: str
    total: int | None = None
    unit: str = "rows"
    every_s: float = 5.0
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("ml.progress"))
    done: int = 0
    started: float = field(default_factory=time.perf_counter)
    _last: float = 0.0

    def advance(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self._last >= self.every_s:
            self._last = now
            self.logger.info(self.line())

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    @property
    def rate(self) -> float:
        return self.done / self.elapsed if self.elapsed > 0 else 0.0

    def line(self) -> str:
        rate = self.rate
        if self.total:
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            pct = 100.0 * self.done / self.total
            return (
                f"{self.what}: {self.done:,}/{self.total:,} {self.unit} ({pct:.0f}%), "
                f"{rate:,.0f} {self.unit}/s, ETA {eta:,.0f}s"
            )
        return f"{self.what}: {self.done:,} {self.unit}, {rate:,.0f} {self.unit}/s"

    def finish(self) -> str:
        """Log and return the closing summary line."""
        msg = f"{self.what}: done {self.done:,} {self.unit} in {self.elapsed:,.1f}s ({self.rate:,.0f} {self.unit}/s)"
        self.logger.info(msg)
        return msg
