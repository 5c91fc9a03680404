"""Progress and logging: rich in a terminal, plain lines in batch logs.

``rich`` progress bars and log rendering are used when standard error is a
terminal; otherwise (SLURM logs, CI, DVC capturing output) progress is
reported as plain log lines every ~10%.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger("astrobatch")


def interactive() -> bool:
    """True when standard error is a terminal."""
    return sys.stderr.isatty()


def setup_logging(level: int = logging.INFO) -> None:
    """Configure the root logger once: rich handler on a terminal, plain lines otherwise."""
    root = logging.getLogger()
    if getattr(root, "_astrobatch", False):
        return
    if interactive():
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(show_path=False, rich_tracebacks=False)
        fmt = "%(message)s"
    else:
        handler = logging.StreamHandler(sys.stderr)
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler.setFormatter(logging.Formatter(fmt, datefmt="%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(level)
    root._astrobatch = True  # type: ignore[attr-defined]


@contextmanager
def progress(description: str, total: int) -> Iterator[Callable[[int, int], None]]:
    """Yield a ``update(done, total)`` callback that shows progress.

    Parameters
    ----------
    description : str
        What is being done (shown next to the bar or in the log line).
    total : int
        Expected number of steps.
    """
    if interactive():
        from rich.progress import Progress

        with Progress(transient=False) as bar:
            task = bar.add_task(description, total=total)

            def update(done: int, total_: int) -> None:
                bar.update(task, completed=done, total=total_)

            yield update
    else:
        state = {"next": 0.0}

        def update(done: int, total_: int) -> None:
            frac = done / max(total_, 1)
            if frac >= state["next"] or done == total_:
                log.info("%s: %d/%d (%.0f%%)", description, done, total_, 100 * frac)
                state["next"] = frac + 0.1

        yield update
