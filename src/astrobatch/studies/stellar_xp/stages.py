"""The ``astrobatch stellar-xp`` sub-app: one command per DVC stage."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from astrobatch.cli_utils import ParamsOption, stage
from astrobatch.params import load_params

log = logging.getLogger(__name__)
SECTION = "stellar_xp"
app = typer.Typer(
    name="stellar-xp",
    help="Stellar labels with uncertainties from Gaia XP spectra: masked autoencoder "
    "pretraining, 16/50/84 quantile fine-tuning, leakage-free parallax.",
    no_args_is_help=True,
)

RAW = Path("data/raw/stellar_xp")
PREPARED = Path("data/prepared/stellar_xp")
PRETRAINED = Path("models/stellar_xp/pretrain")
FINETUNED = Path("models/stellar_xp/finetune")


def _resume(p, section: str, resume: bool | None):
    if resume is None:
        return p
    sub = getattr(p, section)
    training = sub.training.model_copy(update={"resume": "auto" if resume else "never"})
    return p.model_copy(update={section: sub.model_copy(update={"training": training})})


ResumeOption = Annotated[
    bool | None,
    typer.Option("--resume/--no-resume", help="Continue an interrupted identical run."),
]


@stage(app, "simulate")
def simulate_cmd(
    params: ParamsOption = Path("params.yaml"),
    pretrain_out: Annotated[Path, typer.Option(help="Pretraining HDF5 to write.")] = RAW
    / "pretrain.h5",
    finetune_out: Annotated[Path, typer.Option(help="Fine-tuning FITS table to write.")] = RAW
    / "finetune.fits",
) -> None:
    """Simulate stars in the real layouts (the embedded default data set).

    Reads stellar_xp.simulate from PARAMS: stars drawn from disc and halo
    populations with (teff, logg, fe_h, alpha, age, distance, extinction); a
    model spectrum projected on Hermite functions gives the XP coefficients,
    top-hat bandpasses the photometry; noise at the stated errors and survey
    footprints/depths for missing values. Writes PRETRAIN_OUT (compound datasets
    sslset<N>_part<k>) and FINETUNE_OUT (FITS label table).
    """
    from astrobatch.progress import progress
    from astrobatch.studies.stellar_xp.simulate import simulate_to_files

    p = load_params(SECTION, params).simulate
    with progress("simulate stars", p.n_pretrain + p.n_finetune) as update:
        summary = simulate_to_files(p, pretrain_out, finetune_out, progress=update)
    log.info("wrote %s and %s (%s)", pretrain_out, finetune_out, summary)


@stage(app, "prepare")
def prepare_cmd(
    params: ParamsOption = Path("params.yaml"),
    out: Annotated[Path, typer.Option(help="Output folder of shards.")] = PREPARED,
) -> None:
    """Read, scale, split and shard pretraining and fine-tuning inputs.

    Reads stellar_xp.data from PARAMS: the pretraining HDF5 and/or the real Gaia
    XP files (pretrain_sources: simulated | real | mixed; flat or archive
    layouts in FITS, ECSV or CSV), the fine-tuning FITS table. Robust-scales
    features (fitted on a seeded row sample), standard-scales labels, writes
    chunked shards, OUT/scalers.json and OUT/manifest.json.
    """
    from astrobatch.progress import progress
    from astrobatch.studies.stellar_xp.prepare import prepare

    p = load_params(SECTION, params)
    with progress("prepare shards", 1) as update:
        manifest = prepare(p, out, update)
    log.info("rows per shard %s -> %s", manifest["counts"], out)


@stage(app, "pretrain")
def pretrain_cmd(
    params: ParamsOption = Path("params.yaml"),
    prepared: Annotated[Path, typer.Option(help="Folder of prepared shards.")] = PREPARED,
    out: Annotated[Path, typer.Option(help="Checkpoint folder.")] = PRETRAINED,
    live: Annotated[Path, typer.Option(help="DVCLive folder.")] = Path(
        "dvclive/stellar_xp/pretrain"
    ),
    resume: ResumeOption = None,
) -> None:
    """Pretrain the masked autoencoder (masked reconstruction of the features).

    The XP block of xp_masking_ratio of the rows and other columns element-wise
    (m_masking_ratio) are masked; the loss counts masked, present positions only.
    """
    from astrobatch.studies.stellar_xp.train import pretrain

    p = _resume(load_params(SECTION, params), "pretrain", resume)
    state = pretrain(p, prepared, out, live)
    log.info("best val/loss %s after %d epochs", state["best_val_loss"], state["epochs_trained"])


@stage(app, "finetune")
def finetune_cmd(
    params: ParamsOption = Path("params.yaml"),
    prepared: Annotated[Path, typer.Option(help="Folder of prepared shards.")] = PREPARED,
    pretrained: Annotated[Path, typer.Option(help="Pretrain checkpoint folder.")] = PRETRAINED,
    out: Annotated[Path, typer.Option(help="Checkpoint folder.")] = FINETUNED,
    live: Annotated[Path, typer.Option(help="DVCLive folder.")] = Path(
        "dvclive/stellar_xp/finetune"
    ),
    resume: ResumeOption = None,
) -> None:
    """Fine-tune the encoder and the ordered 16/50/84 quantile head (pinball loss).

    Separate encoder/head learning rates; two-pass leakage-free parallax
    (the parallax output comes from a pass with the parallax input masked);
    optional multitask reconstruction and parallax MLE regulariser.
    """
    from astrobatch.studies.stellar_xp.train import finetune

    p = _resume(load_params(SECTION, params), "finetune", resume)
    state = finetune(p, prepared, pretrained, out, live)
    log.info("best val/loss %s after %d epochs", state["best_val_loss"], state["epochs_trained"])


@stage(app, "evaluate")
def evaluate_cmd(
    params: ParamsOption = Path("params.yaml"),
    prepared: Annotated[Path, typer.Option(help="Folder of prepared shards.")] = PREPARED,
    pretrained: Annotated[Path, typer.Option(help="Pretrain checkpoint folder.")] = PRETRAINED,
    models: Annotated[Path, typer.Option(help="Fine-tune checkpoint folder.")] = FINETUNED,
    metrics: Annotated[Path, typer.Option(help="Metrics JSON to write.")] = Path(
        "metrics/stellar_xp.json"
    ),
    plots: Annotated[Path, typer.Option(help="Folder of PNG plots.")] = Path("plots/stellar_xp"),
    reports: Annotated[Path, typer.Option(help="Folder of tables.")] = Path("reports/stellar_xp"),
) -> None:
    """Evaluate labels, quantile calibration, baselines and masked-XP reconstruction.

    Writes METRICS (per label R2, RMSE, MAE, robust bias and scatter, coverage of
    [q16, q84], fraction below q50; median and gradient-boosting baselines;
    reconstruction error on held-out simulated and real sources), REPORTS
    (predictions.parquet, residual_bins.csv) and PLOTS (pred_vs_true,
    residual_trends, calibration, reconstruction_examples).
    """
    from rich.console import Console
    from rich.table import Table

    from astrobatch.studies.stellar_xp.evaluate import evaluate

    p = load_params(SECTION, params)
    m = evaluate(p, prepared, pretrained, models, metrics, plots, reports)
    table = Table(title="stellar_xp: test")
    for c in ("label", "RMSE", "median baseline", "HGB", "scatter", "coverage 68"):
        table.add_column(c, justify="right")
    for lab in p.data.labels:
        table.add_row(
            lab, f"{m[f'test/{lab}/rmse']:.4g}", f"{m[f'baseline/median/test/{lab}/rmse']:.4g}",
            f"{m[f'baseline/hgb/test/{lab}/rmse']:.4g}", f"{m[f'test/{lab}/scatter']:.4g}",
            f"{m[f'test/{lab}/coverage_68']:.3f}",
        )  # fmt: skip
    Console(stderr=True).print(table)
    for k in sorted(m):
        if k.startswith("recon/"):
            log.info("%s = %.4g", k, m[k])
