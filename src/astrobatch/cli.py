"""The ``astrobatch`` command: one sub-app per registered study, plus common commands.

Studies are mounted from the registry :data:`astrobatch.studies.STUDIES` (each study's
``stages.study.app``, see :mod:`astrobatch.study`). Run ``astrobatch --help``; every DVC
stage is ``astrobatch <study> <stage>``.
"""

from __future__ import annotations

import importlib
from pathlib import Path

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


#: The mounted studies, in registry order (the results report lists them so).
MOUNTED = {}
for _name, _entry in STUDIES.items():
    _study = importlib.import_module(f"{_entry.package}.stages").study
    app.add_typer(_study.app, name=_study.cli_name)
    MOUNTED[_name] = _study
app.add_typer(slurm_app, name="slurm")
app.add_typer(sweeps.app, name="sweep")
app.add_typer(exp_app, name="exp")


def _mount_compare() -> None:
    from astrobatch.compare_cli import compare

    app.command("compare")(compare)


_mount_compare()


@app.command("report")
def report(
    params: Path = typer.Option(Path("params.yaml"), "--params", "-p", help="Parameters file."),
    sweeps_file: Path = typer.Option(
        Path("sweeps.yaml"), "--sweeps", help="Sweeps whose experiments are tabulated."
    ),
    out: Path = typer.Option(Path("reports"), "--out", help="Folder of index.html, README.md."),
    experiments: bool = typer.Option(
        True, "--experiments/--no-experiments", help="Tabulate the recorded DVC experiments."
    ),
) -> None:
    """Write the results report of every study: OUT/index.html (self-contained) and
    OUT/README.md, read from metrics/, plots/, reports/real/ and the recorded experiments.
    A study whose metrics file is missing is shown as not run."""
    import yaml

    from astrobatch import report as rp
    from astrobatch.errors import InputError

    try:
        if not params.is_file():
            raise InputError("no such parameters file", params)
        data = yaml.safe_load(params.read_text()) or {}
        sweeps_map = sweeps.load_sweeps(sweeps_file, params) if sweeps_file.is_file() else {}
        studies = {n: {"question": s.question, "help": s.help, "cli_name": s.cli_name}
                   for n, s in MOUNTED.items()}  # fmt: skip
        ctx = rp.build_context(Path.cwd(), studies, data, params, sweeps_map, out, experiments)
        paths = rp.write_report(ctx, out)
    except InputError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    ran = sum(s["status"] == "run" for s in ctx["studies"])
    typer.echo(f"report: {paths[0]} and {paths[1]} ({ran} of {len(ctx['studies'])} studies run)")


def main() -> None:
    """Console-script entry point."""
    app(prog_name="astrobatch")


if __name__ == "__main__":
    main()
