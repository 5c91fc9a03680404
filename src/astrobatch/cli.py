"""The ``astrobatch`` command: one sub-app per registered study, plus common commands.

Studies are mounted from the registry :data:`astrobatch.studies.STUDIES` (each study's
``stages.study.app``, see :mod:`astrobatch.study`). Run ``astrobatch --help``; every DVC
stage is ``astrobatch <study> <stage>``.
"""

from __future__ import annotations

import importlib

import typer

from astrobatch import sweeps
from astrobatch.exp_cli import app as exp_app
from astrobatch.slurm import app as slurm_app
from astrobatch.studies import STUDIES

app = typer.Typer(
    rich_markup_mode=None,
    name="astrobatch",
    help="Reproducible deep-learning studies in astronomy. Each study is a chain of DVC "
    "stages (simulate -> prepare -> train -> evaluate) driven by params.yaml.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from astrobatch import __version__

        typer.echo(f"astrobatch {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Reproducible deep-learning studies in astronomy."""


for _entry in STUDIES.values():
    _study = importlib.import_module(f"{_entry.package}.stages").study
    app.add_typer(_study.app, name=_study.cli_name)
app.add_typer(slurm_app, name="slurm")
app.add_typer(sweeps.app, name="sweep")
app.add_typer(exp_app, name="exp")


def _mount_compare() -> None:
    from astrobatch.compare_cli import compare

    app.command("compare")(compare)


_mount_compare()


def main() -> None:
    """Console-script entry point."""
    app(prog_name="astrobatch")


if __name__ == "__main__":
    main()
