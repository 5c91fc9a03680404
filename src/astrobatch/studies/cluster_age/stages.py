"""The ``astrobatch cluster-age`` sub-app: one command per DVC stage."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from astrobatch.cli_utils import ParamsOption, stage
from astrobatch.params import load_params

log = logging.getLogger(__name__)
SECTION = "cluster_age"
app = typer.Typer(
    name="cluster-age",
    help="Star-cluster ages from HST cutouts with a CNN (blackout masks, normalisations, "
    "baselines, shuffled-target control).",
    no_args_is_help=True,
)

RAW = Path("data/raw/cluster_age/raw_phangs_dataset.h5")
PREPARED = Path("data/prepared/cluster_age")
MODELS = Path("models/cluster_age")
LIVE = Path("dvclive/cluster_age")


@stage(app, "simulate")
def simulate_cmd(
    params: ParamsOption = Path("params.yaml"),
    out: Annotated[Path, typer.Option(help="Raw HDF5 file to write.")] = RAW,
) -> None:
    """Simulate HST cluster cutouts (the embedded default data set).

    Reads cluster_age.simulate from PARAMS: clusters drawn from the LEGUS NGC 628
    catalogue (age, mass, E(B-V), 5-band magnitudes), placed in mock galaxies at
    several distances, with an unresolved King profile, the brightest resolved
    stars, a host-galaxy background, PSF and noise. Writes OUT in the real
    raw_phangs_dataset.h5 layout (cluster_ids, galaxy_ids, image_cutouts
    (N, 5, 112, 112), cluster_log_ages) plus catalogue_magnitudes.
    """
    from astrobatch.progress import progress
    from astrobatch.studies.cluster_age.simulate import simulate_to_file

    p = load_params(SECTION, params).simulate
    with progress("simulate cutouts", p.n_clusters) as update:
        summary = simulate_to_file(p, out, progress=update)
    log.info("wrote %s (%s)", out, summary)


@stage(app, "prepare")
def prepare_cmd(
    params: ParamsOption = Path("params.yaml"),
    out: Annotated[Path, typer.Option(help="Output folder of shards.")] = PREPARED,
) -> None:
    """Validate the raw cutouts, remove extremes, split, crop, write chunked shards.

    Reads cluster_age.data from PARAMS (raw_path: any raw_phangs_dataset.h5).
    Writes OUT/{train,val,test}.h5 (images, log_age, cluster_id, galaxy_id,
    aperture photometry) and OUT/manifest.json (split, target scaling).
    """
    from astrobatch.progress import progress
    from astrobatch.studies.cluster_age.prepare import prepare

    p = load_params(SECTION, params)
    with progress("prepare shards", 1) as update:
        manifest = prepare(p.data, out, update)
    log.info("kept %d of %d cutouts, split %s -> %s", manifest["n_kept"], manifest["n_raw"],
             manifest["counts"], out)  # fmt: skip


@stage(app, "train")
def train_cmd(
    params: ParamsOption = Path("params.yaml"),
    prepared: Annotated[Path, typer.Option(help="Folder of prepared shards.")] = PREPARED,
    out: Annotated[Path, typer.Option(help="Checkpoint folder.")] = MODELS,
    live: Annotated[Path, typer.Option(help="DVCLive folder for curves.")] = LIVE,
    resume: Annotated[
        bool | None,
        typer.Option("--resume/--no-resume", help="Continue an interrupted identical run."),
    ] = None,
) -> None:
    """Train the CNN (1im or 5im) with the blackout mask and normalisation of PARAMS.

    MSE on min-max scaled log age, dihedral augmentation, early stopping with
    the best weights kept (OUT/best.ckpt); shuffle_targets: true trains the
    control. Writes OUT/best.ckpt, OUT/last.ckpt, OUT/normalisation.json.
    """
    from astrobatch.studies.cluster_age.train import train

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
        "metrics/cluster_age.json"
    ),
    plots: Annotated[Path, typer.Option(help="Folder of PNG plots.")] = Path("plots/cluster_age"),
    reports: Annotated[Path, typer.Option(help="Folder of tables.")] = Path("reports/cluster_age"),
) -> None:
    """Evaluate the CNN and the baselines (mean, median, random, photometric).

    Writes METRICS (MdAE = 1.4826 x median |error|, MAE, RMSE, R2, bias of log
    age on train/val/test and the test age subsets), REPORTS/predictions.parquet
    and PLOTS (loss curves, predicted vs true per split, input and output
    histograms, example cutouts with the mask drawn).
    """
    from rich.console import Console
    from rich.table import Table

    from astrobatch.studies.cluster_age.evaluate import evaluate

    p = load_params(SECTION, params)
    m = evaluate(p, prepared, models, live, metrics, plots, reports)
    table = Table(title=f"cluster_age {p.model.input} mask={p.mask.type} R={p.mask.radius}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k in ("test/mdae_log_age", "test/mae_log_age", "test/r2_log_age",
              "baseline/mean/test/mdae_log_age", "baseline/photometric/test/mdae_log_age",
              "test/mdae_log_age_over_mean_baseline"):  # fmt: skip
        table.add_row(k, f"{m[k]:.4g}")
    Console(stderr=True).print(table)
