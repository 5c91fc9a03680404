"""The ``astrobatch compare`` command: DVC experiments to a markdown table and a figure.

:func:`compare` is a plain Typer command function; the root CLI mounts it as
``astrobatch compare`` and :data:`app` runs it alone (for tests). The heavy
imports (pandas, Matplotlib) happen only when the command runs, so that
``astrobatch --help`` stays fast.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from astrobatch.errors import InputError

DEFAULT_OUT = Path("reports/compare")


def default_stem(metric: str, param: str, hue: str | None = None) -> str:
    """File stem derived from the metric, the parameter and the hue.

    Examples
    --------
    >>> default_stem("test/mae_log_mass", "star_sets.model.name")
    'test_mae_log_mass_vs_star_sets.model.name'
    >>> default_stem("test/mdae", "cluster_age.mask.radius", hue="cluster_age.mask.kind")
    'test_mdae_vs_cluster_age.mask.radius_by_cluster_age.mask.kind'
    """
    text = f"{metric}_vs_{param}" + (f"_by_{hue}" if hue else "")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "compare"


def compare(
    metric: Annotated[
        str, typer.Option("--metric", "-m", help="Metric to compare, e.g. test/mae_log_mass.")
    ],
    param: Annotated[
        str,
        typer.Option(
            "--param", help="Swept parameter on the x axis, as given to -S: star_sets.model.name."
        ),
    ],
    hue: Annotated[
        str | None,
        typer.Option(
            help="Second parameter (or a+b combination): one line (or bar colour) per value."
        ),
    ] = None,
    baseline: Annotated[
        list[str] | None,
        typer.Option(
            "--baseline",
            "-b",
            help="Baseline metric drawn as a horizontal line (repeatable), "
            "e.g. baseline/median/test/mae_log_mass.",
        ),
    ] = None,
    exp_json: Annotated[
        Path | None,
        typer.Option(
            "--exp-json",
            help="File written by `dvc exp show --json > FILE` ('-' reads standard input). "
            "Default: run `dvc exp show --json` here.",
        ),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = DEFAULT_OUT,
    name: Annotated[
        str | None,
        typer.Option(help="Output file stem. Default: <metric>_vs_<param>[_by_<hue>]."),
    ] = None,
    where: Annotated[
        list[str] | None,
        typer.Option(
            "--where",
            "-w",
            help="Keep only rows where PARAM=VALUE (repeatable), e.g. cluster_age.model.input=5im.",
        ),
    ] = None,
    experiments_only: Annotated[
        bool,
        typer.Option(
            "--experiments-only/--all-rows",
            help="Keep only DVC experiments (drop the workspace and commit rows, e.g. when "
            "`dvc exp show -A` lists several commits with the same params).",
        ),
    ] = False,
) -> None:
    """Compare DVC experiments: one metric against one swept parameter.

    Reads the experiments of `dvc exp show --json` (the workspace, the baseline
    commit and every finished experiment; failed and queued ones are skipped)
    from EXP_JSON, or runs that command in the current folder. Groups them by
    PARAM (and HUE) and reports the mean, standard deviation (ddof=1), count,
    min and max of METRIC over the other runs of each group, typically seeds.
    Parameters are named as for `dvc exp run -S` (keys of a file other than
    params.yaml as file:key); a metric found in several metrics files is
    prefixed with the file stem (stem:name).

    Writes OUT/NAME.md (a GitHub-flavoured markdown table, baselines listed
    below it) and OUT/NAME.png (metric against a numeric PARAM with error
    bars, one line per HUE value; bars for a categorical PARAM; each BASELINE
    as a dashed horizontal line at its mean over the experiments), and prints
    the table. Bad input (unknown metric or parameter, unreadable JSON, dvc
    failing) prints one message and exits with status 2.

    Example: astrobatch compare --metric test/mae_log_mass --param
    star_sets.model.name --baseline baseline/median/test/mae_log_mass
    """
    try:
        from astrobatch.evaluate.compare import (
            baseline_values,
            combine_params,
            filter_rows,
            load_experiments,
            mixed_params,
            plot_comparison,
            summarise,
            write_markdown,
        )

        df = load_experiments(exp_json)
        if experiments_only:
            df = df[df["kind"] == "experiment"]
            if df.empty:
                raise InputError("no DVC experiment rows (only workspace/commits)", key="kind")
        df = filter_rows(df, where or []).copy()
        param = combine_params(df, param)
        hue = combine_params(df, hue) if hue else None
        summary = summarise(df, metric, param, hue=hue)
        for group, differ in mixed_params(df, [param, *([hue] if hue else [])]).items():
            typer.echo(
                f"warning: group {group}: the params {', '.join(differ)} differ between its "
                "experiments (pooled as repetitions; filter with --where)",
                err=True,
            )
        baselines = baseline_values(df, baseline or [])
        stem = name or default_stem(metric, param, hue)
        md_path, png_path = out / f"{stem}.md", out / f"{stem}.png"
        text = write_markdown(summary, md_path, metric, param, hue=hue, baselines=baselines)
        plot_comparison(summary, png_path, metric, param, hue=hue, baselines=baselines)
    except InputError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None

    from rich.console import Console
    from rich.markdown import Markdown

    console = Console()
    console.print(Markdown(text))
    console.print(
        f"wrote {md_path} and {png_path} ({len(df)} experiments)", highlight=False, soft_wrap=True
    )


app = typer.Typer(
    rich_markup_mode=None,
    name="compare",
    help="Compare DVC experiments as a markdown table and a figure.",
    pretty_exceptions_enable=False,
)
app.command("compare")(compare)
