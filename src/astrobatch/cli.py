"""The ``astrobatch`` command: one sub-app per study, plus common commands.

Run ``astrobatch --help``; every DVC stage is ``astrobatch <study> <stage>``.
"""

from __future__ import annotations

import typer

from astrobatch.slurm import app as slurm_app
from astrobatch.studies.cluster_age.stages import app as cluster_age_app
from astrobatch.studies.star_sets.stages import app as star_sets_app
from astrobatch.studies.stellar_xp.stages import app as stellar_xp_app

app = typer.Typer(
    name="astrobatch",
    help="Reproducible deep-learning studies in astronomy. Each study is a chain of DVC "
    "stages (simulate -> prepare -> train -> evaluate) driven by params.yaml.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(star_sets_app, name="star-sets")
app.add_typer(cluster_age_app, name="cluster-age")
app.add_typer(stellar_xp_app, name="stellar-xp")
app.add_typer(slurm_app, name="slurm")


def _mount_compare() -> None:
    from astrobatch.compare_cli import compare

    app.command("compare")(compare)


_mount_compare()


def main() -> None:
    """Console-script entry point."""
    app(prog_name="astrobatch")


if __name__ == "__main__":
    main()
