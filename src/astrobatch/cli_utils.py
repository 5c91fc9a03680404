"""Helpers shared by every study's Typer sub-app: error handling and common options."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from astrobatch.errors import InputError
from astrobatch.progress import setup_logging

ParamsOption = Annotated[
    Path, typer.Option("--params", "-p", help="Parameters file (YAML) with the study's section.")
]
SetParamOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set-param", "-S", metavar="KEY=VALUE",
        help="Override a param, as in `dvc exp run -S`: key=value (YAML value; the key "
        "dotted from the top, star_sets.training.lr=1e-3, or from the study's section, "
        "training.lr=1e-3). Repeatable; the params file is not changed.",
    ),
]  # fmt: skip


def stage(app: typer.Typer, name: str) -> Callable:
    """Register ``f`` as command ``name`` of ``app`` with astrobatch's error handling.

    Bad input (:class:`~astrobatch.errors.InputError`, including invalid
    params) prints one message ``error: <file>: key <key>: <expectation>`` to
    standard error and exits with status 2; an interruption exits with 130.
    """

    def deco(f: Callable) -> Callable:
        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            setup_logging()
            try:
                return f(*args, **kwargs)
            except InputError as err:
                typer.echo(f"error: {err}", err=True)
                raise typer.Exit(2) from None
            except KeyboardInterrupt as err:
                logging.getLogger("astrobatch").warning("interrupted: %s", err)
                raise typer.Exit(130) from None

        app.command(name)(wrapper)
        return wrapper

    return deco
