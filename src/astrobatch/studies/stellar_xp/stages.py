"""The ``astrobatch stellar-xp`` sub-app: one command per DVC stage (made by the study kit)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from astrobatch.study import Study, print_summary

study = Study(
    "stellar_xp",
    help="Stellar labels with uncertainties from Gaia XP spectra: masked autoencoder "
    "pretraining, 16/50/84 quantile fine-tuning, leakage-free parallax.",
    question="Does masked-autoencoder pretraining on Gaia XP spectra give stellar labels with "
    "calibrated 16/50/84 % uncertainties?",
)
PRETRAINED = study.paths.models / "pretrain"
FINETUNED = study.paths.models / "finetune"


@study.stage("simulate")
def simulate_cmd(
    p,
    pretrain_out: Annotated[
        Path | None, typer.Option(help="Pretraining HDF5 to write (default: data.pretrain_path).")
    ] = None,
    finetune_out: Annotated[
        Path | None,
        typer.Option(help="Fine-tuning FITS table to write (default: data.finetune_path)."),
    ] = None,
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

    pretrain_out = pretrain_out or Path(p.data.pretrain_path)
    finetune_out = finetune_out or Path(p.data.finetune_path)
    s = p.simulate
    with progress("simulate stars", s.n_pretrain + s.n_finetune) as update:
        summary = simulate_to_files(s, pretrain_out, finetune_out, progress=update)
    study.log.info("wrote %s and %s (%s)", pretrain_out, finetune_out, summary)


@study.stage("prepare", out="prepared")
def prepare_cmd(p, out) -> None:
    """Read, scale, split and shard pretraining and fine-tuning inputs.

    Reads stellar_xp.data from PARAMS: the pretraining HDF5 and/or the real Gaia
    XP files (pretrain_sources: simulated | real | mixed; flat or archive
    layouts in FITS, ECSV or CSV), the fine-tuning FITS table. Robust-scales
    features (fitted on a seeded row sample), standard-scales labels, writes
    chunked shards, OUT/scalers.json and OUT/manifest.json.
    """
    from astrobatch.progress import progress
    from astrobatch.studies.stellar_xp.prepare import prepare

    with progress("prepare shards", 1) as update:
        manifest = prepare(p, out, update)
    study.log.info("rows per shard %s -> %s", manifest["counts"], out)


@study.stage(
    "pretrain", out="models", out_default=PRETRAINED,
    inputs={"prepared": None, "live": study.paths.live / "pretrain"},
    resume="pretrain.training",
)  # fmt: skip
def pretrain_cmd(p, paths) -> dict:
    """Pretrain the masked autoencoder (masked reconstruction of the features).

    The XP block of xp_masking_ratio of the rows and other columns element-wise
    (m_masking_ratio) are masked; the loss counts masked, present positions only.
    """
    from astrobatch.studies.stellar_xp.train import pretrain

    return pretrain(p, paths)


@study.stage(
    "finetune", out="models", out_default=FINETUNED,
    inputs={"prepared": None, "pretrained": PRETRAINED, "live": study.paths.live / "finetune"},
    resume="finetune.training",
)  # fmt: skip
def finetune_cmd(p, paths) -> dict:
    """Fine-tune the encoder and the ordered 16/50/84 quantile head (pinball loss).

    Separate encoder/head learning rates; two-pass leakage-free parallax
    (the parallax output comes from a pass with the parallax input masked);
    optional multitask reconstruction and parallax MLE regulariser.
    """
    from astrobatch.studies.stellar_xp.train import finetune

    return finetune(p, paths)


@study.stage(
    "evaluate",
    inputs={"prepared": None, "pretrained": PRETRAINED, "models": FINETUNED, "metrics": None,
            "plots": None, "reports": None},
)  # fmt: skip
def evaluate_cmd(p, paths) -> None:
    """Evaluate labels, quantile calibration, baselines and masked-XP reconstruction.

    Writes METRICS (per label R2, RMSE, MAE, robust bias and scatter, coverage of
    [q16, q84], fraction below q50; median and gradient-boosting baselines;
    reconstruction error on held-out simulated and real sources; real/ summary
    of the predict stage's table stellar_xp.evaluate.real_predictions), REPORTS
    (predictions.parquet, residual_bins.csv) and PLOTS (pred_vs_true,
    residual_trends, calibration, reconstruction_examples).
    """
    from astrobatch.studies.stellar_xp.evaluate import evaluate

    m = evaluate(p, paths)
    rows = [
        (lab, m[f"test/{lab}/rmse"], m[f"baseline/median/test/{lab}/rmse"],
         m[f"baseline/hgb/test/{lab}/rmse"], m[f"test/{lab}/scatter"],
         f"{m[f'test/{lab}/coverage_68']:.3f}")
        for lab in p.data.labels
    ]  # fmt: skip
    columns = ("label", "RMSE", "median baseline", "HGB", "scatter", "coverage 68")
    print_summary("stellar_xp: test", rows, columns)
    for k in sorted(m):
        if k.startswith("recon/"):
            study.log.info("%s = %.4g", k, m[k])


@study.predict(FINETUNED)
def predict_cmd(p, model, inputs):
    """Predict stellar labels with 16/50/84 % quantiles for real Gaia XP sources.

    INPUT: Gaia DR3 XP coefficient tables in the flat or archive layout (FITS,
    ECSV or CSV, read as prepare reads real_xp_paths) or FITS tables in the
    fine-tuning layout; folders are searched for such files. Feature columns a
    file lacks (photometry, parallax, ...) are hidden from the model as in
    training and listed in the table's meta (missing_feature_groups). Scaled
    with the model folder's manifest.json/scalers.json (copies the finetune
    stage keeps there; checked against the checkpoint). Writes OUT
    (.ecsv or .fits), one row per source: source_id, file, n_features, and per
    label q, q_p16, q_p84 (teff K; logg log10 cgs, fe_h and alpha dex, both
    dimensionless; age Gyr; parallax mas, from the pass with the parallax input
    hidden), plus q_reference where the file has the label.
    """
    from astrobatch.studies.stellar_xp.predict import predict

    return predict(p, model, inputs)
