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


#: Library loggers kept at WARNING (their INFO lines are banners and tips), their own
#: handlers removed so that every line is printed once, by ours.
QUIET_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "lightning_fabric",
                 "pytorch_lightning", "dvclive")  # fmt: skip
#: Library warnings that ask nothing of a user: (message regex, category).
QUIET_WARNINGS = (
    (r".*Checkpoint directory .* exists and is not empty", UserWarning),  # our resume folder
    (r".*isinstance\(treespec, LeafSpec\)", Warning),  # Lightning vs torch 2.13 pytree
    (r".*does not have many workers", Warning),  # num_workers is a param; 0 is deliberate
    (r".*The number of training batches .* is smaller than the logging interval", Warning),
    (r".*litlogger", Warning),
)


def quiet_libraries() -> None:
    """One line per event: library banners, tips and known-harmless warnings filtered."""
    import warnings

    for name in QUIET_LOGGERS:
        lg = logging.getLogger(name)
        lg.setLevel(logging.WARNING)
        lg.handlers.clear()
        lg.propagate = True
    for message, category in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


class _StderrHandler(logging.StreamHandler):
    """A stream handler on whatever ``sys.stderr`` is when a record is written (not the
    stream of the first call, which a test runner or a redirect may since have closed)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(level: int = logging.INFO) -> None:
    """Configure the root logger once: rich handler on a terminal, plain lines otherwise.

    Library noise is filtered (:func:`quiet_libraries`).
    """
    root = logging.getLogger()
    quiet_libraries()
    if getattr(root, "_astrobatch", False):
        return
    if interactive():
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(show_path=False, rich_tracebacks=False)
        fmt = "%(message)s"
    else:
        handler = _StderrHandler()
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
