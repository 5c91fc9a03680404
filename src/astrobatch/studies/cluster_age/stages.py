"""The ``astrobatch cluster-age`` sub-app: one command per DVC stage (made by the study kit)."""

from __future__ import annotations

from astrobatch.study import Study, print_summary

study = Study(
    "cluster_age",
    help="Star-cluster ages from HST cutouts with a CNN (blackout masks, normalisations, "
    "baselines, shuffled-target control).",
    question="Can a CNN read a star cluster's age from its HST image, and which part of the image, "
    "core or outskirts, carries the information?",
)
#: Metrics of the summary table printed by evaluate.
SUMMARY = (
    "test/mdae_log_age", "test/mae_log_age", "test/r2_log_age",
    "baseline/mean/test/mdae_log_age", "baseline/photometric/test/mdae_log_age",
    "test/mdae_log_age_over_mean_baseline",
    "cross_galaxy/mdae_log_age", "baseline/mean/cross_galaxy/mdae_log_age",
)  # fmt: skip


@study.stage("simulate", out="raw", out_help="Raw HDF5 file to write (default: data.raw_path).")
def simulate_cmd(p, out) -> None:
    """Simulate HST cluster cutouts (the embedded default data set).

    Reads cluster_age.simulate from PARAMS: clusters drawn from the LEGUS NGC 628
    catalogue (age, mass, E(B-V), 5-band magnitudes), placed in mock galaxies at
    several distances, with an unresolved King profile, the brightest resolved
    stars, a host-galaxy background, PSF and noise. Writes OUT (default:
    cluster_age.data.raw_path) in the real raw_phangs_dataset.h5 layout
    (cluster_ids, galaxy_ids, image_cutouts (N, 5, 112, 112), cluster_log_ages)
    plus catalogue_magnitudes.
    """
    from astrobatch.progress import progress
    from astrobatch.studies.cluster_age.simulate import simulate_to_file

    out = out or p.data.raw_path
    with progress("simulate cutouts", p.simulate.n_clusters) as update:
        summary = simulate_to_file(p.simulate, out, progress=update)
    study.log.info("wrote %s (%s)", out, summary)


@study.stage(
    "simulate-cross", out="raw", out_help="Raw HDF5 file to write (default: cross_galaxy.raw_path)."
)
def simulate_cross_cmd(p, out) -> None:
    """Simulate the cross-galaxy sample: cutouts drawn from another LEGUS catalogue.

    Reads cluster_age.simulate from PARAMS with cluster_age.cross_galaxy's
    catalogue_path (default NGC 1566), catalogue_distance_modulus (31.28),
    n_clusters and seed in place of simulate's. Writes OUT (default:
    cluster_age.cross_galaxy.raw_path) in the raw_phangs_dataset.h5 layout; it
    takes no part in the splits: `astrobatch cluster-age predict` reads it.
    """
    from astrobatch.progress import progress
    from astrobatch.studies.cluster_age.simulate import simulate_to_file

    sim = p.cross_galaxy.simulate_params(p.simulate)
    out = out or p.cross_galaxy.raw_path
    with progress("simulate cross-galaxy cutouts", sim.n_clusters) as update:
        summary = simulate_to_file(sim, out, progress=update)
    study.log.info("wrote %s (%s)", out, summary)


@study.stage("prepare", out="prepared")
def prepare_cmd(p, out) -> None:
    """Validate the raw cutouts, remove extremes, split, crop, write chunked shards.

    Reads cluster_age.data from PARAMS (raw_path: any raw_phangs_dataset.h5).
    Writes OUT/{train,val,test}.h5 (images, log_age, cluster_id, galaxy_id,
    aperture photometry) and OUT/manifest.json (split, target scaling).
    """
    from astrobatch.progress import progress
    from astrobatch.studies.cluster_age.prepare import prepare

    with progress("prepare shards", 1) as update:
        manifest = prepare(p.data, out, update)
    study.log.info("kept %d of %d cutouts, split %s -> %s", manifest["n_kept"], manifest["n_raw"],
             manifest["counts"], out)  # fmt: skip


@study.stage("train", out="models", inputs=("prepared", "live"), resume="training")
def train_cmd(p, paths) -> dict:
    """Train the CNN (1im or 5im) with the blackout mask and normalisation of PARAMS.

    MSE on min-max scaled log age, dihedral augmentation, early stopping with
    the best weights kept (OUT/best.ckpt); shuffle_targets: true trains the
    control. Writes OUT/best.ckpt, OUT/last.ckpt, OUT/normalisation.json.
    """
    from astrobatch.studies.cluster_age.train import train

    return train(p, paths)


@study.stage("evaluate", inputs=("prepared", "models", "live", "metrics", "plots", "reports"))
def evaluate_cmd(p, paths) -> None:
    """Evaluate the CNN and the baselines (mean, median, random, photometric).

    Writes METRICS (MdAE = 1.4826 x median |error|, MAE, RMSE, R2, bias of log
    age on train/val/test and the test age subsets), REPORTS/predictions.parquet
    and PLOTS (loss curves, predicted vs true per split, input and output
    histograms, example cutouts with the mask drawn).
    """
    from astrobatch.studies.cluster_age.evaluate import evaluate

    m = evaluate(p, paths)
    title = f"cluster_age {p.model.input} mask={p.mask.type} R={p.mask.radius}"
    print_summary(title, [(k, m[k]) for k in SUMMARY if k in m])


@study.predict()
def predict_cmd(p, model, inputs):
    """Predict cluster ages of raw cutout files with the trained CNN.

    Reads INPUT: raw_phangs_dataset.h5 files (or folders of *.h5) in the
    PHANGS-HST layout that prepare reads (cluster_ids, galaxy_ids,
    image_cutouts (N, 5, H, H) with H >= the training crop, cluster_log_ages),
    validated as prepare validates them, cropped, masked and normalised as
    for training; MODEL: best.ckpt, normalisation.json and the training
    manifest.json (else data/prepared/cluster_age/manifest.json); PARAMS as
    trained (model, mask, training). Writes OUT (.ecsv or .fits), one row per
    cutout: file, galaxy_id, cluster_id (ids), log_age (log10(age / yr),
    dimensionless), age (yr), log_age_reference (the file's
    cluster_log_ages). No uncertainties: the CNN is one MSE regression.
    """
    from astrobatch.studies.cluster_age.predict import predict

    return predict(p, model, inputs)
