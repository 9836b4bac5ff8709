"""Progress of long steps (a Verilator build, a simulation, a conversion), in one place.

On a terminal: a rich spinner with the elapsed time, and a bar with an ETA when the step's duration
can be expected (from earlier runs).  Elsewhere (a log, CI): one log line when the step starts and
one when it ends, through the `softnpu` logger.  `set_enabled(False)` (the CLI's `-q`) or
`SOFTNPU_PROGRESS=0` silences the terminal display; the log lines follow the logging level.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator

__all__ = ["activity", "set_enabled"]

log = logging.getLogger("softnpu")
_enabled = True


def set_enabled(enabled: bool) -> None:
    global _enabled
    _enabled = enabled


def _terminal() -> bool:
    return _enabled and os.environ.get("SOFTNPU_PROGRESS", "1") != "0" and sys.stderr.isatty()


@contextlib.contextmanager
def activity(description: str, expected_s: float | None = None) -> Iterator[None]:
    """Show `description` while the block runs: elapsed seconds, and an ETA from `expected_s`."""
    start = time.monotonic()
    hint = f" (about {expected_s:.0f} s)" if expected_s else ""
    if not _terminal():
        log.info("%s%s ...", description, hint)
        yield
        log.info("%s: done in %.1f s", description, time.monotonic() - start)
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn()]
    if expected_s:
        columns += [BarColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    stop = threading.Event()
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=expected_s or None)

        def tick():
            while not stop.wait(0.25):
                elapsed = time.monotonic() - start
                if expected_s:      # past the expectation: hold the bar just short of full
                    bar.update(task, completed=min(elapsed, expected_s * 0.99))
        thread = threading.Thread(target=tick, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
    Console(stderr=True).print(f"{description}: done in {time.monotonic() - start:.1f} s")
