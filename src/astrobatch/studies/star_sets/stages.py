"""The ``astrobatch star-sets`` sub-app: one command per DVC stage."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from astrobatch.cli_utils import ParamsOption, stage
from astrobatch.params import load_params

log = logging.getLogger(__name__)
SECTION = "star_sets"
app = typer.Typer(
    name="star-sets",
    help="Star-cluster mass from variable-size sets of member stars "
    "(summary statistics, Deep Sets, Set Transformer).",
    no_args_is_help=True,
)

RAW = Path("data/raw/star_sets/snapshots.h5")
PREPARED = Path("data/prepared/star_sets")
MODELS = Path("models/star_sets")
LIVE = Path("dvclive/star_sets")


@stage(app, "simulate")
def simulate_cmd(
    params: ParamsOption = Path("params.yaml"),
    out: Annotated[Path, typer.Option(help="Raw HDF5 file to write.")] = RAW,
) -> None:
    """Simulate star-cluster snapshots (the embedded default data set).

    Reads star_sets.simulate from PARAMS: King models sampled with galpy, a
    Kroupa IMF, stellar-evolution mass loss, escapers in tidal tails, field
    stars, unresolved binaries, pseudo-observation at a distance. Writes OUT
    in the raw star-set HDF5 format (CSR `ptr` over stars, per-snapshot targets
    and run ids; see README).
    """
    from astrobatch.progress import progress
    from astrobatch.studies.star_sets.simulate import simulate_to_file

    p = load_params(SECTION, params).simulate
    with progress("simulate snapshots", p.n_runs * p.snapshots_per_run) as update:
        simulate_to_file(p, p.seed, out, progress=update)
    log.info("wrote %s", out)


@stage(app, "prepare")
def prepare_cmd(
    params: ParamsOption = Path("params.yaml"),
    out: Annotated[Path, typer.Option(help="Output folder of shards.")] = PREPARED,
) -> None:
    """Split runs, fit scalers on train only, write chunked HDF5 shards.

    Reads star_sets.data from PARAMS: the raw input (raw_path, raw_format:
    hdf5 | upstream_npz | nbody6_out3), features, target, split ratios and
    stratification. Writes OUT/manifest.json (runs per split), OUT/scalers.json
    and OUT/{train,val,test}.h5. No run is shared between splits.
    """
    from astrobatch.progress import progress
    from astrobatch.studies.star_sets.prepare import prepare

    p = load_params(SECTION, params)
    with progress("prepare shards", 1) as update:
        manifest = prepare(p.data, out, p.evaluate.real_galactocentric_radius_kpc, update)
    log.info(
        "runs per split %s, snapshots %s -> %s",
        {k: len(v) for k, v in manifest["runs"].items()}, manifest["n_snapshots"], out,
    )  # fmt: skip


@stage(app, "train")
def train_cmd(
    params: ParamsOption = Path("params.yaml"),
    prepared: Annotated[Path, typer.Option(help="Folder of prepared shards.")] = PREPARED,
    out: Annotated[Path, typer.Option(help="Checkpoint folder.")] = MODELS,
    live: Annotated[Path, typer.Option(help="DVCLive folder for curves.")] = LIVE,
    resume: Annotated[
        bool | None,
        typer.Option(
            "--resume/--no-resume",
            help="Continue an interrupted identical run from last.ckpt (default: "
            "star_sets.training.resume, 'auto').",
        ),
    ] = None,
) -> None:
    """Train the set model chosen by star_sets.model.name.

    Models: summary_stats | deep_sets | set_transformer. Huber loss on the
    scaled log10 target, AdamW + cosine schedule, gradient clipping, early
    stopping on val/loss. Writes OUT/best.ckpt, OUT/last.ckpt and
    OUT/train_state.json; curves go to LIVE through DVCLive. An interrupted run
    resumes from OUT/last.ckpt when called again with the same params.
    """
    from astrobatch.studies.star_sets.train import train

    p = load_params(SECTION, params)
    if resume is not None:
        training = p.training.model_copy(update={"resume": "auto" if resume else "never"})
        p = p.model_copy(update={"training": training})
    state = train(p, prepared, out, live)
    log.info("best val/loss %s after %d epochs", state["best_val_loss"], state["epochs_trained"])


@stage(app, "evaluate")
def evaluate_cmd(
    params: ParamsOption = Path("params.yaml"),
    prepared: Annotated[Path, typer.Option(help="Folder of prepared shards.")] = PREPARED,
    models: Annotated[Path, typer.Option(help="Checkpoint folder (best.ckpt).")] = MODELS,
    live: Annotated[Path, typer.Option(help="DVCLive folder (loss curves).")] = LIVE,
    metrics: Annotated[Path, typer.Option(help="Metrics JSON to write.")] = Path(
        "metrics/star_sets.json"
    ),
    plots: Annotated[Path, typer.Option(help="Folder of PNG plots.")] = Path("plots/star_sets"),
    reports: Annotated[Path, typer.Option(help="Folder of tables.")] = Path("reports/star_sets"),
) -> None:
    """Evaluate the best checkpoint on val/test and on the real NBODY6++ snapshots.

    Writes METRICS (flat JSON: MAE, RMSE, median and 90th-percentile absolute
    error of the mass in dex and Msun, per-snapshot Pearson/Spearman, the
    within-snapshot spread, the median baseline, real-snapshot predictions),
    REPORTS/predictions.parquet, REPORTS/real_snapshots.csv and PLOTS
    (pred_vs_true.png, residual_hist.png, loss_curves.png). Real snapshots
    are star_sets.evaluate.real_snapshots (missing files are skipped).
    """
    from rich.console import Console
    from rich.table import Table

    from astrobatch.studies.star_sets.evaluate import evaluate

    p = load_params(SECTION, params)
    m = evaluate(p, prepared, models, live, metrics, plots, reports)
    table = Table(title=f"star_sets {p.model.name}: test")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in m.items():
        if k.startswith(("test/", "baseline/median/test/mae", "real/")) and "/bias" not in k:
            table.add_row(k, f"{v:.4g}")
    Console(stderr=True).print(table)
