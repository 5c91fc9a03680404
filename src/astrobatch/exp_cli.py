"""``astrobatch exp show <study>``: one study's experiments, readable in a terminal."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from astrobatch.cli_utils import stage

app = typer.Typer(
    help="Experiment tables per study (DVC experiments through dvc.api).",
    no_args_is_help=True,
    rich_markup_mode=None,
)


class Format(StrEnum):
    table = "table"
    md = "md"
    csv = "csv"


@stage(app, "show")
def show(
    study: Annotated[str, typer.Argument(help="Study name (star_sets or star-sets, ...).")],
    fmt: Annotated[Format, typer.Option("--format", "-f", help="table, md or csv.")] = (
        Format.table
    ),
    all_params: Annotated[
        bool, typer.Option("--all-params", help="Every param of the study, not only changed.")
    ] = False,
    num: Annotated[
        int, typer.Option("--num", "-n", help="Experiments of the last NUM commits.")
    ] = 1,
    repo: Annotated[Path, typer.Option(help="The DVC project.")] = Path("."),
    width: Annotated[int, typer.Option(help="Width of the table format, in characters.")] = 160,
    transpose: Annotated[
        bool, typer.Option("--transpose", "-T", help="One row per metric and param instead.")
    ] = False,
) -> None:
    """One row per experiment of STUDY: its name, the study's params that differ between
    the rows, and the study's headline metrics (the keys of metrics/<study>.json).

    Experiments come from dvc.api.exp_show (workspace, commits and their experiments);
    queued, running and failed ones are left out. The full metrics of a run are in
    reports/<study>/metrics_full.json.
    """
    import dvc.api

    from astrobatch.errors import InputError
    from astrobatch.evaluate.experiments import (
        headline_keys,
        render_markdown,
        render_rich,
        render_transposed,
        study_table,
    )
    from astrobatch.studies import STUDIES

    name = study.replace("-", "_")
    if name not in STUDIES:
        raise InputError(f"unknown study {study!r}; expected one of {sorted(STUDIES)}", repo)
    metrics_file = f"metrics/{name}.json"
    keys = headline_keys(repo / metrics_file)
    try:
        rows = dvc.api.exp_show(repo=str(repo), num=num)
    except Exception as err:  # DVC raises its own exception types
        raise InputError(f"dvc.api.exp_show failed: {err}", repo) from None
    df = study_table(rows, name, keys, metrics_file=metrics_file, all_params=all_params)
    if fmt is Format.csv:
        df.drop(columns="rev").to_csv(sys.stdout, index=False)
    elif fmt is Format.md:
        sys.stdout.write(render_markdown(df))
    elif transpose:
        sys.stdout.write(render_transposed(df, title=f"{name} experiments", width=width))
    else:
        sys.stdout.write(render_rich(df, title=f"{name} experiments", width=width))
